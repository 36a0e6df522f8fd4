"""HTTP latency with a big scope, embedded backend vs PostgreSQL (issue 14), loopback only.

Usage:
  DEJA_POSTGRES_URL=postgres://postgres@127.0.0.1:55432/postgres \\
    python3 benches/fleet_latency.py target/release/deja [ENTRIES] [N] [TEXTS]

For each backend (embedded, then postgres when DEJA_POSTGRES_URL is set) it starts `deja serve`
against a 0 ms mock upstream, caches ten support questions through HTTP, then imports ENTRIES
(default 100,000) other prompts of real text into the same scope through `POST /admin/import`
(the embedded run embeds them; the postgres run imports the embedded run's export, so nothing
is embedded twice). Then, one request at a time on one keep-alive connection: exact hits,
semantic hits (a new paraphrase of a support question each), misses (a new prompt each), N of
each (default 300). Prints p50/p90/p99 of the client-side time and of deja's own
`x-deja-overhead-ms`. TEXTS: a JSONL file of pairs (`a`, `b`) or a stream (`text`) to take the
filler prompts from (default: the Quora question pairs of ../shared/datasets). The postgres
run uses (and empties) the schema `deja_fleet_bench`. Each line also gives the p50 of deja's
`Server-Timing` phases (exact lookup, embedding, search).

FLEET_PG_EXTRA adds lines to the postgres run's `[cache.postgres]` (e.g. `ef_search = 40`).
FLEET_WORK=DIR keeps the stores (and the embedded run's export) in DIR: a rerun with as many
entries there skips both imports (over ten minutes at 100k) and measures the stores as they are.
"""
import http.client, json, os, subprocess, sys, tempfile, threading, time
from collections import Counter
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

BIN = sys.argv[1]
ENTRIES = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
N = int(sys.argv[3]) if len(sys.argv) > 3 else 300
TEXTS = sys.argv[4] if len(sys.argv) > 4 else "../shared/datasets/qqp-pairs.jsonl"
TOKEN = "fleet-bench-admin-token"
SCHEMA = "deja_fleet_bench"


class Mock(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(n))
        text = "Answer to: " + body["messages"][-1]["content"]
        out = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                                       "logprobs": None, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


mock = ThreadingHTTPServer(("127.0.0.1", 0), Mock)
threading.Thread(target=mock.serve_forever, daemon=True).start()
MPORT = mock.server_address[1]

TOPICS = ["reset my password", "change my billing address", "cancel my subscription", "export my data",
          "enable two factor authentication", "delete my account", "update my email address",
          "download my invoices", "contact customer support", "upgrade my plan"]
OPENERS = ["How can I", "What is the way to", "Can you tell me how to", "Help me", "I want to", "Tell me how to",
           "Is there a way to", "Explain how to"]
CLOSERS = ["?", " please?", " quickly?", " today?", " on the website?", " from my phone?"]


def filler_texts(n):
    seen, out = set(TOPICS), []
    with open(TEXTS) as f:
        for line in f:
            row = json.loads(line)
            for t in ([row["a"], row["b"]] if "a" in row else [row["text"]]):
                t = t.strip()
                if t and t.lower() not in seen and len(t) < 2000:
                    seen.add(t.lower())
                    out.append(t)
                    if len(out) == n:
                        return out
    raise SystemExit(f"{TEXTS} holds only {len(out)} distinct texts, {n} wanted")


def start(backend, work):
    os.makedirs(work, exist_ok=True)
    cfg = os.path.join(work, "config.toml")
    extra = ""
    if backend == "postgres":
        extra = f'backend = "postgres"\n[cache.postgres]\nschema = "{SCHEMA}"\n{os.environ.get("FLEET_PG_EXTRA", "")}\n'
    open(cfg, "w").write(
        f'[server]\nlisten = "127.0.0.1:0"\n[admin]\nlisten = "127.0.0.1:0"\ntoken_env = "FLEET_BENCH_TOKEN"\n'
        f'[cache]\ndir = "{work}/store"\n{extra}'
        f'[[providers]]\nname = "mock"\nkind = "openai"\nbase_url = "http://127.0.0.1:{MPORT}/v1"\nmax_retries = 0\n'
        f'[[routes]]\nmodel = "*"\nproviders = ["mock"]\n')
    p = subprocess.Popen([BIN, "serve", "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, "DEJA_LOG": "warn", "FLEET_BENCH_TOKEN": TOKEN})
    port = int(p.stdout.readline().strip().rsplit(":", 1)[1])
    admin = int(p.stdout.readline().strip().rsplit(":", 1)[1])
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port)
            c.request("GET", "/readyz")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    return p, port, admin


def admin_call(port, method, path, body=None, timeout=7200):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body, {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise SystemExit(f"{method} {path}: {r.status} {data[:300]!r}")
    return data


def ask(c, text):
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
    t = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", "authorization": "Bearer bench"})
    r = c.getresponse()
    r.read()
    phases = {}
    for part in (r.getheader("server-timing") or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            phases[name] = float(dur)
    return ((time.perf_counter() - t) * 1e3, r.getheader("x-deja-cache"),
            float(r.getheader("x-deja-overhead-ms") or "nan"), phases)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round((len(v) - 1) * q)))] if v else float("nan")


def report(backend, name, rows, want):
    served = [r for r in rows if r[1] == want]
    t, o = [r[0] for r in served], [r[2] for r in served]
    print(f"{backend:<9} {name:<13} n={len(served):<4} client p50 {pct(t, .5):6.2f} p90 {pct(t, .9):6.2f} "
          f"p99 {pct(t, .99):6.2f} ms | overhead p50 {pct(o, .5):6.2f} p99 {pct(o, .99):6.2f} ms  "
          f"{dict(Counter(r[1] for r in rows))}", flush=True)
    print(" " * 24 + "phases p50: " + ", ".join(
        f"{k} {pct([r[3][k] for r in served if k in r[3]], .5):.2f}" for k in ("exact", "embed", "search", "deja")
        if any(k in r[3] for r in served)) + " ms", flush=True)


def run(backend, work, source):
    p, port, admin = start(backend, work)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port)
        for t in TOPICS:
            ask(c, f"How do I {t}?")
        time.sleep(1.5)  # inserts are off the response path
        kept, marker = os.path.join(work, "export.jsonl"), os.path.join(work, f"imported-{ENTRIES}")
        if os.path.exists(marker):
            held = json.loads(admin_call(admin, "GET", "/admin/stats")).get("entries")
            print(f"{backend:<9} import      skipped: {held} entries kept in {work}", flush=True)
            export = open(kept).read() if source is None else None
            return measure(backend, port, export)
        if source is None:
            head, *lines = admin_call(admin, "GET", "/admin/export").decode().splitlines()
            scope = json.loads(lines[0])["scope"]
            rows = [json.dumps({"scope": scope, "prompt": t, "embedding": [0.0],
                                "response": json.loads(lines[0])["response"] | {"content": "Answer to: " + t},
                                "created_ms": json.loads(lines[0])["created_ms"],
                                "expires_ms": json.loads(lines[0])["expires_ms"]})
                    for t in filler_texts(ENTRIES)]
            # A header naming another model: the import embeds every prompt with deja's own
            # (an entry with no embedding at all would be stored unsearchable).
            body = "\n".join([json.dumps({"deja_export": 1, "embedding_model": "none", "dim": 0})] + rows) + "\n"
        else:
            body = source
        t0 = time.time()
        done = json.loads(admin_call(admin, "POST", "/admin/import", body.encode()))
        print(f"{backend:<9} import      {done} in {time.time() - t0:.0f}s", flush=True)
        stats = json.loads(admin_call(admin, "GET", "/admin/stats"))
        print(f"{backend:<9} entries     {stats.get('entries')}", flush=True)
        export = admin_call(admin, "GET", "/admin/export").decode() if source is None else None
        if export is not None:
            open(kept, "w").write(export)
        open(marker, "w").close()
        return measure(backend, port, export)
    finally:
        p.terminate()
        p.wait()


def measure(backend, port, export):
    run_id = int(time.time())  # a kept store holds an earlier run's misses
    # Measure on a quiet machine: wait while the file FLEET_HOLD names exists.
    while os.environ.get("FLEET_HOLD") and os.path.exists(os.environ["FLEET_HOLD"]):
        time.sleep(1)
    c = http.client.HTTPConnection("127.0.0.1", port)  # the import outlasts keep-alive
    for i in range(20):
        ask(c, f"How do I {TOPICS[i % 10]}?")
    ex = [ask(c, f"How do I {TOPICS[i % 10]}?") for i in range(N)]
    qs = [f"{o} {t}{cl}" for o in OPENERS for cl in CLOSERS for t in TOPICS][:N]
    se = [ask(c, q) for q in qs]
    mi = [ask(c, f"Write a limerick about a purple cat called number {i} in Paris, run {run_id}") for i in range(N)]
    report(backend, "exact hit", ex, "exact-hit")
    report(backend, "semantic hit", se, "semantic-hit")
    report(backend, "miss", mi, "miss")
    return export


def main(d):
    export = run("embedded", os.path.join(d, "embedded"), None)
    if os.environ.get("DEJA_POSTGRES_URL"):
        if not os.environ.get("FLEET_WORK"):
            psql = os.environ.get("PSQL", "psql")
            subprocess.run([psql, os.environ["DEJA_POSTGRES_URL"], "-qc", f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"],
                           check=True, stderr=subprocess.DEVNULL)
        run("postgres", os.path.join(d, "postgres"), export)


if os.environ.get("FLEET_WORK"):
    main(os.environ["FLEET_WORK"])
else:
    with tempfile.TemporaryDirectory() as d:
        main(d)
