"""The chaos scenario, long form: issue 14's measurement (40 clients, 20 s per fault).

Under steady load from OpenAI SDK clients on a two-replica simulated model, replica ``a`` is
killed, restarted, hung (SIGSTOP) and continued, made to answer 500s, and repaired; each phase
lasts ``--phase`` seconds. Prints one line per phase (requests, throughput, failures, which
replica served) and how long each restored replica took to serve again; exits 1 if any
non-streamed request failed. The bounded form runs in CI: ``tests/chaos/test_chaos.py``.

    .venv/bin/python bench/chaos.py [--clients 40] [--phase 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.chaos.scenario import (  # noqa: E402  (the repository's root is on the path first)
    Load,
    Replica,
    gateway_config,
    metric,
    phase,
)
from tests.plugins.processes import Processes  # noqa: E402


def _readmitted(load: Load, what: str) -> str:
    seconds = load.first_served_by("a", time.monotonic(), 60.0)
    return (
        f"  a {what}: serving again after {seconds:.2f} s"
        if seconds is not None
        else (f"  a {what}: NOT serving again within 60 s")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--phase", type=float, default=20.0, help="seconds of each fault")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="swarmgate-chaos-") as tmp:
        root = Path(tmp)
        processes = Processes(root / "gateways")
        processes.root.mkdir()
        a, b = Replica(root, "a"), Replica(root, "b")
        a.start()
        b.start()
        gw = processes.gateway(gateway_config([a, b]))
        load = Load(gw, args.clients)
        lines, phases = [], []
        load.start()
        try:
            time.sleep(2.0)

            def restart() -> None:
                a.start()
                lines.append(_readmitted(load, "restarted"))

            def resume() -> None:
                a.resume()
                lines.append(_readmitted(load, "continued"))

            def erring() -> None:
                a.kill()
                a.start({"error_rate": 1.0, "error_status": 500})

            def repair() -> None:
                a.kill()
                a.start()
                lines.append(_readmitted(load, "repaired"))

            steps: list[tuple[str, Callable[[], None] | None, Callable[[], None] | None]] = [
                ("baseline", None, None),
                ("killed", a.kill, restart),
                ("hung", a.hang, resume),
                ("500s", erring, repair),
            ]
            for name, fault, restore in steps:
                if fault is not None:
                    fault()
                start = time.monotonic()
                time.sleep(args.phase)
                phases.append(phase(load, name, start, time.monotonic()))
                if restore is not None:
                    restore()
        finally:
            load.stop()
            opens = metric(gw, "gateway_circuit_opens_total", model="m", deployment="a")
            processes.stop_all()
            a.stop()
            b.stop()
    print(f"{args.clients} clients, {args.phase:g} s per phase")
    for p in phases:
        print(p.row())
        for error in p.errors:
            print("    ", error)
    print(*lines, sep="\n")
    print(f"  a's circuit opened {opens:g} times")
    return 1 if any(p.failures for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
