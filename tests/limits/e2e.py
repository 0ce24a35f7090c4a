"""A real model server for the limits tests (stdlib, in a thread) that knows the gateway's
token estimate, and counts the requests it is serving at once."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def estimate(body: bytes, max_tokens: int) -> tuple[int, int]:
    """The gateway's reservation for this body: (prompt estimate, answer bound)."""
    return len(body) // 4 + 1, max_tokens


class Upstream:
    """Answers every chat completion with usage equal to the gateway's reservation (so that
    settling changes nothing); ``slow`` models take ``delay`` seconds. ``peak``: the most
    requests it was serving at once."""

    def __init__(self, delay: float = 0.3) -> None:
        self.lock = threading.Lock()
        self.running = self.peak = self.served = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                body = json.loads(raw)
                with upstream.lock:
                    upstream.running += 1
                    upstream.served += 1
                    upstream.peak = max(upstream.peak, upstream.running)
                try:
                    if str(body.get("model", "")).startswith("slow"):
                        time.sleep(delay)
                    prompt, answer = estimate(raw, int(body.get("max_tokens") or 0))
                    payload = completion(body.get("model", "?"), prompt, answer)
                finally:
                    with upstream.lock:
                        upstream.running -= 1
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self.lock:
            self.running = self.peak = self.served = 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def completion(model: str, prompt: int, answer: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-limits",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": answer,
            "total_tokens": prompt + answer,
        },
    }
