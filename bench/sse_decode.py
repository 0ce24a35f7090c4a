"""Micro-benchmark of the SSE decoder on a typical OpenAI chat.completion.chunk (~200 bytes).

Prints the CPU cost per event, in µs, for the ways upstreams deliver their chunks: one event per
read, several events per read, an event cut in two, CRLF line ends, non-ASCII content, and the
cost of writing an event back out. Run: ``.venv/bin/python bench/sse_decode.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from swarmgate.upstream.sse import SSEDecoder, encode_event, encode_json_event


def openai_chunk(content: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None}
        ],
    }


def per_event_us(run: Callable[[], int], seconds: float = 0.5) -> float:
    """Best of five timed rounds; ``run`` returns how many events it handled."""
    events, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.05:  # warm up and size a round
        events += run()
    rounds = max(1, int(seconds / 5 / (time.perf_counter() - start) * events))
    best = float("inf")
    for _ in range(5):
        handled, start = 0, time.perf_counter()
        for _ in range(rounds):
            handled += run()
        best = min(best, (time.perf_counter() - start) / handled)
    return best * 1e6


def main() -> None:
    event = encode_json_event(openai_chunk(" Hello"))
    cjk = encode_json_event(openai_chunk(" 你好，世界"))
    crlf = event.replace(b"\n", b"\r\n")
    batch = event * 8
    cut = len(event) // 2
    payload = orjson.dumps(openai_chunk(" Hello"))
    decoder = SSEDecoder()

    def one() -> int:
        return len(decoder.feed(event))

    def eight() -> int:
        return len(decoder.feed(batch))

    def halves() -> int:
        return len(decoder.feed(event[:cut])) + len(decoder.feed(event[cut:]))

    def crlf_ends() -> int:
        return len(decoder.feed(crlf))

    def non_ascii() -> int:
        return len(decoder.feed(cjk))

    def encode() -> int:
        encode_event(payload)
        return 1

    print(f"typical event: {len(event)} bytes")
    for name, run in [
        ("one event per chunk", one),
        ("8 events per chunk", eight),
        ("event cut across 2 chunks", halves),
        ("CRLF line ends", crlf_ends),
        ("non-ASCII (CJK) content", non_ascii),
        ("encode_event", encode),
    ]:
        print(f"{name:28s} {per_event_us(run):6.2f} µs/event")


if __name__ == "__main__":
    main()
