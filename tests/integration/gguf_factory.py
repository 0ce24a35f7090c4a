"""Write a tiny random-weight llama GGUF so tests can run llama.cpp's real server offline.

No model may be downloaded here, and a real backend we did not write is still the best test of
our OpenAI compatibility; so the weights are random and the whole file is built with the `gguf`
package at test time (about 0.5 MB, instant to load, thousands of tokens per second on a CPU).

The vocabulary is GPT-2 style byte-level BPE: the 256 byte tokens, a handful of merges and the
ChatML control tokens, with a ChatML chat template so /v1/chat/completions works.

Random weights would sample anything, including the end-of-generation token and lone UTF-8
continuation bytes. To keep the output predictable, one coordinate of the residual stream is held
constant (every embedding has it, no layer writes to it), so after the final RMS norm it is always
positive; each token's output row reads it with weight 0 (allowed: printable ASCII and the merges)
or a large negative weight (suppressed: control tokens, newlines, non-ASCII bytes). Generation
therefore never stops early: every request runs to `max_tokens`, and text is plain ASCII.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_LAYERS = 2
N_EMBD = 64
N_HEAD = 4
N_FF = 128
CONTEXT_LENGTH = 256

BOS_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (BOS_TOKEN, "<|im_start|>", EOS_TOKEN)
MERGES = (("Ġ", "t"), ("h", "e"), ("t", "h"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"))

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_ANCHOR = 4.0  # the constant residual coordinate 0
_SUPPRESS = -30.0  # output weight on coordinate 0 for tokens that must never be sampled

MODEL_ALIAS = "tiny-llama"  # the name llama-server serves it by


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what byte-level BPE stores)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def build_vocab() -> tuple[list[str], list[int], list[str], list[bool]]:
    """Return (tokens, token types, merges, may-be-sampled flags), index = token id."""
    byte_chars = _byte_to_unicode()
    tokens = [byte_chars[b] for b in range(256)]
    allowed = [0x20 <= b <= 0x7E for b in range(256)]
    types = [int(gguf.TokenType.NORMAL)] * 256
    for left, right in MERGES:
        tokens.append(left + right)
        allowed.append(True)
        types.append(int(gguf.TokenType.NORMAL))
    for special in SPECIAL_TOKENS:
        tokens.append(special)
        allowed.append(False)
        types.append(int(gguf.TokenType.CONTROL))
    merges = [f"{left} {right}" for left, right in MERGES]
    return tokens, types, merges, allowed


def _weights(rng: np.random.Generator, n_vocab: int, allowed: list[bool]) -> dict[str, np.ndarray]:
    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    head_dim = N_EMBD // N_HEAD
    embeddings = normal(n_vocab, N_EMBD, scale=1.0)
    embeddings[:, 0] = _ANCHOR
    output = normal(n_vocab, N_EMBD, scale=0.5)
    output[:, 0] = np.where(np.array(allowed), 0.0, _SUPPRESS)
    tensors = {
        "token_embd.weight": embeddings,
        "output_norm.weight": np.ones(N_EMBD, dtype=np.float32),
        "output.weight": output,
    }
    for layer in range(N_LAYERS):
        attn_output = normal(N_EMBD, N_EMBD, scale=0.1)
        ffn_down = normal(N_EMBD, N_FF, scale=0.1)
        # Rows 0 are the outputs into the anchor coordinate: zero keeps it constant.
        attn_output[0, :] = 0.0
        ffn_down[0, :] = 0.0
        prefix = f"blk.{layer}"
        tensors |= {
            f"{prefix}.attn_norm.weight": np.ones(N_EMBD, dtype=np.float32),
            f"{prefix}.attn_q.weight": normal(N_HEAD * head_dim, N_EMBD, scale=0.2),
            f"{prefix}.attn_k.weight": normal(N_HEAD * head_dim, N_EMBD, scale=0.2),
            f"{prefix}.attn_v.weight": normal(N_HEAD * head_dim, N_EMBD, scale=0.2),
            f"{prefix}.attn_output.weight": attn_output,
            f"{prefix}.ffn_norm.weight": np.ones(N_EMBD, dtype=np.float32),
            f"{prefix}.ffn_gate.weight": normal(N_FF, N_EMBD, scale=0.2),
            f"{prefix}.ffn_up.weight": normal(N_FF, N_EMBD, scale=0.2),
            f"{prefix}.ffn_down.weight": ffn_down,
        }
    return tensors


def write_tiny_llama_gguf(path: Path, *, seed: int = 0) -> Path:
    """Write the model to `path` (same seed, same bytes) and return `path`."""
    tokens, types, merges, allowed = build_vocab()
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("swarmgate-tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(BOS_TOKEN))
    writer.add_eos_token_id(tokens.index(EOS_TOKEN))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, tensor in _weights(np.random.default_rng(seed), len(tokens), allowed).items():
        writer.add_tensor(name, tensor)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
