#!/usr/bin/env python3
"""Convert a llama-architecture GGUF (SmolLM2) into an fp32 ONNX decoder with a KV cache.

Usage:
    gguf_to_onnx.py GGUF OUTDIR [--name NAME] [--source TEXT] [--tiny --seed N] [--check]

Writes OUTDIR/model.onnx, OUTDIR/tokenizer.json and OUTDIR/manifest.json. The output is
byte-for-byte deterministic for the same input and arguments.

Graph interface (opset 17, default-domain ONNX ops only):
  inputs   input_ids              int64   [batch, seq]
           attention_mask         int64   [batch, past+seq]   1 = real token, 0 = padding
           position_ids           int64   [batch, seq]
           past_key_values.{i}.key / .value
                                  float32 [batch, num_kv_heads, past, head_dim]  (past may be 0)
  outputs  logits                 float32 [batch, vocab]  (last position of each row only)
           present.{i}.key / .value
                                  float32 [batch, num_kv_heads, past+seq, head_dim]

Q/K weights in a llama GGUF are permuted for llama.cpp's adjacent-pair rope; they are un-permuted
here to the HuggingFace layout and the graph applies the HF "rotate_half" rope.

--tiny --seed N writes a random-weight model with the same interface and tokenizer but tiny dims.
--check runs onnxruntime self-checks (greedy "Paris" answer for the real model; full prefill vs
token-by-token KV cache vs left-padded batch for both).
"""

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
NEG = -1.0e9  # additive mask value: large but finite, so fully masked rows give no NaN


# --------------------------------------------------------------------------------------------
# GGUF reading


def read_gguf(path):
    from gguf import GGUFReader

    return GGUFReader(path)


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def gguf_config(reader):
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"unsupported architecture {arch!r} (only llama)")
    n_embd = int(field(reader, "llama.embedding_length"))
    n_head = int(field(reader, "llama.attention.head_count"))
    head_dim = n_embd // n_head
    rope_dim = field(reader, "llama.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise SystemExit(f"partial rope ({rope_dim} of {head_dim}) is not supported")
    toks = field(reader, "tokenizer.ggml.tokens")
    return {
        "num_layers": int(field(reader, "llama.block_count")),
        "hidden_size": n_embd,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_heads": n_head,
        "num_kv_heads": int(field(reader, "llama.attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "rope_theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "context_length": int(field(reader, "llama.context_length")),
        "vocab_size": int(field(reader, "llama.vocab_size", len(toks))),
    }


def load_weights(reader, cfg):
    """Dequantized weights in HF layout ([out, in] for linears)."""
    from gguf.quants import dequantize

    tensors = {t.name: t for t in reader.tensors}

    def get(name):
        t = tensors[name]
        a = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        return np.ascontiguousarray(a.reshape(tuple(int(x) for x in reversed(t.shape))))

    def unpermute(w, n_head):
        # inverse of convert_hf_to_gguf.py LlamaModel.permute
        return np.ascontiguousarray(
            w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        )

    w = {"embed": get("token_embd.weight"), "norm": get("output_norm.weight")}
    if "output.weight" in tensors:
        w["lm_head"] = get("output.weight")
    for i in range(cfg["num_layers"]):
        p = f"blk.{i}."
        w[f"{i}.attn_norm"] = get(p + "attn_norm.weight")
        w[f"{i}.ffn_norm"] = get(p + "ffn_norm.weight")
        w[f"{i}.q"] = unpermute(get(p + "attn_q.weight"), cfg["num_heads"])
        w[f"{i}.k"] = unpermute(get(p + "attn_k.weight"), cfg["num_kv_heads"])
        w[f"{i}.v"] = get(p + "attn_v.weight")
        w[f"{i}.o"] = get(p + "attn_output.weight")
        w[f"{i}.gate"] = get(p + "ffn_gate.weight")
        w[f"{i}.up"] = get(p + "ffn_up.weight")
        w[f"{i}.down"] = get(p + "ffn_down.weight")
    return w


def tiny_config(base):
    return {
        "num_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 16,
        "rope_theta": base["rope_theta"],
        "rms_norm_eps": base["rms_norm_eps"],
        "context_length": 512,
        "vocab_size": base["vocab_size"],
    }


def random_weights(cfg, seed):
    rng = np.random.default_rng(seed)
    H, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, kv, hd = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]

    def lin(out, inp):
        return (rng.standard_normal((out, inp), dtype=np.float32) * (2.0 / math.sqrt(inp))).astype(np.float32)

    w = {
        # small embeddings and strong layers, so the tied lm head does not just echo the input token
        "embed": (0.05 * rng.standard_normal((V, H), dtype=np.float32)).astype(np.float32),
        "norm": (1.0 + 0.1 * rng.standard_normal(H, dtype=np.float32)).astype(np.float32),
    }
    for i in range(cfg["num_layers"]):
        w[f"{i}.attn_norm"] = (1.0 + 0.1 * rng.standard_normal(H, dtype=np.float32)).astype(np.float32)
        w[f"{i}.ffn_norm"] = (1.0 + 0.1 * rng.standard_normal(H, dtype=np.float32)).astype(np.float32)
        w[f"{i}.q"] = lin(nh * hd, H)
        w[f"{i}.k"] = lin(kv * hd, H)
        w[f"{i}.v"] = lin(kv * hd, H)
        w[f"{i}.o"] = lin(H, nh * hd)
        w[f"{i}.gate"] = lin(F, H)
        w[f"{i}.up"] = lin(F, H)
        w[f"{i}.down"] = lin(H, F)
    return w


# --------------------------------------------------------------------------------------------
# ONNX graph


class Builder:
    def __init__(self):
        self.nodes = []
        self.inits = []
        self.n = 0
        self.consts = {}

    def op(self, op_type, inputs, n_out=1, name=None, outputs=None, **attrs):
        self.n += 1
        base = name or f"{op_type.lower()}_{self.n}"
        if outputs is None:
            outputs = [base] if n_out == 1 else [f"{base}_{j}" for j in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"n{self.n}_{op_type}", **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.array(arr, order="C", copy=True), name))
        return name

    def const(self, values, dtype):
        arr = np.array(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.consts:
            self.consts[key] = self.init(f"const_{len(self.consts)}", arr)
        return self.consts[key]


def rmsnorm(b, x, w_name, eps, prefix):
    sq = b.op("Mul", [x, x], name=f"{prefix}_sq")
    ms = b.op("ReduceMean", [sq], name=f"{prefix}_ms", axes=[-1], keepdims=1)
    den = b.op("Sqrt", [b.op("Add", [ms, b.const(eps, np.float32)], name=f"{prefix}_eps")], name=f"{prefix}_rms")
    return b.op("Mul", [b.op("Div", [x, den], name=f"{prefix}_div"), w_name], name=f"{prefix}_out")


def build_graph(cfg, w):
    L, H, F = cfg["num_layers"], cfg["hidden_size"], cfg["intermediate_size"]
    nh, kv, hd, V = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"], cfg["vocab_size"]
    rep = nh // kv
    half = hd // 2
    eps = cfg["rms_norm_eps"]
    scale = 1.0 / math.sqrt(hd)
    b = Builder()

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", V])]
    for i in range(L):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", TensorProto.FLOAT, ["batch", kv, "past_seq", hd]
                )
            )
            outputs.append(
                helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, ["batch", kv, "total_seq", hd])
            )

    # ---- shared: embedding, mask, rope tables
    b.init("embed_tokens.weight", w["embed"])
    x = b.op("Gather", ["embed_tokens.weight", "input_ids"], name="embed", axis=0)  # [B,S,H]

    s_1d = b.op("Shape", ["input_ids"], name="seq_len", start=1, end=2)
    t_1d = b.op("Shape", ["attention_mask"], name="total_len", start=1, end=2)
    axis0 = b.const([0], np.int64)
    s_sc = b.op("Squeeze", [s_1d, axis0], name="seq_len_s")
    t_sc = b.op("Squeeze", [t_1d, axis0], name="total_len_s")
    past_sc = b.op("Sub", [t_sc, s_sc], name="past_len_s")
    one = b.const(1, np.int64)
    zero = b.const(0, np.int64)
    q_idx = b.op("Range", [past_sc, t_sc, one], name="q_idx")  # [S] absolute cache index of queries
    q_idx = b.op("Unsqueeze", [q_idx, b.const([1], np.int64)], name="q_idx_col")  # [S,1]
    k_idx = b.op("Range", [zero, t_sc, one], name="k_idx")  # [T]
    causal = b.op("LessOrEqual", [k_idx, q_idx], name="causal")  # [S,T]
    pad = b.op("Cast", ["attention_mask"], name="pad_ok", to=TensorProto.BOOL)  # [B,T]
    pad = b.op("Unsqueeze", [pad, b.const([1], np.int64)], name="pad_ok3")  # [B,1,T]
    ok = b.op("And", [causal, pad], name="visible")  # [B,S,T]
    mask = b.op("Where", [ok, b.const(0.0, np.float32), b.const(NEG, np.float32)], name="mask3")
    mask = b.op("Unsqueeze", [mask, b.const([1, 2], np.int64)], name="mask")  # [B,1,1,S,T]

    inv_freq = (1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))).astype(np.float32)
    pos = b.op("Cast", ["position_ids"], name="pos_f", to=TensorProto.FLOAT)
    pos = b.op("Unsqueeze", [pos, b.const([-1], np.int64)], name="pos_col")  # [B,S,1]
    freqs = b.op("Mul", [pos, b.init("rope_inv_freq", inv_freq)], name="rope_freqs")  # [B,S,half]
    cos_h = b.op("Cos", [freqs], name="rope_cos_h")
    sin_h = b.op("Sin", [freqs], name="rope_sin_h")
    cos = b.op("Concat", [cos_h, cos_h], name="rope_cos_full", axis=-1)
    # rotate_half(x) = concat(-x2, x1) = swap(x) * concat(-1, +1): fold the sign into sin
    sin = b.op("Concat", [b.op("Neg", [sin_h], name="rope_sin_neg"), sin_h], name="rope_sin_full", axis=-1)
    head_axis = b.const([2], np.int64)
    cos = b.op("Unsqueeze", [cos, head_axis], name="rope_cos")  # [B,S,1,hd]
    sin = b.op("Unsqueeze", [sin, head_axis], name="rope_sin")

    halves = b.const([half, half], np.int64)
    qkv_shape = b.const([0, 0, nh + 2 * kv, hd], np.int64)
    qk_v_split = b.const([nh + kv, kv], np.int64)
    q_k_split = b.const([nh, kv], np.int64)
    q5_shape = b.const([0, kv, rep, -1, hd], np.int64)
    ctx_shape = b.const([0, nh, -1, hd], np.int64)
    out_shape = b.const([0, 0, nh * hd], np.int64)
    ff_split = b.const([F, F], np.int64)

    for i in range(L):
        p = f"l{i}"
        # ---- attention
        xn = rmsnorm(b, x, b.init(f"layers.{i}.input_layernorm.weight", w[f"{i}.attn_norm"]), eps, f"{p}_ln1")
        # fused, pre-transposed QKV; 1/sqrt(head_dim) folded into Q (rope is linear)
        wqkv = np.concatenate([w[f"{i}.q"] * np.float32(scale), w[f"{i}.k"], w[f"{i}.v"]], axis=0).T
        qkv = b.op("MatMul", [xn, b.init(f"layers.{i}.qkv.weight_t", wqkv.astype(np.float32))], name=f"{p}_qkv")
        qkv = b.op("Reshape", [qkv, qkv_shape], name=f"{p}_qkv4")  # [B,S,nh+2kv,hd]
        qk, v = b.op("Split", [qkv, qk_v_split], n_out=2, name=f"{p}_qk_v", axis=2)
        x1, x2 = b.op("Split", [qk, halves], n_out=2, name=f"{p}_halves", axis=-1)
        swapped = b.op("Concat", [x2, x1], name=f"{p}_swap", axis=-1)
        qk = b.op(
            "Add",
            [b.op("Mul", [qk, cos], name=f"{p}_qkcos"), b.op("Mul", [swapped, sin], name=f"{p}_qksin")],
            name=f"{p}_rope",
        )
        q, k = b.op("Split", [qk, q_k_split], n_out=2, name=f"{p}_q_k", axis=2)
        q = b.op("Transpose", [q], name=f"{p}_q_t", perm=[0, 2, 1, 3])  # [B,nh,S,hd]
        k = b.op("Transpose", [k], name=f"{p}_k_t", perm=[0, 2, 1, 3])  # [B,kv,S,hd]
        v = b.op("Transpose", [v], name=f"{p}_v_t", perm=[0, 2, 1, 3])
        pk = b.op("Concat", [f"past_key_values.{i}.key", k], outputs=[f"present.{i}.key"], axis=2)
        pv = b.op("Concat", [f"past_key_values.{i}.value", v], outputs=[f"present.{i}.value"], axis=2)
        # GQA without copying K/V: group query heads by kv head and broadcast in MatMul
        q5 = b.op("Reshape", [q, q5_shape], name=f"{p}_q5")  # [B,kv,rep,S,hd]
        k5 = b.op("Unsqueeze", [pk, head_axis], name=f"{p}_k5")  # [B,kv,1,T,hd]
        k5t = b.op("Transpose", [k5], name=f"{p}_k5t", perm=[0, 1, 2, 4, 3])  # [B,kv,1,hd,T]
        v5 = b.op("Unsqueeze", [pv, head_axis], name=f"{p}_v5")  # [B,kv,1,T,hd]
        scores = b.op("MatMul", [q5, k5t], name=f"{p}_scores")  # [B,kv,rep,S,T]
        scores = b.op("Add", [scores, mask], name=f"{p}_masked")
        probs = b.op("Softmax", [scores], name=f"{p}_probs", axis=-1)
        ctx = b.op("MatMul", [probs, v5], name=f"{p}_ctx5")  # [B,kv,rep,S,hd]
        ctx = b.op("Reshape", [ctx, ctx_shape], name=f"{p}_ctx4")  # [B,nh,S,hd]
        ctx = b.op("Transpose", [ctx], name=f"{p}_ctx_t", perm=[0, 2, 1, 3])
        ctx = b.op("Reshape", [ctx, out_shape], name=f"{p}_ctx")  # [B,S,nh*hd]
        wo = np.ascontiguousarray(w[f"{i}.o"].T)
        attn = b.op("MatMul", [ctx, b.init(f"layers.{i}.o_proj.weight_t", wo)], name=f"{p}_o")
        x = b.op("Add", [x, attn], name=f"{p}_res1")
        # ---- MLP
        xn = rmsnorm(b, x, b.init(f"layers.{i}.post_attention_layernorm.weight", w[f"{i}.ffn_norm"]), eps, f"{p}_ln2")
        wgu = np.concatenate([w[f"{i}.gate"], w[f"{i}.up"]], axis=0).T
        gu = b.op("MatMul", [xn, b.init(f"layers.{i}.gate_up.weight_t", wgu.astype(np.float32))], name=f"{p}_gu")
        g, u = b.op("Split", [gu, ff_split], n_out=2, name=f"{p}_g_u", axis=-1)
        act = b.op("Mul", [g, b.op("Sigmoid", [g], name=f"{p}_sig")], name=f"{p}_silu")
        h = b.op("Mul", [act, u], name=f"{p}_gated")
        wd = np.ascontiguousarray(w[f"{i}.down"].T)
        down = b.op("MatMul", [h, b.init(f"layers.{i}.down_proj.weight_t", wd)], name=f"{p}_down")
        x = b.op("Add", [x, down], name=f"{p}_res2")

    # ---- last position only, final norm, lm head
    last = b.op("Sub", [s_sc, one], name="last_idx")
    xl = b.op("Gather", [x, last], name="last_hidden", axis=1)  # [B,H]
    xl = rmsnorm(b, xl, b.init("norm.weight", w["norm"]), eps, "final_ln")
    if "lm_head" in w:
        b.op("MatMul", [xl, b.init("lm_head.weight_t", np.ascontiguousarray(w["lm_head"].T))], outputs=["logits"])
    else:  # tied: reuse the embedding initializer, transposed inside Gemm
        b.op("Gemm", [xl, "embed_tokens.weight"], outputs=["logits"], transB=1)

    graph = helper.make_graph(b.nodes, "decoder", inputs, outputs, initializer=b.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="isnad-gguf_to_onnx",
        producer_version="1",
    )
    model.ir_version = 8
    return model


# --------------------------------------------------------------------------------------------
# tokenizer.json


def build_tokenizer(reader):
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"unsupported tokenizer model {model!r} (only gpt2 byte-level BPE)")
    pre = field(reader, "tokenizer.ggml.pre")
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = list(field(reader, "tokenizer.ggml.token_type"))
    merges = list(field(reader, "tokenizer.ggml.merges"))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("duplicate tokens in GGUF vocabulary")
    bytelevel = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if pre == "smollm":
        pre_tok = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, bytelevel]}
    elif pre in (None, "default", "gpt2"):
        pre_tok = bytelevel
    else:
        raise SystemExit(f"unsupported pre-tokenizer {pre!r}")
    # token types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
    added = [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] == 3,
        }
        for i in range(len(tokens))
        if types[i] in (3, 4)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tok,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def check_tokenizer(path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    text = "Hello, world! 123 مرحبا"
    enc = tok.encode(text)
    dec = tok.decode(enc.ids, skip_special_tokens=False)
    if dec != text:
        raise SystemExit(f"tokenizer round trip failed: {text!r} -> {enc.tokens} -> {dec!r}")
    chat = tok.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=True)
    if chat.ids[0] != 1 or 2 not in chat.ids:
        raise SystemExit(f"special tokens not recognised: {chat.tokens}")
    return enc


# --------------------------------------------------------------------------------------------
# self-check with onnxruntime


class Runner:
    def __init__(self, path, cfg):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count() or 1
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.cfg = cfg

    def empty_cache(self, batch):
        shape = (batch, self.cfg["num_kv_heads"], 0, self.cfg["head_dim"])
        return [np.zeros(shape, np.float32) for _ in range(2 * self.cfg["num_layers"])]

    def step(self, ids, mask, pos, cache):
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        for i in range(self.cfg["num_layers"]):
            feeds[f"past_key_values.{i}.key"] = cache[2 * i]
            feeds[f"past_key_values.{i}.value"] = cache[2 * i + 1]
        out = self.sess.run(None, feeds)
        return out[0], out[1:]

    def greedy(self, rows, n_new, stop=(), token_by_token=False):
        """Greedy decode a batch of prompts (left-padded). Returns new ids per row."""
        B = len(rows)
        width = max(len(r) for r in rows)
        ids = np.zeros((B, width), np.int64)
        mask = np.zeros((B, width), np.int64)
        for b_, r in enumerate(rows):
            ids[b_, width - len(r) :] = r
            mask[b_, width - len(r) :] = 1
        pos_full = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1).astype(np.int64)
        cache = self.empty_cache(B)
        if token_by_token:
            for t in range(width):
                logits, cache = self.step(ids[:, t : t + 1], mask[:, : t + 1], pos_full[:, t : t + 1], cache)
        else:
            logits, cache = self.step(ids, mask, pos_full, cache)
        self.prefill_logits, self.prefill_cache = logits, cache
        next_pos = pos_full[:, -1:] + 1
        out = [[] for _ in range(B)]
        done = [False] * B
        for _ in range(n_new):
            nxt = logits.argmax(axis=-1).astype(np.int64)
            for b_ in range(B):
                if not done[b_]:
                    out[b_].append(int(nxt[b_]))
                    done[b_] = int(nxt[b_]) in stop
            if all(done):
                break
            mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
            logits, cache = self.step(nxt[:, None], mask, next_pos, cache)
            next_pos = next_pos + 1
        return out


def self_check(outdir, cfg, tiny):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(outdir, "tokenizer.json"))
    run = Runner(os.path.join(outdir, "model.onnx"), cfg)
    stop = set(cfg["eos_token_ids"])
    p1 = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    p2 = "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
    a = tok.encode(p1).ids
    c = tok.encode(p2).ids
    n = 8 if tiny else 24
    def close(x, y, what):
        d = float(np.max(np.abs(x - y)))
        if not d < 2e-3 * max(1.0, float(np.max(np.abs(y)))):
            raise SystemExit(f"{what}: max abs diff {d}")
        return d

    full = run.greedy([a], n, stop)[0]
    lf, cf = run.prefill_logits, run.prefill_cache
    tbt = run.greedy([a], n, stop, token_by_token=True)[0]
    if full != tbt:
        raise SystemExit(f"KV-cache mismatch: prefill {full} vs token-by-token {tbt}")
    d1 = close(run.prefill_logits, lf, "prefill vs token-by-token logits")
    for x, y in zip(run.prefill_cache, cf):  # present = concat(past, new) over the whole prompt
        close(x, y, "prefill vs token-by-token present")
    single_c = run.greedy([c], n, stop)[0]
    lc = run.prefill_logits
    batched = run.greedy([a, c], n, stop)
    if batched[0] != full or batched[1] != single_c:
        raise SystemExit(f"batched/left-padded mismatch: {batched} vs {[full, single_c]}")
    d2 = max(close(run.prefill_logits[0], lf[0], "batched row 0 logits"), close(run.prefill_logits[1], lc[0], "left-padded row logits"))
    text = tok.decode(full, skip_special_tokens=True)
    result = {"greedy_text": text, "prompt_tokens": len(a), "new_tokens": len(full), "second_row_text": tok.decode(single_c, skip_special_tokens=True),
              "max_logit_diff_cache": d1, "max_logit_diff_batch": d2}
    if not tiny and "Paris" not in text:
        raise SystemExit(f"self-check failed: answer {text!r} does not contain 'Paris'")
    return result


# --------------------------------------------------------------------------------------------


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("outdir")
    ap.add_argument("--name", default=None)
    ap.add_argument("--source", default=None)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()

    reader = read_gguf(args.gguf)
    base = gguf_config(reader)
    if args.tiny:
        cfg = tiny_config(base)
        weights = random_weights(cfg, args.seed)
    else:
        cfg = base
        weights = load_weights(reader, cfg)
    os.makedirs(args.outdir, exist_ok=True)
    model_path = os.path.join(args.outdir, "model.onnx")
    tok_path = os.path.join(args.outdir, "tokenizer.json")

    model = build_graph(cfg, weights)
    del weights
    onnx.checker.check_model(model)  # in-memory check; model is < 2 GB
    tmp = model_path + ".tmp"
    onnx.save_model(model, tmp)
    os.replace(tmp, model_path)
    del model

    tok_json = build_tokenizer(reader)
    with open(tok_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False, indent=None, separators=(",", ":"))
    os.replace(tok_path + ".tmp", tok_path)
    check_tokenizer(tok_path)

    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    eos = []
    for t in ("<|im_end|>", "<|endoftext|>"):
        if t in tokens:
            eos.append(tokens.index(t))
    ggml_eos = field(reader, "tokenizer.ggml.eos_token_id")
    if ggml_eos is not None and int(ggml_eos) not in eos:
        eos.append(int(ggml_eos))
    config = {
        "num_layers": cfg["num_layers"],
        "num_heads": cfg["num_heads"],
        "num_kv_heads": cfg["num_kv_heads"],
        "head_dim": cfg["head_dim"],
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "vocab_size": cfg["vocab_size"],
        "context_length": cfg["context_length"],
        "rope_theta": cfg["rope_theta"],
        "rms_norm_eps": cfg["rms_norm_eps"],
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_ids": eos,
        "pad_token_id": int(field(reader, "tokenizer.ggml.padding_token_id", eos[0])),
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "chat_template": field(reader, "tokenizer.chat_template"),
    }
    cfg["eos_token_ids"] = eos

    if args.check:
        res = self_check(args.outdir, cfg, args.tiny)
        print("self-check ok: " + json.dumps(res, ensure_ascii=False), file=sys.stderr)

    gguf_sha = sha256(args.gguf)
    manifest = {
        "name": args.name or ("tiny-random" if args.tiny else "smollm2-135m-instruct"),
        "kind": "chat",
        "source": args.source or f"{os.path.basename(args.gguf)} sha256 {gguf_sha}",
        "files": {"model.onnx": sha256(model_path), "tokenizer.json": sha256(tok_path)},
        "config": config,
    }
    if args.tiny:
        manifest["config"]["random_seed"] = args.seed
    with open(os.path.join(args.outdir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
