"""Run: python3 benches/gateway_latency.py target/release/deja [N] [gateway|shadow|both]

Exact-hit cost of each gateway feature (issue 16) and of shadow checks on semantic hits
(issue 17), against a local mock upstream. Server-side deja;dur and client round trip."""
import hashlib, json, os, re, statistics, subprocess, sys, tempfile, threading, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIN = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 600
KEY = "dk-bench-0123456789abcdef0123456789abcdef"

class Mock(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", 0)); self.rfile.read(n)
        body = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": "gpt-4o-mini", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "To reset your password, open Settings and choose Reset password."},
            "finish_reason": "stop"}], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass

mock = ThreadingHTTPServer(("127.0.0.1", 0), Mock)
threading.Thread(target=mock.serve_forever, daemon=True).start()
up = f"http://127.0.0.1:{mock.server_address[1]}/v1"
khash = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()

VARIANTS = {
    "base": ("", '[pii]\nmode = "off"\n', None),
    "pii": ("", '[pii]\nmode = "skip-cache"\n', None),
    "keys": ('auth = "keys"\n', f'[pii]\nmode = "off"\n[[keys]]\nname = "b"\nhash = "{khash}"\nrpm = 10000000\ntpm = 1000000000\nbudget_daily_usd = 1000000\n[[prices]]\nmodel = "*"\ninput_per_mtok = 0.15\noutput_per_mtok = 0.6\n', None),
    "templates": ("", '[pii]\nmode = "off"\n[[templates]]\nname = "faq"\nmodel = "gpt-4o-mini"\nmessages = [{ role = "system", content = "You support {{product}}." }, { role = "user", content = "{{question}}" }]\n', "template"),
    "audit": ("", '[pii]\nmode = "off"\n[audit]\npath = "AUDIT"\n', None),
}

def start(server_extra, extra, rate=0.0):
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "c.toml")
    extra = extra.replace("AUDIT", os.path.join(d, "audit.jsonl"))
    open(cfg, "w").write(f'''
[server]
listen = "127.0.0.1:0"
{server_extra}
[cache]
dir = "{d}/store"
threshold = 0.85
verified_threshold = 0.85
audit_rate = {rate}
[[providers]]
name = "mock"
kind = "openai"
base_url = "{up}"
max_retries = 0
[[routes]]
model = "*"
providers = ["mock"]
{extra}
''')
    p = subprocess.Popen([BIN, "serve", "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    base = re.search(r"(http://\S+)", p.stdout.readline()).group(1)
    for _ in range(600):
        try:
            if urllib.request.urlopen(base + "/readyz").status == 200: break
        except Exception: pass
        time.sleep(0.1)
    return p, base

def ask(base, text, mode=None):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    if mode == "template":
        body = {"model": "template:faq", "deja_variables": {"product": "Acme", "question": text}}
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"})
    t = time.perf_counter(); r = urllib.request.urlopen(req); r.read(); wall = (time.perf_counter() - t) * 1e3
    dur = float(re.search(r"deja;dur=([0-9.]+)", r.headers["server-timing"]).group(1))
    return r.headers["x-deja-cache"], dur, wall

def q(xs, f):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(f * len(xs)))]

def exact(name):
    server_extra, extra, mode = VARIANTS[name]
    p, base = start(server_extra, extra)
    ask(base, "How do I reset my password?", mode); time.sleep(0.5)
    durs, walls = [], []
    for _ in range(N):
        o, d, w = ask(base, "How do I reset my password?", mode)
        assert o == "exact-hit", o
        durs.append(d * 1e3); walls.append(w * 1e3)
    p.terminate(); p.wait()
    return durs, walls

def shadow(rate):
    p, base = start("", '[pii]\nmode = "off"\n', rate)
    ask(base, "How do I reset my password?"); time.sleep(0.5)
    qs = ["How can I reset my password?", "How do I reset my password please?"]
    durs, walls = [], []
    for i in range(N):
        o, d, w = ask(base, qs[i % 2])
        if o == "semantic-hit":
            durs.append(d * 1e3); walls.append(w * 1e3)
        time.sleep(0.005)
    time.sleep(1)
    m = urllib.request.urlopen(base + "/metrics").read().decode()
    checks = [l for l in m.splitlines() if l.startswith("deja_shadow_checks_total")]
    p.terminate(); p.wait()
    return durs, walls, checks

what = sys.argv[3] if len(sys.argv) > 3 else "both"
if what in ("both", "gateway"):
    res = {k: ([], []) for k in VARIANTS}
    for _ in range(2):
        for k in VARIANTS:
            d, w = exact(k); res[k][0].extend(d); res[k][1].extend(w)
    b50 = statistics.median(res["base"][0])
    for k, (d, w) in res.items():
        print(f"exact-hit {k:10s} n={len(d)} deja;dur us p50={q(d,.5):7.1f} p99={q(d,.99):7.1f} "
              f"(+{q(d,.5)-b50:6.1f} vs base)  client round trip us p50={q(w,.5):7.1f} p99={q(w,.99):7.1f}")
if what in ("both", "shadow"):
    for rate in [0.0, 1.0, 0.0, 1.0]:
        d, w, checks = shadow(rate)
        print(f"semantic-hit audit_rate={rate}: n={len(d)} deja;dur us p50={q(d,.5):.1f} p99={q(d,.99):.1f} "
              f"client us p50={q(w,.5):.1f} p99={q(w,.99):.1f}  {checks}")
