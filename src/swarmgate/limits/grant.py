"""``Grant``: what one admitted request holds until it finishes: its charges, its token
reservation and its concurrency leases, and the rate-limit headers of its response.

``Accounting.finish`` calls ``settle`` on every exit path, once: leases are released and the
reserved tokens settled to the usage counted (a refused or failed request used none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from swarmgate.types import Check, CheckKind, CounterStore, Usage, Verdict

Headers = list[tuple[bytes, bytes]]


def duration_text(seconds: float) -> str:
    """OpenAI's form of a reset time: ``20ms``, ``1.5s``, ``6m0s``, ``2h3m4s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


def used_tokens(usage: Usage | None, kind: str) -> int:
    if usage is None:
        return 0
    if kind == "input":
        return usage.prompt_tokens
    if kind == "output":
        return usage.completion_tokens
    return usage.prompt_tokens + usage.completion_tokens


class Grant:
    __slots__ = ("checks", "kind", "lease", "reserved", "settled", "store", "tier", "verdict")

    def __init__(
        self,
        store: CounterStore,
        checks: Sequence[Check],
        verdict: Verdict,
        lease: str,
        reserved: int,
        kind: str,
        tier: str,
    ) -> None:
        self.store = store
        self.checks = checks
        self.verdict = verdict
        self.lease = lease
        self.reserved = reserved
        self.kind = kind  # which tokens count: input, output or total
        self.tier = tier
        self.settled = -1  # tokens settled; -1: not yet

    def settle(self, usage: Usage | None, generated: bool = False) -> int:
        """Release the leases and settle the reservation to ``usage``; the tokens settled.
        ``generated``: the answer had begun (a stream cut before its usage was reported, which
        a relay counts as zero): without a usage it keeps its whole reservation, since it may
        have used any of it."""
        if self.settled >= 0:
            return self.settled
        unknown = usage is None or not (usage.prompt_tokens or usage.completion_tokens)
        used = self.reserved if unknown and generated else used_tokens(usage, self.kind)
        self.settled = used
        self.store.settle(self.checks, self.verdict, self.lease, self.reserved, used)
        return used

    def headers(self) -> Headers:
        """OpenAI's ``x-ratelimit-*`` headers: the tightest request limit and token limit."""
        out: Headers = []
        verdict = self.verdict
        best_requests = best_tokens = -1
        for i, check in enumerate(self.checks):
            kind = check.kind
            if kind is CheckKind.TOKENS:
                if best_tokens < 0 or verdict.remaining[i] < verdict.remaining[best_tokens]:
                    best_tokens = i
            elif kind is not CheckKind.CONCURRENT and (
                best_requests < 0 or verdict.remaining[i] < verdict.remaining[best_requests]
            ):
                best_requests = i
        for i, what in ((best_requests, b"requests"), (best_tokens, b"tokens")):
            if i < 0:
                continue
            check = self.checks[i]
            limit = check.burst if check.kind is CheckKind.RATE else check.limit
            out.append((b"x-ratelimit-limit-" + what, b"%d" % limit))
            out.append((b"x-ratelimit-remaining-" + what, b"%d" % verdict.remaining[i]))
            out.append((b"x-ratelimit-reset-" + what, duration_text(verdict.reset[i]).encode()))
        return out
