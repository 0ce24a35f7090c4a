"""The seam to DNS: a ``Resolver`` answers address (A/AAAA) and service (SRV) lookups.

``DnsResolver`` asks real nameservers through dnspython's asyncio resolver, with no cache (every
lookup goes to the nameserver, so that a re-resolution sees a changed record at once; the
period of discovery is the cache). ``MemoryResolver`` is its twin for tests of the logic above.
dnspython's errors are translated here, once, into ``DiscoveryFailed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from swarmgate.errors import DiscoveryFailed


class Resolver(Protocol):
    async def addresses(self, name: str) -> tuple[str, ...]:
        """The name's IPv4 and IPv6 addresses, sorted; ``DiscoveryFailed`` when it has none
        or cannot be resolved."""
        ...

    async def services(self, name: str) -> tuple[tuple[str, int], ...]:
        """The name's SRV records as (target, port), by priority then weight (heaviest
        first) then target; ``DiscoveryFailed`` when it has none or cannot be resolved."""
        ...


class DnsResolver:
    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), timeout: float = 2.0) -> None:
        self.timeout = timeout
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in nameservers]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()  # /etc/resolv.conf
            except dns.resolver.NoResolverConfiguration as exc:
                raise DiscoveryFailed(
                    "no nameserver: /etc/resolv.conf names none; set discovery.nameservers"
                ) from exc
        resolver.cache = None
        self._resolver = resolver

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        try:
            return await self._resolver.resolve(
                name, rdtype, lifetime=self.timeout, search=False, raise_on_no_answer=True
            )
        except dns.resolver.NXDOMAIN as exc:
            raise DiscoveryFailed(f"{name}: no such name") from exc
        except dns.resolver.NoAnswer as exc:
            raise DiscoveryFailed(f"{name}: no {rdtype.name} record") from exc
        except dns.exception.Timeout as exc:
            raise DiscoveryFailed(f"{name}: no answer within {self.timeout:g}s") from exc
        except dns.resolver.NoNameservers as exc:
            raise DiscoveryFailed(f"{name}: every nameserver failed or refused") from exc
        except dns.exception.DNSException as exc:
            raise DiscoveryFailed(f"{name}: {exc}") from exc

    async def addresses(self, name: str) -> tuple[str, ...]:
        found: list[str] = []
        problems = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._query(name, rdtype)
            except DiscoveryFailed as exc:
                problems.append(str(exc))
                continue
            found.extend(r.address for r in answer)
        if not found:
            # One message for both lookups: "no A record" then "no AAAA record" say the same.
            raise DiscoveryFailed(problems[0] if len(set(problems)) == 1 else "; ".join(problems))
        return tuple(sorted(set(found)))

    async def services(self, name: str) -> tuple[tuple[str, int], ...]:
        answer = await self._query(name, dns.rdatatype.SRV)
        records = sorted(
            answer, key=lambda r: (r.priority, -r.weight, r.target.to_text(omit_final_dot=True))
        )
        return tuple((r.target.to_text(omit_final_dot=True), int(r.port)) for r in records)


class MemoryResolver:
    """The twin: records set by the test, and a switch that makes every lookup fail."""

    def __init__(self) -> None:
        self.a: dict[str, tuple[str, ...]] = {}
        self.srv: dict[str, tuple[tuple[str, int], ...]] = {}
        self.failing = False
        self.lookups = 0

    async def addresses(self, name: str) -> tuple[str, ...]:
        self.lookups += 1
        if self.failing:
            raise DiscoveryFailed(f"{name}: no answer within 2s")
        found = self.a.get(name)
        if not found:
            raise DiscoveryFailed(f"{name}: no such name")
        return tuple(sorted(found))

    async def services(self, name: str) -> tuple[tuple[str, int], ...]:
        self.lookups += 1
        if self.failing:
            raise DiscoveryFailed(f"{name}: no answer within 2s")
        found = self.srv.get(name)
        if not found:
            raise DiscoveryFailed(f"{name}: no such name")
        return found
