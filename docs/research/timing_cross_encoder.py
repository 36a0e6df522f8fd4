"""A cross-encoder of MiniLM-L6's size for timing deja's verifier model (not for quality).

No cross-encoder can be downloaded here (docs/verifier-models.md), but the cost of one depends
only on its shape. This copies the all-MiniLM-L6-v2 folder (which already carries BERT's pooler)
and adds a random one-label classifier, which is what `cross-encoder/ms-marco-MiniLM-L-6-v2`
looks like: 6 layers, hidden 384, sigmoid head. Its scores are meaningless; its forward pass
is the real one.

    python3 timing_cross_encoder.py ~/.cache/deja/models/sentence-transformers--all-MiniLM-L6-v2 OUT
    # then [cache.verifier] model = "OUT" and `deja bench --config ...` reports model_us_p50/p99
"""

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np


def main():
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, out / name)
    raw = (src / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    header.pop("__metadata__", None)
    rng = np.random.default_rng(0)
    extra = {"classifier.weight": rng.normal(0, 0.05, (1, 384)), "classifier.bias": np.zeros(1)}
    blobs, new, offset = [], {}, 0
    for name, info in header.items():
        a, b = info["data_offsets"]
        blobs.append(data[a:b])
        new[name] = {**info, "data_offsets": [offset, offset + b - a]}
        offset += b - a
    for name, array in extra.items():
        blob = array.astype("<f4").tobytes()
        blobs.append(blob)
        new[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    head = json.dumps(new).encode()
    head += b" " * (-len(head) % 8)
    (out / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    config["id2label"] = {"0": "LABEL_0"}
    config["label2id"] = {"LABEL_0": 0}
    (out / "config.json").write_text(json.dumps(config, indent=1))


if __name__ == "__main__":
    main()
