"""CPU time per proxied request, in process: the gateway's own cost, without the ASGI server.

The minimal proxy (minimal_proxy.py) is measured the same way, as the floor.
The throughput table (run.py) measures what a client sees, on a machine whose other load moves
the figures by tens of percent. This measures one thing more steadily: the CPU seconds the
gateway's ASGI app spends per chat request (``time.process_time``), driven directly with ASGI
messages, against the same nginx static upstream, with auth on and a real SQLite store. Each
source tree runs in its own subprocess (``--src``), several times alternately, and the medians
are compared. What both trees share (aiohttp's client, the upstream's answers) is in both
figures; the difference is the gateway's code.

    .venv/bin/python bench/cpu.py --baseline 8eb7d52           # this tree against a commit
    .venv/bin/python bench/cpu.py --src /path/to/other/src     # or against any source tree
    .venv/bin/python bench/cpu.py --limits                     # and this tree with limits on
    .venv/bin/python bench/cpu.py --balancers round_robin,resource_aware,prefix_aware
    .venv/bin/python bench/cpu.py --observed                   # and with tracing at 10% and
                                                               # JSON access logs on (--split:
                                                               # and each of the two alone)

With ``--observed`` the traces go over OTLP/HTTP to a sink in this (the parent) process, so that
the child's CPU figure holds what the gateway spends on them (building, encoding, posting) and
not the receiver's; the access log is written to /dev/null.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from processes import REPO, running
from rows import UPSTREAM, baseline_tree, upstream_service

ADMIN_KEY = "sk-sg-" + "b" * 64
CHAT = {"model": "bench-model", "messages": [{"role": "user", "content": "Hello!"}]}


def _minimal_app() -> Any:
    from minimal_proxy import MinimalProxy

    return MinimalProxy(UPSTREAM)


# The throughput table's limits (rows.BENCH_LIMITS): every request checked, charged, settled.
LIMITS = {"tiers": {"default": {"rpm": 10**9, "tpm": 10**12, "concurrent": 10**5}}}


def _observed(otlp: str, parts: str = "both") -> dict[str, Any]:
    """Tracing at seed 003's 10% sampling to ``otlp``, and JSON access logs of every request
    (``parts``: ``tracing`` or ``access`` for one of the two)."""
    out: dict[str, Any] = {}
    if parts in ("both", "tracing"):
        out["tracing"] = {"enabled": True, "sampling": 0.1, "endpoint": otlp}
    if parts in ("both", "access"):
        out["logging"] = {"access": {"enabled": True, "format": "json", "path": os.devnull}}
    return out


def _gateway_app(
    limits: bool = False, otlp: str = "", parts: str = "both", balancer: str = ""
) -> Any:
    from swarmgate.api.app import create_app
    from swarmgate.config import parse_settings

    data = Path(tempfile.mkdtemp(prefix="sg-cpu-"))
    settings = parse_settings(
        {
            **({"limits": LIMITS} if limits else {}),
            **(_observed(otlp, parts) if otlp else {}),
            "models": {"bench-model": _model(balancer)},
            "store": {"url": f"sqlite+aiosqlite:///{data / 'cpu.db'}"},
            "audit": {"spool_path": str(data / "audit.spool")},
            "auth": {"secret": "s" * 40, "admin_key": ADMIN_KEY},
        },
        {},
    )
    return create_app(settings)


def _model(balancer: str) -> dict[str, Any]:
    """The benchmark's model: one deployment, or (``balancer`` named) two of the same nginx
    upstream under that balancer, with its figures scraped where it reads them."""
    if not balancer:
        return {"deployments": [{"url": UPSTREAM, "max_concurrent": 10**6}]}
    pair = [{"url": UPSTREAM, "max_concurrent": 10**6, "name": f"d{i}"} for i in (1, 2)]
    return {"deployments": pair, "balancer": balancer}


def _child(
    requests: int,
    concurrency: int,
    minimal: bool = False,
    limits: bool = False,
    otlp: str = "",
    parts: str = "both",
    balancer: str = "",
) -> None:
    """Runs in the subprocess: import the app from sys.path, drive it, print µs/request."""
    import asyncio
    import gc
    import time

    import orjson

    app = _minimal_app() if minimal else _gateway_app(limits, otlp, parts, balancer)
    body = orjson.dumps(CHAT)
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"authorization", b"Bearer " + ADMIN_KEY.encode()),
    ]

    async def one() -> int:
        scope = {
            "type": "http", "http_version": "1.1", "method": "POST",
            "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "query_string": b"", "headers": headers, "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000), "scheme": "http", "root_path": "",
        }  # fmt: skip
        status = 0

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, object]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])  # type: ignore[call-overload]

        await app(scope, receive, send)
        return status

    async def main() -> float:
        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        started = asyncio.Event()

        async def lifespan_send(message: dict[str, str]) -> None:
            if message["type"].startswith("lifespan.startup"):
                started.set()

        life = asyncio.create_task(app({"type": "lifespan"}, inbox.get, lifespan_send))
        await inbox.put({"type": "lifespan.startup"})
        await started.wait()
        assert await one() == 200, "the gateway does not answer the bench request"
        for _ in range(2000 // concurrency):  # warm up: pools, caches, prebound metrics
            await asyncio.gather(*(one() for _ in range(concurrency)))
        gc.collect()
        cpu = time.process_time()
        for _ in range(requests // concurrency):
            statuses = await asyncio.gather(*(one() for _ in range(concurrency)))
            assert all(s == 200 for s in statuses), statuses
        spent = time.process_time() - cpu
        await inbox.put({"type": "lifespan.shutdown"})
        await life
        return spent / (requests // concurrency * concurrency) * 1e6

    import uvloop

    print(json.dumps({"us_per_request": uvloop.run(main())}))


def _measure(
    src: Path | None,
    requests: int,
    concurrency: int,
    limits: bool = False,
    otlp: str = "",
    parts: str = "both",
    balancer: str = "",
) -> float:
    """In a subprocess: swarmgate from ``src`` (with limits on: ``limits``; traced to
    ``otlp`` with access logs on, when given), or the minimal proxy when ``src`` is None."""
    path = f"{src}{os.pathsep}{REPO / 'bench'}" if src else str(REPO / "bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")}
    env["PYTHONPATH"] = path
    code = (
        f"import cpu; cpu._child({requests}, {concurrency}, {src is None}, {limits}, {otlp!r},"
        f" {parts!r}, {balancer!r})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{src}: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us_per_request"])


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts every export and reads nothing of it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="", help="a git commit to compare with")
    parser.add_argument("--src", default="", help="another source tree to compare with")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limits", action="store_true", help="this tree with limits on too")
    parser.add_argument(
        "--observed", action="store_true", help="this tree traced at 10%% with access logs too"
    )
    parser.add_argument(
        "--split", action="store_true", help="with --observed: tracing alone, access log alone"
    )
    parser.add_argument(
        "--balancers",
        default="",
        help="comma-separated strategies, each on a two-deployment model (round_robin,...)",
    )
    args = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otlp = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    here = REPO / "src"
    trees: dict[str, tuple[Path | None, bool, str, str, str]] = {
        "this tree": (here, False, "", "", ""),
        "minimal proxy": (None, False, "", "", ""),
    }
    for strategy in filter(None, args.balancers.split(",")):
        trees[f"two deployments, {strategy}"] = (here, False, "", "", strategy)
    if args.limits:
        trees["this tree, limits on"] = (here, True, "", "", "")
    if args.observed:
        trees["this tree, traced+logged"] = (here, False, otlp, "both", "")
        if args.split:
            trees["this tree, traced"] = (here, False, otlp, "tracing", "")
            trees["this tree, access log"] = (here, False, otlp, "access", "")
    if args.baseline:
        trees[f"at {args.baseline}"] = (baseline_tree(args.baseline) / "src", False, "", "", "")
    if args.src:
        trees[args.src] = (Path(args.src), False, "", "", "")
    figures: dict[str, list[float]] = {name: [] for name in trees}
    with running(upstream_service()):
        for round_ in range(args.rounds):
            for name, (src, limits, to, parts, strategy) in trees.items():  # interleaved
                figures[name].append(
                    _measure(
                        src, args.requests, args.concurrency, limits, to, parts or "both", strategy
                    )
                )
                print(f"round {round_ + 1}: {name}: {figures[name][-1]:.1f} µs", flush=True)
    print(f"\nCPU per chat request, {args.requests} requests {args.concurrency} at a time, "
          f"median of {args.rounds}:")  # fmt: skip
    base = statistics.median(figures["this tree"])
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"  {name:24s} {median:7.1f} µs  ({median / base:.2f}x this tree)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
