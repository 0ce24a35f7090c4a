"""``swarmgate check --url URL``: seed 002's test list, run against any running gateway.

Each check sends real requests (standard library HTTP only: the product must not need the
OpenAI SDK) and ends as PASS, FAIL or SKIP with a one-line reason. The run fails when any
check fails; a SKIP (no rate limits configured, one deployment per model) is not a failure.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

BURST = 40  # requests sent at once to look for a rate limit
SPREAD_REQUESTS = 12  # chat requests per model to see its deployments take turns
TIMEOUT = 30.0
BAD_KEY = "sk-sg-swarmgate-check-invalid-key-0000000000000000"


class Failed(Exception):
    """A check's reason to FAIL."""


class Skipped(Exception):
    """A check's reason to SKIP: the gateway does not have what it tests."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise Failed(f"answered {self.status} with a body that is not JSON") from exc


@dataclass(frozen=True)
class Outcome:
    name: str
    verdict: str  # PASS | FAIL | SKIP
    reason: str
    seconds: float


@dataclass
class Gateway:
    url: str
    key: str | None
    models: list[str] = field(default_factory=list)
    chat_models: list[str] = field(default_factory=list)  # those whose type is chat

    def request(self, method: str, path: str, body: Any = None, *, key: str | None = None) -> Reply:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        token = self.key if key is None else key
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return Reply(response.status, _lower(response.headers.items()), response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return Reply(exc.code, _lower(exc.headers.items()), exc.read())
        except OSError as exc:
            raise Failed(f"{method} {path}: cannot reach the gateway: {exc}") from exc

    def chat(self, model: str, *, stream: bool = False) -> Reply:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "swarmgate check"}],
            "max_tokens": 8,
            "stream": stream,
        }
        return self.request("POST", "/v1/chat/completions", body)


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


def _expect(reply: Reply, status: int, what: str) -> None:
    if reply.status != status:
        detail = reply.body[:200].decode(errors="replace")
        raise Failed(f"{what} answered {reply.status}, expected {status}: {detail}")


def check_health(gw: Gateway) -> str:
    reply = gw.request("GET", "/health")
    _expect(reply, 200, "GET /health")
    body = reply.json()
    if not isinstance(body, dict) or "status" not in body:
        raise Failed("GET /health answered JSON without a status field")
    return f"status {body['status']!r}"


def check_root(gw: Gateway) -> str:
    reply = gw.request("GET", "/")
    if reply.status == 404:
        raise Failed("GET / answered 404: this gateway has no root endpoint")
    _expect(reply, 200, "GET /")
    return "answered 200"


def check_models(gw: Gateway) -> str:
    reply = gw.request("GET", "/v1/models")
    _expect(reply, 200, "GET /v1/models")
    data = reply.json().get("data")
    if not isinstance(data, list) or not data:
        raise Failed("GET /v1/models listed no models")
    listed = [m for m in data if isinstance(m, dict) and "id" in m]
    gw.models = [str(m["id"]) for m in listed]
    # swarmgate says each model's type; another gateway may not (then every model is tried).
    gw.chat_models = [str(m["id"]) for m in listed if m.get("type", "chat") == "chat"]
    return f"{len(gw.models)} models: {', '.join(gw.models)}"


def _chat_models(gw: Gateway) -> list[str]:
    if not gw.models:
        raise Failed("no model to call (the models check failed)")
    if gw.chat_models:
        return gw.chat_models
    # Embedding models refuse chat; their names usually say what they are.
    chat = [m for m in gw.models if "embed" not in m]
    return chat or gw.models


def check_chat(gw: Gateway) -> str:
    model = _chat_models(gw)[0]
    reply = gw.chat(model)
    _expect(reply, 200, f"chat with {model}")
    content = reply.json()["choices"][0]["message"]["content"]
    if not content:
        raise Failed(f"chat with {model} answered an empty message")
    return f"{model} answered {len(content)} characters"


def check_streaming(gw: Gateway) -> str:
    model = _chat_models(gw)[0]
    reply = gw.chat(model, stream=True)
    _expect(reply, 200, f"streaming chat with {model}")
    if not reply.headers.get("content-type", "").startswith("text/event-stream"):
        raise Failed(f"streaming answered {reply.headers.get('content-type')!r}")
    events = [line[6:] for line in reply.body.decode().splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        raise Failed("the stream did not end with data: [DONE]")
    for event in events[:-1]:
        if '"error"' in event and json.loads(event).get("error"):
            raise Failed(f"the stream carried an error: {event[:200]}")
    return f"{len(events) - 1} chunks, then [DONE]"


def check_authentication(gw: Gateway) -> str:
    reply = gw.request("GET", "/v1/models", key=BAD_KEY)
    if reply.status == 200:
        raise Failed("a bad API key was accepted")
    _expect(reply, 401, "a bad API key")
    return "a bad key is refused with 401"


def check_rate_limiting(gw: Gateway) -> str:
    # Inference is what limits guard (listing models is not limited): a burst of chats.
    model = _chat_models(gw)[0]
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        replies = list(pool.map(lambda _: gw.chat(model), range(BURST)))
    limited = [r for r in replies if r.status == 429]
    if not limited:
        raise Skipped(f"no 429 after a burst of {BURST} requests: no rate limits configured")
    if "retry-after" not in limited[0].headers:
        raise Failed("a 429 without Retry-After")
    return f"{len(limited)} of {BURST} requests limited, with Retry-After"


def check_load_spread(gw: Gateway) -> str:
    spread: dict[str, set[str]] = {}
    for model in _chat_models(gw):
        for _ in range(SPREAD_REQUESTS):
            reply = gw.chat(model)
            _expect(reply, 200, f"chat with {model}")
            spread.setdefault(model, set()).add(reply.headers.get("x-swarmgate-deployment", "?"))
    balanced = {m: d for m, d in spread.items() if len(d) > 1}
    if not balanced:
        raise Skipped("every model answered from one deployment (x-swarmgate-deployment)")
    return "; ".join(f"{m}: {len(d)} deployments" for m, d in sorted(balanced.items()))


CHECKS: list[tuple[str, Callable[[Gateway], str]]] = [
    ("health", check_health),
    ("root endpoint", check_root),
    ("models", check_models),
    ("chat completion", check_chat),
    ("streaming", check_streaming),
    ("authentication", check_authentication),
    ("rate limiting", check_rate_limiting),
    ("load spread", check_load_spread),
]


def run_checks(url: str, key: str | None) -> list[Outcome]:
    gw = Gateway(url.rstrip("/"), key)
    outcomes = []
    for name, check in CHECKS:
        started = time.perf_counter()
        try:
            verdict, reason = "PASS", check(gw)
        except Failed as exc:
            verdict, reason = "FAIL", str(exc)
        except Skipped as exc:
            verdict, reason = "SKIP", str(exc)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            verdict, reason = "FAIL", f"unexpected response shape: {exc!r}"
        outcomes.append(Outcome(name, verdict, reason, time.perf_counter() - started))
    return outcomes


def report(outcomes: list[Outcome], verbose: bool) -> list[str]:
    """``PASS  health (0.004s)`` lines (with reasons for FAIL and SKIP, or all with verbose),
    and a summary."""
    lines = []
    for o in outcomes:
        line = f"{o.verdict}  {o.name} ({o.seconds:.3f}s)"
        if verbose or o.verdict != "PASS":
            line += f": {o.reason}"
        lines.append(line)
    counts = {v: sum(o.verdict == v for o in outcomes) for v in ("PASS", "FAIL", "SKIP")}
    lines.append(
        f"{len(outcomes)} checks: {counts['PASS']} passed, {counts['FAIL']} failed, "
        f"{counts['SKIP']} skipped"
    )
    return lines
