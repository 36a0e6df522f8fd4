"""An independent float64 reference for deja's pair verifier (src/embed/pair.rs).

Writes two tiny, randomly initialised cross-encoders in the Hugging Face layout (config.json,
tokenizer.json, model.safetensors) and, for a few sentence pairs, the logits and P(same) that
BertForSequenceClassification / RobertaForSequenceClassification compute, in numpy float64
with its own tokenization (whitespace words of a fixed vocabulary) and its own safetensors
writer. Nothing here shares code with deja.

    python3 pair_reference.py OUT_DIR      # -> OUT_DIR/{bert,roberta}/..., OUT_DIR/reference.json
"""

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

WORDS = (
    "how do i can reset my password change the email address what is capital of france "
    "germany not book a flight from boston to denver cancel order where"
).split()
PAIRS = [
    ("how do i reset my password", "how can i reset my password"),
    ("how do i reset my password", "how do i not reset my password"),
    ("book a flight from boston to denver", "book a flight from denver to boston"),
    ("what is the capital of france", "what is the capital of germany"),
    ("cancel my order", "where is my order"),
]
HIDDEN, HEADS, INTER, LAYERS, MAX_POS = 32, 4, 64, 2, 40


def safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def tokenizer_json(vocab, specials, template_single, template_pair):
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t in specials
        ],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": template_single,
            "pair": template_pair,
            "special_tokens": {t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in specials},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }


def seq(sp, type_id=0):
    return {"SpecialToken": {"id": sp, "type_id": type_id}}


def part(p, type_id):
    return {"Sequence": {"id": p, "type_id": type_id}}


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


ERF = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0)))


def forward(w, prefix, ids, types, position_offset, eps):
    g = lambda n: w[f"{prefix}{n}"].astype(np.float64)
    pos = np.arange(len(ids)) + position_offset
    x = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[pos]
    x = x + g("embeddings.token_type_embeddings.weight")[types]
    x = layer_norm(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"), eps)
    d = HIDDEN // HEADS
    for l in range(LAYERS):
        p = f"encoder.layer.{l}."
        lin = lambda n, v: v @ g(p + n + ".weight").T + g(p + n + ".bias")
        q, k, v = (lin(f"attention.self.{n}", x) for n in ("query", "key", "value"))
        ctx = np.zeros_like(x)
        for h in range(HEADS):
            s = slice(h * d, (h + 1) * d)
            scores = q[:, s] @ k[:, s].T / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx[:, s] = scores @ v[:, s]
        x = layer_norm(x + lin("attention.output.dense", ctx), g(p + "attention.output.LayerNorm.weight"),
                       g(p + "attention.output.LayerNorm.bias"), eps)
        up = gelu(lin("intermediate.dense", x))
        x = layer_norm(x + lin("output.dense", up), g(p + "output.LayerNorm.weight"),
                       g(p + "output.LayerNorm.bias"), eps)
    return x[0]


def build(kind, out, rng):
    roberta = kind == "roberta"
    specials = ["<pad>", "<s>", "</s>", "[UNK]"] if roberta else ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    prefix = "roberta." if roberta else "bert."
    types_n = 1 if roberta else 2
    offset = 2 if roberta else 0  # RoBERTa: pad_token_id (1) + 1
    labels = 3 if roberta else 1
    eps = 1e-5 if roberta else 1e-12
    w = {}
    r = lambda *shape: rng.normal(0.0, 0.2, shape)
    w[prefix + "embeddings.word_embeddings.weight"] = r(len(vocab), HIDDEN)
    w[prefix + "embeddings.position_embeddings.weight"] = r(MAX_POS, HIDDEN)
    w[prefix + "embeddings.token_type_embeddings.weight"] = r(types_n, HIDDEN)
    w[prefix + "embeddings.LayerNorm.weight"] = 1.0 + r(HIDDEN)
    w[prefix + "embeddings.LayerNorm.bias"] = r(HIDDEN)
    for l in range(LAYERS):
        p = f"{prefix}encoder.layer.{l}."
        for n, (o, i) in {
            "attention.self.query": (HIDDEN, HIDDEN), "attention.self.key": (HIDDEN, HIDDEN),
            "attention.self.value": (HIDDEN, HIDDEN), "attention.output.dense": (HIDDEN, HIDDEN),
            "intermediate.dense": (INTER, HIDDEN), "output.dense": (HIDDEN, INTER),
        }.items():
            w[p + n + ".weight"] = r(o, i)
            w[p + n + ".bias"] = r(o)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + n + ".weight"] = 1.0 + r(HIDDEN)
            w[p + n + ".bias"] = r(HIDDEN)
    if roberta:
        heads = {"classifier.dense": (HIDDEN, HIDDEN), "classifier.out_proj": (labels, HIDDEN)}
    else:
        heads = {"bert.pooler.dense": (HIDDEN, HIDDEN), "classifier": (labels, HIDDEN)}
    for n, (o, i) in heads.items():
        w[n + ".weight"] = r(o, i)
        w[n + ".bias"] = r(o)
    # Stored as f32: the reference computes from exactly the stored values.
    w = {k: v.astype(np.float32) for k, v in w.items()}

    d = out / kind
    d.mkdir(parents=True, exist_ok=True)
    safetensors(d / "model.safetensors", w)
    config = {
        "architectures": ["RobertaForSequenceClassification" if roberta else "BertForSequenceClassification"],
        "model_type": kind, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
        "intermediate_size": INTER, "num_hidden_layers": LAYERS, "max_position_embeddings": MAX_POS,
        "layer_norm_eps": eps, "hidden_act": "gelu", "vocab_size": len(vocab), "type_vocab_size": types_n,
        "pad_token_id": 1 if roberta else 0,
        "id2label": {"0": "contradiction", "1": "entailment", "2": "neutral"} if roberta else {"0": "LABEL_0"},
    }
    (d / "config.json").write_text(json.dumps(config, indent=1))
    if roberta:
        single = [seq("<s>"), part("A", 0), seq("</s>")]
        pair = [seq("<s>"), part("A", 0), seq("</s>"), seq("</s>"), part("B", 0), seq("</s>")]
    else:
        single = [seq("[CLS]"), part("A", 0), seq("[SEP]")]
        pair = [seq("[CLS]"), part("A", 0), seq("[SEP]"), part("B", 1), seq("[SEP]", 1)]
    (d / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab, specials, single, pair)))

    def encode(a, b):
        ia, ib = [vocab[t] for t in a.split()], [vocab[t] for t in b.split()]
        if roberta:
            ids = [vocab["<s>"]] + ia + [vocab["</s>"]] * 2 + ib + [vocab["</s>"]]
            return ids, [0] * len(ids)
        ids = [vocab["[CLS]"]] + ia + [vocab["[SEP]"]] + ib + [vocab["[SEP]"]]
        return ids, [0] * (len(ia) + 2) + [1] * (len(ib) + 1)

    def logits(a, b):
        ids, types = encode(a, b)
        cls = forward(w, prefix, np.array(ids), np.array(types), offset, eps)
        if roberta:
            x = np.tanh(cls @ w["classifier.dense.weight"].T.astype(np.float64) + w["classifier.dense.bias"])
            return x @ w["classifier.out_proj.weight"].T.astype(np.float64) + w["classifier.out_proj.bias"], ids
        x = np.tanh(cls @ w["bert.pooler.dense.weight"].T.astype(np.float64) + w["bert.pooler.dense.bias"])
        return x @ w["classifier.weight"].T.astype(np.float64) + w["classifier.bias"], ids

    def softmax(l):
        e = np.exp(l - l.max())
        return e / e.sum()

    cases = []
    for a, b in PAIRS:
        la, ids = logits(a, b)
        if roberta:
            lb, _ = logits(b, a)
            score = min(softmax(la)[1], softmax(lb)[1])
        else:
            score = 1.0 / (1.0 + math.exp(-la[0]))
        cases.append({"query": a, "stored": b, "ids": ids, "logits": la.tolist(), "score": float(score)})
    return cases


def main():
    out = Path(sys.argv[1])
    rng = np.random.default_rng(20261201)
    reference = {kind: build(kind, out, rng) for kind in ("bert", "roberta")}
    (out / "reference.json").write_text(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
