"""Deterministic stand-ins for a model's tokenizer, its text, and its embeddings.

Hand-written because the point is to be cheap and reproducible, not plausible: a "token" is a
piece of at most four non-space characters (close enough to BPE counts for capacity planning),
generated text is words drawn from a small vocabulary by an RNG seeded from the request's
``seed`` and prompt (same seed + same prompt -> same text, on every replica), and an embedding
is a unit vector drawn from an RNG seeded by a hash of the input text.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
import struct
from typing import Any

from swarmgate.errors import BadRequest

_PIECE = re.compile(r"\S{1,4}")

_WORDS = """
the swarm of model servers answers every request with care and a steady stream of tokens
while the gateway routes load across replicas keeping queues short caches warm and latency
low so that applications see one reliable endpoint for chat completions embeddings and
tasks in a cluster of machines that hum along through the night
"""
VOCABULARY = _WORDS.split()


def tokenize(text: str) -> list[str]:
    return _PIECE.findall(text)


def content_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict) and isinstance(part.get("type"), str):
                parts.append(f"<{part['type']}>")
            else:
                raise BadRequest("invalid content part", param="messages")
        return "\n".join(parts)
    raise BadRequest("message content must be a string or a list of parts", param="messages")


def render_chat(messages: Any) -> str:
    """Flatten chat messages into one prompt string, as a chat template would."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    lines = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message needs a string 'role'", param="messages")
        lines.append(f"<|{message['role']}|>\n{content_text(message.get('content'))}\n")
        calls = message.get("tool_calls")
        if calls:
            lines.append(_calls_text(calls))
    lines.append("<|assistant|>\n")
    return "".join(lines)


def _calls_text(calls: Any) -> str:
    """An assistant message's tool calls, one ``name(arguments)`` line each."""
    if not isinstance(calls, list):
        raise BadRequest("'tool_calls' must be an array", param="messages")
    lines = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise BadRequest("each tool call needs a 'function'", param="messages")
        lines.append(f"{function.get('name')}({function.get('arguments')})\n")
    return "".join(lines)


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def render_inputs(value: Any, param: str) -> list[str]:
    """``prompt`` / ``input`` as OpenAI accepts it: a string, strings, token ids, or lists
    of token ids. Token ids become their decimal text so that they hash and count stably."""
    if isinstance(value, str):
        return [value]
    if _is_token_list(value) and value:
        return [" ".join(map(str, value))]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(_is_token_list(v) and v for v in value):
            return [" ".join(map(str, v)) for v in value]
    raise BadRequest(
        f"'{param}' must be a string, a list of strings or a list of token ids", param=param
    )


def _seed_from(*parts: object) -> int:
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def request_seed(seed: int | None, prompt: str, fallback: random.Random) -> int:
    """The RNG seed for one request's text: fixed by ``seed`` + prompt, else fresh."""
    if seed is None:
        return fallback.getrandbits(64)
    return _seed_from(seed, prompt)


def generate(seed: int, count: int) -> list[str]:
    """``count`` token texts; the first has no leading space, like a detokenizer's output.
    A longer ``count`` extends the same text: each token draws only its own numbers."""
    rng = random.Random(seed)
    tokens = []
    for i in range(count):
        word = rng.choice(VOCABULARY)
        full_stop = rng.random() < 0.08
        if i == 0:
            tokens.append(word.capitalize())
        elif full_stop:
            tokens.append(f". {word.capitalize()}")
        else:
            tokens.append(f" {word}")
    return tokens


def embed(text: str, dim: int) -> list[float]:
    """A unit-norm vector of ``dim`` floats, a pure function of ``text``."""
    rng = random.Random(_seed_from("embed", dim, text))
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(math.fsum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def truncate(vector: list[float], dimensions: int) -> list[float]:
    """OpenAI's ``dimensions``: keep the leading components and renormalise."""
    head = vector[:dimensions]
    norm = math.sqrt(math.fsum(x * x for x in head)) or 1.0
    return [x / norm for x in head]


def encode_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
