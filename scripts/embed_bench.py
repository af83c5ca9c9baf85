#!/usr/bin/env python3
"""Python baseline for the embedding benchmark.

Embeds the sentences of benches/data/sentences.txt with Python onnxruntime (intra-op threads 2)
on models/all-minilm-l6-v2/model.onnx, in batches of --batch (cycling through the corpus),
tokenising with `tokenizers` (pad to the longest in the batch, truncate to the max length),
mean pooling and L2-normalising in numpy, for --seconds of wall time after one warm-up batch.
Prints one JSON line: {"batch": N, "sentences_per_sec": X}.

Usage: embed_bench.py --batch N --seconds S [--models-dir DIR] [--sentences FILE] [--threads T]
"""

import argparse
import json
import os
import time

import numpy as np


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models-dir", default=os.environ.get("ISNAD_MODELS_DIR", os.path.join(root, "models")))
    ap.add_argument("--sentences", default=os.path.join(root, "benches", "data", "sentences.txt"))
    args = ap.parse_args()

    import onnxruntime as ort
    from tokenizers import Tokenizer

    d = os.path.join(args.models_dir, "all-minilm-l6-v2")
    with open(os.path.join(d, "manifest.json"), encoding="utf-8") as f:
        max_tokens = int(json.load(f)["config"]["max_tokens"])
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.enable_truncation(max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(d, "model.onnx"), so, providers=["CPUExecutionProvider"])
    has_tt = "token_type_ids" in {i.name for i in sess.get_inputs()}

    with open(args.sentences, encoding="utf-8") as f:
        corpus = [line.strip() for line in f if line.strip()]

    def run(texts):
        encs = tok.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if has_tt:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = sess.run(None, feeds)[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    pos = 0

    def next_batch():
        nonlocal pos
        out = [corpus[(pos + i) % len(corpus)] for i in range(args.batch)]
        pos = (pos + args.batch) % len(corpus)
        return out

    run(next_batch())  # warm-up
    done = 0
    start = time.perf_counter()
    while True:
        run(next_batch())
        done += args.batch
        elapsed = time.perf_counter() - start
        if elapsed >= args.seconds:
            break
    print(json.dumps({"batch": args.batch, "sentences_per_sec": round(done / elapsed, 2)}))


if __name__ == "__main__":
    main()
