"""Sequential HTTP latency of a deja binary against a 0 ms Python mock upstream (loopback only).

Usage: python3 benches/http_latency.py target/release/deja [N]. Prints p50/p90/p99 for exact hits,
semantic hits (a new paraphrase each), misses, the mock called directly, and deja's own
x-deja-overhead-ms. Figures: docs/benchmarks.md."""
import json, subprocess, sys, threading, time, http.client, tempfile, os, statistics
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class Mock(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        n = int(self.headers.get("content-length", 0)); body = json.loads(self.rfile.read(n))
        text = "Answer to: " + body["messages"][-1]["content"]
        out = json.dumps({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":body["model"],
            "choices":[{"index":0,"message":{"role":"assistant","content":text,"refusal":None},"logprobs":None,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":10,"completion_tokens":12,"total_tokens":22}}).encode()
        self.send_response(200); self.send_header("content-type","application/json"); self.send_header("content-length",str(len(out))); self.end_headers(); self.wfile.write(out)

mock = ThreadingHTTPServer(("127.0.0.1", 0), Mock); threading.Thread(target=mock.serve_forever, daemon=True).start()
mport = mock.server_address[1]
d = tempfile.mkdtemp()
cfg = os.path.join(d, "config.toml")
open(cfg, "w").write(f'[server]\nlisten = "127.0.0.1:0"\n[cache]\ndir = "{d}/store"\n[[providers]]\nname = "mock"\nkind = "openai"\nbase_url = "http://127.0.0.1:{mport}/v1"\nmax_retries = 0\n[[routes]]\nmodel = "*"\nproviders = ["mock"]\n')
p = subprocess.Popen([sys.argv[1], "serve", "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "DEJA_LOG": "warn"})
line = p.stdout.readline(); host, port = line.strip().rsplit("//",1)[1].split(":"); port = int(port)
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/readyz"); r = c.getresponse(); r.read()
        if r.status == 200: break
    except Exception: pass
    time.sleep(0.1)

def conn(port): return http.client.HTTPConnection("127.0.0.1", port)
dc, mc = conn(port), conn(mport)
def ask(c, text, path="/v1/chat/completions"):
    body = json.dumps({"model":"gpt-4o-mini","messages":[{"role":"user","content":text}]})
    t = time.perf_counter(); c.request("POST", path, body, {"content-type":"application/json","authorization":"Bearer bench"})
    r = c.getresponse(); r.read(); dt = (time.perf_counter()-t)*1e3
    return dt, r.getheader("x-deja-cache"), r.getheader("x-deja-overhead-ms")
topics = ["reset my password","change my billing address","cancel my subscription","export my data","enable two factor authentication",
          "delete my account","update my email address","download my invoices","contact customer support","upgrade my plan"]
for t in topics: ask(dc, f"How do I {t}?")
time.sleep(1)
N = int(sys.argv[2]) if len(sys.argv) > 2 else 200
def pct(v, q): v = sorted(v); return v[min(len(v)-1, int(round((len(v)-1)*q)))]
def rep(name, v, outs=None):
    print(f"{name:<34} n={len(v):<4} p50 {pct(v,.5):7.2f} ms  p90 {pct(v,.9):7.2f} ms  p99 {pct(v,.99):7.2f} ms" + (f"  outcomes {outs}" if outs else ""))
for i in range(20): ask(dc, f"How do I {topics[i%10]}?")
ex = [ask(dc, f"How do I {topics[i%10]}?") for i in range(N)]
openers = ["How can I","What is the way to","Can you tell me how to","Help me","I want to","Tell me how to","Is there a way to","Explain how to"]
closers = ["?"," please?"," quickly?"," today?"," on the website?"," from my phone?"]
qs = [f"{o} {t}{c}" for o in openers for c in closers for t in topics][:N]
se = [ask(dc, q) for q in qs]
mi = [ask(dc, f"Write a limerick about a purple cat called number {i} in Paris") for i in range(N)]
di = [ask(mc, f"Write a limerick about a purple cat called number {i} in Paris", "/v1/chat/completions") for i in range(N)]
from collections import Counter
rep("exact hit (through deja)", [x[0] for x in ex], dict(Counter(x[1] for x in ex)))
sem = [x for x in se if x[1]=="semantic-hit"]
rep("semantic hit (new paraphrase each)", [x[0] for x in sem], dict(Counter(x[1] for x in se)))
rep("miss through deja", [x[0] for x in mi], dict(Counter(x[1] for x in mi)))
rep("same request, mock directly", [x[0] for x in di])
rep("x-deja-overhead-ms on misses", [float(x[2]) for x in mi])
rep("x-deja-overhead-ms on exact hits", [float(x[2]) for x in ex])
p.terminate(); p.wait()
