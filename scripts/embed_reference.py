#!/usr/bin/env python3
"""Reference embeddings for the Rust embedding tests.

Runs models/all-minilm-l6-v2/model.onnx with Python onnxruntime and its tokenizer.json with the
Python `tokenizers` package, one sentence at a time (batch 1, no padding, truncation to the
model's max length), mean-pools the last hidden state over the attention mask and L2-normalises.

Usage: embed_reference.py [--models-dir DIR] [--out tests/fixtures/embeddings_ref.json]
"""

import argparse
import json
import os

import numpy as np

from gguf_to_onnx import sha256  # same directory

MAX_TOKENS = 256  # sentence-transformers max_seq_length of all-MiniLM-L6-v2

SENTENCES = [
    # English
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Our quarterly revenue grew by 12% while operating costs stayed flat.",
    "Please reset my password; I can no longer log in to the customer portal.",
    "A sovereign AI gateway keeps every prompt, answer and audit record inside the organisation's own infrastructure.",
    # longer than 256 word pieces: truncated to MAX_TOKENS
    " ".join(
        [
            "The audit journal records every request that passes through the gateway, signs each entry,"
            " and chains it to the previous one so that any later tampering can be detected by an auditor"
            " who holds nothing but the public key and an exported copy of the journal."
        ]
        * 6
    ),
    # Arabic
    "مرحبا بالعالم",
    "ما هي عاصمة فرنسا؟",
    "باريس هي عاصمة فرنسا وأكبر مدنها.",
    "أريد إعادة تعيين كلمة المرور الخاصة بي.",
    "ارتفعت الإيرادات الفصلية بنسبة اثني عشر بالمئة.",
    "الذكاء الاصطناعي السيادي يحفظ البيانات داخل حدود المؤسسة.",
    "يسجل دفتر التدقيق كل طلب يمر عبر البوابة ويوقع كل قيد ويربطه بالقيد السابق.",
    "اللغة العربية من أكثر اللغات انتشارا في العالم، ويتحدث بها أكثر من أربعمئة مليون إنسان في"
    " الوطن العربي وخارجه، وهي لغة القرآن الكريم ولغة الشعر والأدب منذ قرون طويلة.",
]


def load(models_dir):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    d = os.path.join(models_dir, "all-minilm-l6-v2")
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(d, "model.onnx"), so, providers=["CPUExecutionProvider"])
    return d, tok, sess


def embed(tok, sess, texts):
    """Embeddings for a batch (padded to the longest); returns (embeddings, token counts)."""
    encs = tok.encode_batch(texts)
    width = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), width), np.int64)
    mask = np.zeros((len(encs), width), np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = e.attention_mask
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in {i.name for i in sess.get_inputs()}:
        feeds["token_type_ids"] = np.zeros_like(ids)
    hidden = sess.run(None, feeds)[0]  # [B, S, 384]
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled, [int(x) for x in mask.sum(axis=1)]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", default=os.environ.get("ISNAD_MODELS_DIR", os.path.join(root, "models")))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "embeddings_ref.json"))
    args = ap.parse_args()

    d, tok, sess = load(args.models_dir)
    items = []
    for text in SENTENCES:
        vec, n = embed(tok, sess, [text])
        items.append({"text": text, "tokens": n[0], "embedding": [round(float(x), 7) for x in vec[0]]})
    doc = {
        "model": "all-minilm-l6-v2",
        "model_sha256": sha256(os.path.join(d, "model.onnx")),
        "max_tokens": MAX_TOKENS,
        "pooling": "mean",
        "normalize": True,
        "items": items,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}: {len(items)} items, tokens {[it['tokens'] for it in items]}")


if __name__ == "__main__":
    main()
