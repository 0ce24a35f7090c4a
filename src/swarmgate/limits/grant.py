"""``Grant``: what one admitted request holds until it finishes: its charges, its token
reservation and its concurrency leases, and the rate-limit headers of its response.

``Accounting.finish`` calls ``settle`` on every exit path, once: leases are released and the
reserved tokens settled to the usage counted (a refused or failed request used none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

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


RESET_VALUES_MAX = 4096
_reset_values: dict[int, bytes] = {}  # a pure function's memo, per whole millisecond


def reset_value(seconds: float) -> bytes:
    """``duration_text`` as header bytes, remembered per millisecond (a response's resets are
    mostly a window's length, so the same few values come back on every request)."""
    whole_ms = math.ceil(seconds * 1000)
    value = _reset_values.get(whole_ms)
    if value is None:
        if len(_reset_values) >= RESET_VALUES_MAX:
            _reset_values.clear()
        value = _reset_values[whole_ms] = duration_text(whole_ms / 1000).encode()
    return value


def used_tokens(usage: Usage | None, kind: str) -> int:
    if usage is None:
        return 0
    if kind == "input":
        return usage.prompt_tokens
    if kind == "output":
        return usage.completion_tokens
    return usage.prompt_tokens + usage.completion_tokens


class Shown(NamedTuple):
    """The checks one kind of ``x-ratelimit-*`` headers may describe (requests or tokens):
    worked out once per plan, so that a response only picks the tightest."""

    indexes: tuple[int, ...]
    limits: tuple[bytes, ...]  # per index: the limit header's value
    names: tuple[bytes, bytes, bytes]  # limit, remaining, reset


def shown_of(checks: Sequence[Check]) -> tuple[Shown, ...]:
    out = []
    for what, kinds in (
        (b"requests", (CheckKind.RATE, CheckKind.REQUESTS)),
        (b"tokens", (CheckKind.TOKENS,)),
    ):
        indexes = tuple(i for i, c in enumerate(checks) if c.kind in kinds)
        if indexes:
            limits = tuple(
                b"%d" % (checks[i].burst if checks[i].kind is CheckKind.RATE else checks[i].limit)
                for i in indexes
            )
            names = (
                b"x-ratelimit-limit-" + what,
                b"x-ratelimit-remaining-" + what,
                b"x-ratelimit-reset-" + what,
            )
            out.append(Shown(indexes, limits, names))
    return tuple(out)


class Grant:
    __slots__ = (
        "checks",
        "kind",
        "lease",
        "reserved",
        "settled",
        "shown",
        "store",
        "tier",
        "verdict",
    )

    def __init__(
        self,
        store: CounterStore,
        checks: Sequence[Check],
        verdict: Verdict,
        lease: str,
        reserved: int,
        kind: str,
        tier: str,
        shown: tuple[Shown, ...] | None = None,
    ) -> None:
        self.store = store
        self.checks = checks
        self.shown = shown_of(checks) if shown is None else shown
        self.verdict = verdict
        self.lease = lease
        self.reserved = reserved
        self.kind = kind  # which tokens count: input, output or total
        self.tier = tier
        self.settled = -1  # tokens settled; -1: not yet

    def settle(self, usage: Usage | None, generated: bool = False, cost: float = 0.0) -> int:
        """Release the leases, settle the reservation to ``usage`` and charge ``cost`` to the
        budgets; the tokens settled. ``generated``: the answer had begun (a stream cut before
        its usage was reported, which a relay counts as zero): without a usage it keeps its
        whole reservation, since it may have used any of it."""
        if self.settled >= 0:
            return self.settled
        if usage is None or not (usage.prompt_tokens or usage.completion_tokens):
            used = self.reserved if generated else 0
        else:  # used_tokens, inline
            kind = self.kind
            if kind == "input":
                used = usage.prompt_tokens
            elif kind == "output":
                used = usage.completion_tokens
            else:
                used = usage.prompt_tokens + usage.completion_tokens
        self.settled = used
        self.store.settle(self.checks, self.verdict, self.lease, self.reserved, used, cost)
        return used

    def headers(self) -> Headers:
        """OpenAI's ``x-ratelimit-*`` headers: the tightest request limit and token limit."""
        out: Headers = []
        remaining, resets = self.verdict.remaining, self.verdict.reset
        values = _reset_values
        for indexes, limits, (limit_name, remaining_name, reset_name) in self.shown:
            at = 0
            if len(indexes) > 1:
                left = [remaining[i] for i in indexes]
                at = left.index(min(left))
            i = indexes[at]
            reset = values.get(math.ceil(resets[i] * 1000))  # reset_value, inline when known
            out += (
                (limit_name, limits[at]),
                (remaining_name, b"%d" % remaining[i]),
                (reset_name, reset if reset is not None else reset_value(resets[i])),
            )
        return out
