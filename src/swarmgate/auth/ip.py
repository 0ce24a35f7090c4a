"""IP protection (seed 002): who is the client, and may that address call us at all.

Two pure, synchronous pieces, both cheap enough for the hot path:

``client_ip`` picks the client address from the socket peer and ``X-Forwarded-For``. The header
is honoured only when the direct peer is a trusted proxy, and it is read from the right:
every proxy appends the address it received the request from, so the rightmost entries were
written by our own proxies and are believable, while everything to the left of the first
untrusted address was written by the client and may be forged. The walk is::

    peer not in trusted_proxies (or no header)  -> peer
    for each entry, right to left:
        malformed                               -> peer (a proxy we trust wrote garbage)
        not in trusted_proxies                  -> that entry: the client
    every entry trusted                         -> the leftmost entry

This is what nginx's ``real_ip_recursive on`` does. Only the last ``MAX_FORWARDED_HOPS``
entries are read, so a huge forged header costs nothing. ``forwarded_client`` is the same walk
without the fallback: when a trusted proxy sends no usable header (missing, empty or malformed)
it names no client and says why, so that failures are not pinned on the proxy.

``IPPolicy`` decides from allow and block lists (CIDRs, IPv4 and IPv6), admin-managed dynamic
blocks, and temporary blocks after repeated failures (a sliding window of ``max_failures`` in
``failure_window`` seconds blocks the address for ``block_seconds``; a trusted proxy's own
address is never counted, as blocking it would lock out every client behind it). Decisions are
cached per
address string, so an address that is neither listed nor failing costs one dict lookup after
its first request. Every table is bounded: the decision cache and the failure tracker evict
their oldest entries.

An address in ``never_block`` (like a trusted proxy) is never counted: the operators' own
networks keep a way in that no run of failures can close.

The policy itself does no I/O. ``auth.blocklist.SharedBlocks`` keeps operator and automatic
blocks in the store (``ip_blocks``) and mirrors them into every replica's policy with ``sync``,
so that ``swarmgate ip-blocks delete`` lifts a block everywhere.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Final, Literal

from swarmgate.config import IPProtection
from swarmgate.errors import ConfigError, IPBlocked
from swarmgate.types import Clock

IPAddress = IPv4Address | IPv6Address
# Why a trusted proxy's request names no client (None: it does, or the peer is no proxy).
Unknown = Literal["missing", "malformed"] | None

MAX_FORWARDED_HOPS: Final = 20
_MAX_ADDRESS_CHARS: Final = 64  # "[v6%zone]:port" fits; anything longer is not an address


def parse_ip(text: str) -> IPAddress | None:
    """Parse one address as proxies write it, or return None.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443``; drops an IPv6
    zone; turns an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``, from dual-stack sockets) into
    the IPv4 address so that one client has one identity.
    """
    text = text.strip()
    if not text or len(text) > _MAX_ADDRESS_CHARS:
        return None
    if text[0] == "[":
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not _is_port_suffix(rest)):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _is_port_suffix(":" + port):
            return None
        text = host
    try:
        addr = ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.scope_id is not None:
            return IPv6Address(int(addr))
    return addr


def _is_port_suffix(text: str) -> bool:
    port = text[1:]
    return text[:1] == ":" and 0 < len(port) <= 5 and port.isascii() and port.isdigit()


class Networks:
    """A precompiled set of CIDRs with a membership test that does not depend on its size.

    Networks are grouped by prefix length; an address is a member when its top ``prefixlen``
    bits are one of the group's network numbers: one shift and one set lookup per distinct
    prefix length. ``address in networks`` on a string also caches the answer (bounded).
    """

    __slots__ = ("_cache", "_cache_size", "_v4", "_v6", "cidrs")

    def __init__(self, cidrs: Iterable[str] = (), *, cache_size: int = 4096) -> None:
        """Raise ``ValueError`` naming the first entry that is not an address or a CIDR."""
        groups: dict[tuple[int, int], set[int]] = {}
        normalised: list[str] = []
        for cidr in cidrs:
            try:
                net = ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
            shift = net.max_prefixlen - net.prefixlen
            groups.setdefault((net.version, shift), set()).add(int(net.network_address) >> shift)
            normalised.append(str(net))
        self.cidrs: tuple[str, ...] = tuple(normalised)
        self._v4 = tuple((s, frozenset(n)) for (v, s), n in sorted(groups.items()) if v == 4)
        self._v6 = tuple((s, frozenset(n)) for (v, s), n in sorted(groups.items()) if v == 6)
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    def __bool__(self) -> bool:
        return bool(self.cidrs)

    def __len__(self) -> int:
        return len(self.cidrs)

    def __repr__(self) -> str:
        return f"Networks({list(self.cidrs)!r})"

    def contains_address(self, addr: IPAddress) -> bool:
        value = int(addr)
        table = self._v4 if addr.version == 4 else self._v6
        return any(value >> shift in nets for shift, nets in table)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return isinstance(address, IPv4Address | IPv6Address) and self.contains_address(address)
        hit = self._cache.get(address)
        if hit is None:
            addr = parse_ip(address)
            hit = addr is not None and self.contains_address(addr)
            if self._cache_size > 0:
                if len(self._cache) >= self._cache_size:
                    del self._cache[next(iter(self._cache))]
                self._cache[address] = hit
        return hit


def client_ip(peer: str | None, x_forwarded_for: str | None, trusted: Networks) -> str:
    """The client's address; see the module docstring for the algorithm.

    ``x_forwarded_for`` is the header's value; several header lines must be joined with ``,``
    in the order received. ``peer`` is returned unchanged (``"unknown"`` when the server has
    no peer, e.g. a Unix socket) unless a trusted proxy vouches for another address.
    """
    client, _ = forwarded_client(peer, x_forwarded_for, trusted)
    return client if client is not None else peer or "unknown"


def forwarded_client(
    peer: str | None, x_forwarded_for: str | None, trusted: Networks
) -> tuple[str | None, Unknown]:
    """``(client, None)`` as ``client_ip`` finds it, or ``(None, why)`` when the peer is a
    trusted proxy whose ``X-Forwarded-For`` is missing, empty or malformed: then the client
    is unknown, and the address we do know is the proxy's, which must not take the blame."""
    if not trusted or peer is None or peer not in trusted:
        return peer or "unknown", None
    if not x_forwarded_for:
        return None, "missing"
    leftmost: IPAddress | None = None
    # rsplit bounds the work: a forged header of 10,000 entries is split once, 20 times.
    for hop in reversed(x_forwarded_for.rsplit(",", MAX_FORWARDED_HOPS)):
        addr = parse_ip(hop)
        if addr is None:
            return None, "malformed"
        if not trusted.contains_address(addr):
            return str(addr), None
        leftmost = addr
    return (str(leftmost), None) if leftmost is not None else (None, "malformed")


@dataclass(frozen=True, slots=True)
class IPBlock:
    """One entry of ``IPPolicy.blocked()``, as the admin API lists it."""

    cidr: str
    until: float | None  # on the policy's clock; None: until removed
    reason: str
    source: Literal["config", "admin", "failures"]


@dataclass(frozen=True, slots=True)
class _Dynamic:
    net: Networks
    until: float | None
    reason: str
    source: Literal["admin", "failures"]


@dataclass(frozen=True, slots=True)
class _Refusal:
    until: float  # math.inf: permanent
    message: str


_ALLOWED: Final = _Refusal(0.0, "")  # a sentinel compared by identity on the hot path
_FAILURES_REASON: Final = "too many failed attempts"
_FAILURES_MESSAGE: Final = f"{_FAILURES_REASON} from your IP address; try again later"
_BLOCKED_MESSAGE: Final = "requests from your IP address are blocked"


class _Failures:
    __slots__ = ("blocked_until", "times")

    def __init__(self, max_failures: int) -> None:
        self.times: deque[float] = deque(maxlen=max_failures)
        self.blocked_until = 0.0


class IPPolicy:
    """Allow/block decisions per client address. Synchronous, no I/O; one per process.

    Precedence: a static block wins over the allow list; an address outside a non-empty allow
    list is refused; dynamic and failure blocks apply to every address, allow-listed or not.
    ``until`` values are on ``clock``'s scale (wall-clock epoch seconds by default, so an
    admin-supplied expiry means what it says).
    """

    def __init__(
        self,
        config: IPProtection,
        clock: Clock = time.time,
        *,
        max_tracked: int = 10_000,
        max_cached: int = 65_536,
    ) -> None:
        problems: list[str] = []
        self._allow = _networks(config.allow, "auth.ip.allow", problems)
        self._block = _networks(config.block, "auth.ip.block", problems)
        self._trusted = _networks(config.trusted_proxies, "auth.ip.trusted_proxies", problems)
        self._exempt = _networks(config.never_block, "auth.ip.never_block", problems)
        if problems:
            raise ConfigError(problems)
        self._config = config
        self._clock = clock
        self._max_tracked = max_tracked
        self._max_cached = max_cached
        self._decisions: dict[str, _Refusal] = {}
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self._dynamic: dict[str, _Dynamic] = {}

    def check(self, ip: str) -> None:
        """Raise ``IPBlocked`` (403) if ``ip`` may not call; a temporary block has Retry-After."""
        decision = self._decisions.get(ip)
        if decision is _ALLOWED:
            return
        now = self._clock()
        if decision is None or decision.until <= now:
            decision = self._decide(ip, now)
            if len(self._decisions) >= self._max_cached:
                del self._decisions[next(iter(self._decisions))]
            self._decisions[ip] = decision
            if decision is _ALLOWED:
                return
        headers = {}
        if decision.until != math.inf:
            headers["Retry-After"] = str(max(1, math.ceil(decision.until - now)))
        raise IPBlocked(decision.message, headers=headers)

    def _decide(self, ip: str, now: float) -> _Refusal:
        addr = parse_ip(ip)
        if addr is not None and self._block.contains_address(addr):
            return _Refusal(math.inf, _BLOCKED_MESSAGE)
        if self._allow and (addr is None or not self._allow.contains_address(addr)):
            return _Refusal(math.inf, "your IP address is not allowed to use this service")
        refusal = _ALLOWED
        if addr is not None:
            for cidr, entry in list(self._dynamic.items()):
                end = math.inf if entry.until is None else entry.until
                if end <= now:
                    del self._dynamic[cidr]
                elif end > refusal.until and entry.net.contains_address(addr):
                    message = _FAILURES_MESSAGE if entry.source == "failures" else _BLOCKED_MESSAGE
                    refusal = _Refusal(end, message)
        failures = self._failures.get(ip)
        if failures is not None and failures.blocked_until > max(now, refusal.until):
            return _Refusal(failures.blocked_until, _FAILURES_MESSAGE)
        return refusal

    def record_failure(self, ip: str) -> bool:
        """Count one failed attempt (e.g. a bad key); True when it starts a temporary block.
        A trusted proxy's address is never counted (its clients are, when it names them), nor
        is one in ``never_block``."""
        if (self._trusted and ip in self._trusted) or (self._exempt and ip in self._exempt):
            return False
        now = self._clock()
        failures = self._failures.get(ip)
        if failures is None:
            if len(self._failures) >= self._max_tracked:
                # Evicting the oldest bounds memory under a flood of distinct addresses; an
                # evicted block still holds through its cached decision until that is evicted.
                self._failures.popitem(last=False)
            failures = self._failures[ip] = _Failures(self._config.max_failures)
        else:
            self._failures.move_to_end(ip)
        if failures.blocked_until > now:
            return False
        cutoff = now - self._config.failure_window
        times = failures.times
        times.append(now)
        while times[0] <= cutoff:
            times.popleft()
        if len(times) < self._config.max_failures:
            return False
        failures.blocked_until = now + self._config.block_seconds
        times.clear()
        self._decisions.pop(ip, None)
        return True

    def failure_block(self, ip: str) -> float | None:
        """When the temporary block of ``ip`` after failures ends, if one is in force."""
        failures = self._failures.get(ip)
        if failures is None or failures.blocked_until <= self._clock():
            return None
        return failures.blocked_until

    def record_success(self, ip: str) -> None:
        """Forget the failures of ``ip`` (a block in force stays in force)."""
        failures = self._failures.get(ip)
        if failures is not None and failures.blocked_until <= self._clock():
            del self._failures[ip]

    def block(
        self,
        cidr: str,
        until: float | None = None,
        reason: str = "",
        source: Literal["admin", "failures"] = "admin",
    ) -> IPBlock:
        """Block an address or CIDR until ``until`` (None: until ``unblock``). A ``failures``
        block is an automatic one now kept in the store: it replaces the in-process failure
        blocks inside it, so that lifting it from the store (``sync``) lifts them too."""
        net = Networks([cidr], cache_size=0)
        key = net.cidrs[0]
        self._dynamic[key] = _Dynamic(net, until, reason, source)
        if source == "failures":
            self._forget_failures(net)
        self._decisions.clear()
        return IPBlock(key, until, reason, source)

    def sync(self, blocks: Iterable[IPBlock]) -> None:
        """Make the dynamic blocks exactly ``blocks`` (the store's): a block gone from the
        store is lifted here. Cached decisions are dropped only if something changed."""
        fresh = {}
        for b in blocks:
            net = Networks([b.cidr], cache_size=0)
            source: Literal["admin", "failures"] = "failures" if b.source == "failures" else "admin"
            fresh[net.cidrs[0]] = _Dynamic(net, b.until, b.reason, source)
        if _views(fresh) != _views(self._dynamic):
            self._dynamic = fresh
            self._decisions.clear()

    def unblock(self, cidr: str) -> bool:
        """Lift a dynamic block of exactly ``cidr`` and failure blocks inside it.

        Blocks from the configuration file stay: change the file to lift them. Returns whether
        anything was lifted.
        """
        net = Networks([cidr], cache_size=0)
        lifted = self._dynamic.pop(net.cidrs[0], None) is not None
        lifted = self._forget_failures(net) or lifted
        self._decisions.clear()
        return lifted

    def _forget_failures(self, net: Networks) -> bool:
        now = self._clock()
        lifted = False
        for ip, failures in list(self._failures.items()):
            if failures.blocked_until > now and ip in net:
                del self._failures[ip]
                lifted = True
        return lifted

    def blocked(self) -> list[IPBlock]:
        """Every block in force: configured, admin-managed, and temporary after failures."""
        now = self._clock()
        out = [IPBlock(cidr, None, "configured", "config") for cidr in self._block.cidrs]
        out.extend(
            IPBlock(cidr, d.until, d.reason, d.source)
            for cidr, d in self._dynamic.items()
            if d.until is None or d.until > now
        )
        for ip, failures in self._failures.items():
            if failures.blocked_until > now:
                cidr = host_cidr(ip) or ip
                out.append(IPBlock(cidr, failures.blocked_until, _FAILURES_REASON, "failures"))
        return out


def host_cidr(ip: str) -> str | None:
    """``1.2.3.4`` → ``1.2.3.4/32`` (how one address is stored and listed as a block)."""
    addr = parse_ip(ip)
    return None if addr is None else f"{addr}/{addr.max_prefixlen}"


def _views(dynamic: dict[str, _Dynamic]) -> dict[str, tuple[float | None, str, str]]:
    return {cidr: (d.until, d.reason, d.source) for cidr, d in dynamic.items()}


def _networks(cidrs: Iterable[str], path: str, problems: list[str]) -> Networks:
    good = []
    for i, cidr in enumerate(cidrs):
        try:
            Networks([cidr], cache_size=0)
        except ValueError as exc:
            problems.append(f"{path}[{i}]: {exc}")
        else:
            good.append(cidr)
    return Networks(good, cache_size=0)
