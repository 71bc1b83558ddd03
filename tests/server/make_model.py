#!/usr/bin/env python3
"""Writes o3's tiny test model: a random-weight llama-architecture GGUF file.

Usage: make_model.py OUT.gguf

The weights are random (fixed seed), so the text it generates is gibberish, but llama.cpp runs
real inference on it: a real tokenizer, real attention with grouped-query KV heads (8 query
heads, 4 KV heads), a real KV cache whose size follows the context length (trained context
131072, so any n_ctx up to 128K loads). f32 tensors, about 13 MB.

Deterministic: generating twice gives byte-identical files (same numpy and gguf versions).
Needs python3 with numpy and gguf (PyPI); prints the file's size and sha256.
"""

import hashlib
import os
import sys

import numpy as np
import gguf

SEED = 0x03
N_EMBD = 256
N_BLOCKS = 4
N_HEAD = 8
N_HEAD_KV = 4
HEAD_DIM = N_EMBD // N_HEAD  # 32
N_FF = 512
N_CTX_TRAIN = 131072
RMS_EPS = 1e-5

# Ordinary (type 1) tokens: single characters, then every prefix of "▁word" for common words,
# so SentencePiece-style merging ("▁h" -> "▁he" -> ... -> "▁hello") reaches whole words.
SPACE = "\u2581"  # what SentencePiece writes for a space
CHARS = (
    [SPACE]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    + [str(d) for d in range(10)]
    + list(".,:;!?'\"()[]{}-_+=*/\\<>@#$%&|~`^")
)
WORDS = """
the of and to in is it you that he was for on are as with his they at be this have from or
one had by word but not what all were we when your can said there use an each which she do
how their if will up other about out many then them these so some her would make like him
into time has look two more write go see number no way could people my than first water
been call who oil its now find long down day did get come made may part hello world model
server memory token context batch cache test o3 llama tiny random
""".split()


def vocab():
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    seen = set(tokens)
    ordinary = []
    for t in CHARS:
        ordinary.append(t)
    for w in WORDS:
        w = SPACE + w
        for end in range(2, len(w) + 1):
            ordinary.append(w[:end])
    for t in ordinary:
        if t not in seen:
            seen.add(t)
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)
    # Control and byte tokens score 0; ordinary ones decrease with their index, like a trained
    # SentencePiece model (the score orders the merges).
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(tokens) - 3 - 256)]
    return tokens, scores, [int(t) for t in types]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_model.py OUT.gguf")
    out = sys.argv[1]
    tokens, scores, types = vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(SEED)

    def rand(*shape):
        # numpy shape is (rows, cols) = GGUF ne reversed: a (out, in) matrix is ne [in, out].
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    tmp = out + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("o3-tiny-llama")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_BLOCKS)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    w.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD))
    for i in range(N_BLOCKS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "attn_q.weight", rand(N_HEAD * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_k.weight", rand(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_v.weight", rand(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_output.weight", rand(N_EMBD, N_HEAD * HEAD_DIM))
        w.add_tensor(p + "ffn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "ffn_gate.weight", rand(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", rand(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", rand(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", ones(N_EMBD))
    w.add_tensor("output.weight", rand(n_vocab, N_EMBD))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)

    h = hashlib.sha256()
    with open(out, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    print(f"{out}: {os.path.getsize(out)} bytes, {n_vocab} tokens, sha256 {h.hexdigest()}")


if __name__ == "__main__":
    main()
