from __future__ import annotations

import ipaddress
import timeit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmgate.auth.ip import (
    IPBlock,
    IPPolicy,
    Networks,
    client_ip,
    forwarded_client,
    parse_ip,
)
from swarmgate.config import IPProtection
from swarmgate.errors import ConfigError, IPBlocked


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


PROXIES = Networks(["10.0.0.0/8", "fd00::/8"])


# ---- parse_ip and Networks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:5678", "1.2.3.4"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("fe80::1%eth0", "fe80::1"),
        ("", None),
        ("unknown", None),
        ("1.2.3.4:", None),
        ("1.2.3.4:http", None),
        ("1.2.3.256", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("1" * 100, None),
    ],
)
def test_parse_ip(text: str, expected: str | None) -> None:
    addr = parse_ip(text)
    assert (None if addr is None else str(addr)) == expected


def test_networks_membership_v4_and_v6() -> None:
    nets = Networks(["192.168.1.0/24", "10.1.2.3", "2001:db8::/32", "0.0.0.0/0 "])
    assert nets.cidrs == ("192.168.1.0/24", "10.1.2.3/32", "2001:db8::/32", "0.0.0.0/0")
    assert "8.8.8.8" in nets  # 0.0.0.0/0
    assert "2001:db8:ffff::1" in nets
    assert "2001:db9::1" not in nets
    assert "::ffff:192.168.1.7" in nets
    assert "garbage" not in nets
    assert ipaddress.ip_address("2001:db8::5") in nets
    assert 42 not in nets
    v6_only = Networks(["2001:db8::/32"])
    assert "1.2.3.4" not in v6_only
    assert not Networks([])
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP address or CIDR"):
        Networks(["10.0.0.0/33"])


def test_networks_cache_is_bounded() -> None:
    nets = Networks(["10.0.0.0/8"], cache_size=8)
    for i in range(100):
        assert f"10.0.0.{i}" in nets
    assert len(nets._cache) <= 8


ipv4s = st.ip_addresses(v=4)
ipv6s = st.ip_addresses(v=6)


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    addr = draw(st.one_of(ipv4s, ipv6s))
    prefix = draw(st.integers(0, addr.max_prefixlen))
    return ipaddress.ip_network(f"{addr}/{prefix}", strict=False)


@given(st.lists(networks(), max_size=6), st.one_of(ipv4s, ipv6s))
def test_cidr_decisions_agree_with_ipaddress(
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    compiled = Networks([str(n) for n in nets])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr_for_membership: ipaddress.IPv4Address | ipaddress.IPv6Address = addr.ipv4_mapped
    else:
        addr_for_membership = addr
    expected = any(
        n.version == addr_for_membership.version and addr_for_membership in n for n in nets
    )
    assert (str(addr) in compiled) is expected
    assert compiled.contains_address(addr_for_membership) is expected


# ---- client_ip


def test_xff_ignored_without_trusted_proxies() -> None:
    assert client_ip("203.0.113.9", "1.1.1.1", Networks([])) == "203.0.113.9"


def test_xff_from_an_untrusted_peer_is_spoofing() -> None:
    # An attacker connecting directly claims to be someone else (or one of our proxies).
    assert client_ip("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"
    assert client_ip("203.0.113.9", "10.0.0.1", PROXIES) == "203.0.113.9"


def test_xff_through_one_trusted_proxy() -> None:
    assert client_ip("10.0.0.2", "198.51.100.1", PROXIES) == "198.51.100.1"


def test_xff_forged_prefix_is_not_believed() -> None:
    # The client sent "X-Forwarded-For: 1.1.1.1"; our proxy appended the real address.
    assert client_ip("10.0.0.2", "1.1.1.1, 198.51.100.1", PROXIES) == "198.51.100.1"


def test_xff_skips_a_chain_of_trusted_proxies() -> None:
    xff = "1.1.1.1, 198.51.100.1, 10.9.9.9, fd00::7"
    assert client_ip("10.0.0.2", xff, PROXIES) == "198.51.100.1"


def test_xff_all_trusted_gives_the_leftmost() -> None:
    assert client_ip("10.0.0.2", "10.1.1.1, 10.2.2.2", PROXIES) == "10.1.1.1"


@pytest.mark.parametrize(
    "xff", ["garbage", "198.51.100.1, not-an-ip", "1.1.1.1,,10.1.1.1", " , ", "unknown"]
)
def test_xff_malformed_falls_back_to_the_peer(xff: str) -> None:
    assert client_ip("10.0.0.2", xff, PROXIES) == "10.0.0.2"


@pytest.mark.parametrize(
    ("xff", "why"),
    [
        (None, "missing"),
        ("", "missing"),
        ("garbage", "malformed"),
        ("198.51.100.1, not-an-ip", "malformed"),
        (" , ", "malformed"),
        ("unknown", "malformed"),
    ],
)
def test_a_trusted_proxy_without_a_usable_client_address_names_no_client(
    xff: str | None, why: str
) -> None:
    """Not the proxy's own address: failures must not be pinned on the proxy."""
    assert forwarded_client("10.0.0.2", xff, PROXIES) == (None, why)


def test_forwarded_client_agrees_with_client_ip_when_there_is_a_client() -> None:
    assert forwarded_client("10.0.0.2", "1.1.1.1, 198.51.100.1", PROXIES) == ("198.51.100.1", None)
    assert forwarded_client("10.0.0.2", "10.1.1.1, 10.2.2.2", PROXIES) == ("10.1.1.1", None)
    assert forwarded_client("203.0.113.9", "garbage", PROXIES) == ("203.0.113.9", None)
    assert forwarded_client("203.0.113.9", None, PROXIES) == ("203.0.113.9", None)
    assert forwarded_client("10.0.0.2", "garbage", Networks([])) == ("10.0.0.2", None)
    assert forwarded_client(None, None, PROXIES) == ("unknown", None)


@given(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()))
def test_forwarded_client_is_client_ip_or_no_one(peer: str | None, xff: str | None) -> None:
    client, why = forwarded_client(peer, xff, PROXIES)
    if client is None:
        assert why in ("missing", "malformed") and peer in PROXIES
        assert client_ip(peer, xff, PROXIES) == peer
    else:
        assert why is None and client == client_ip(peer, xff, PROXIES)


def test_xff_normalises_ports_brackets_and_mapped_addresses() -> None:
    assert client_ip("10.0.0.2", "198.51.100.1:5555", PROXIES) == "198.51.100.1"
    assert client_ip("10.0.0.2", "[2001:db8::1]:443", PROXIES) == "2001:db8::1"
    assert client_ip("::ffff:10.0.0.2", "::ffff:198.51.100.1", PROXIES) == "198.51.100.1"


def test_xff_reads_a_bounded_number_of_hops() -> None:
    trusted_chain = ", ".join(f"10.0.{i // 250}.{i % 250}" for i in range(10_000))
    assert client_ip("10.0.0.2", "198.51.100.1, " + trusted_chain, PROXIES) == "10.0.0.2"
    five = ", ".join(["10.0.0.1"] * 5)
    assert client_ip("10.0.0.2", "198.51.100.1, " + five, PROXIES) == "198.51.100.1"


def test_no_peer() -> None:
    assert client_ip(None, "198.51.100.1", PROXIES) == "unknown"
    assert client_ip(None, None, Networks([])) == "unknown"


@given(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()))
def test_client_ip_never_raises(peer: str | None, xff: str | None) -> None:
    assert isinstance(client_ip(peer, xff, PROXIES), str)
    assert isinstance(client_ip("10.0.0.1", xff, PROXIES), str)


@given(st.lists(st.one_of(ipv4s, ipv6s).map(str), min_size=1, max_size=8))
def test_client_ip_is_an_entry_or_the_peer(hops: list[str]) -> None:
    got = client_ip("10.0.0.2", ", ".join(hops), PROXIES)
    canon = {str(parse_ip(h)) for h in hops}
    assert got in canon
    untrusted = [h for h in hops if h not in PROXIES]
    if untrusted:
        assert got == str(parse_ip(untrusted[-1]))


# ---- IPPolicy


def policy(clock: FakeClock | None = None, **config: object) -> IPPolicy:
    return IPPolicy(IPProtection.model_validate(config), clock or FakeClock())


def test_unlisted_addresses_pass() -> None:
    p = policy()
    p.check("198.51.100.1")
    p.check("2001:db8::1")
    p.check("unknown")


def test_block_list_v4_and_v6() -> None:
    p = policy(block=["198.51.100.0/24", "2001:db8:bad::/48"])
    p.check("198.51.101.1")
    p.check("2001:db8:beef::1")
    for ip in ("198.51.100.7", "2001:db8:bad::1", "::ffff:198.51.100.8"):
        with pytest.raises(IPBlocked, match="blocked") as info:
            p.check(ip)
        assert info.value.status == 403
        assert info.value.code == "ip_blocked"
        assert "Retry-After" not in info.value.headers
    # The cached refusal keeps refusing.
    with pytest.raises(IPBlocked):
        p.check("198.51.100.7")


def test_allow_list_refuses_everyone_else_and_block_wins() -> None:
    p = policy(allow=["10.0.0.0/8", "fd00::/8"], block=["10.6.6.0/24"])
    p.check("10.1.2.3")
    p.check("fd00::1")
    for ip in ("11.0.0.1", "fe80::1", "unknown", "10.6.6.6"):
        with pytest.raises(IPBlocked):
            p.check(ip)


def test_bad_cidrs_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        policy(allow=["10.0.0.0/8", "ten"], block=["1.2.3.4/40"])
    assert info.value.problems == [
        "auth.ip.allow[1]: 'ten' is not an IP address or CIDR",
        "auth.ip.block[0]: '1.2.3.4/40' is not an IP address or CIDR",
    ]


def test_failures_in_the_window_block_temporarily() -> None:
    clock = FakeClock()
    p = policy(clock, max_failures=3, failure_window=60, block_seconds=300)
    ip = "198.51.100.1"
    p.check(ip)
    assert p.record_failure(ip) is False
    clock.now += 10
    assert p.record_failure(ip) is False
    p.check(ip)
    clock.now += 10
    assert p.record_failure(ip) is True
    with pytest.raises(IPBlocked, match="too many failed attempts") as info:
        p.check(ip)
    assert info.value.headers == {"Retry-After": "300"}
    clock.now += 299.5
    with pytest.raises(IPBlocked) as info:
        p.check(ip)
    assert info.value.headers == {"Retry-After": "1"}
    assert p.record_failure(ip) is False  # already blocked: not a new block
    p.check("198.51.100.2")  # others unaffected
    clock.now += 0.5
    p.check(ip)  # the block has expired


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = FakeClock()
    p = policy(clock, max_failures=3, failure_window=60)
    for _ in range(10):
        assert p.record_failure("198.51.100.1") is False
        clock.now += 31  # at most two failures in any 60 s window
    p.check("198.51.100.1")


def test_success_resets_the_count() -> None:
    p = policy(max_failures=2)
    assert p.record_failure("198.51.100.1") is False
    p.record_success("198.51.100.1")
    assert p.record_failure("198.51.100.1") is False
    assert p.record_failure("198.51.100.1") is True
    p.record_success("198.51.100.1")  # does not lift a block
    with pytest.raises(IPBlocked):
        p.check("198.51.100.1")


def test_admin_blocks_expire_and_can_be_lifted() -> None:
    clock = FakeClock()
    p = policy(clock, block=["192.0.2.0/24"])
    p.check("198.51.100.1")  # cached as allowed
    entry = p.block("198.51.100.77/24", until=clock.now + 60, reason="abuse")
    assert entry.cidr == "198.51.100.0/24" and entry.source == "admin"
    with pytest.raises(IPBlocked) as info:
        p.check("198.51.100.1")  # the cached allow was invalidated
    assert info.value.headers == {"Retry-After": "60"}
    p.block("2001:db8::/32")
    with pytest.raises(IPBlocked) as info:
        p.check("2001:db8::1")
    assert "Retry-After" not in info.value.headers
    assert [(b.cidr, b.source) for b in p.blocked()] == [
        ("192.0.2.0/24", "config"),
        ("198.51.100.0/24", "admin"),
        ("2001:db8::/32", "admin"),
    ]
    clock.now += 60
    p.check("198.51.100.1")
    assert [b.cidr for b in p.blocked()] == ["192.0.2.0/24", "2001:db8::/32"]
    assert p.unblock("2001:db8::0/32") is True
    p.check("2001:db8::1")
    assert p.unblock("2001:db8::/32") is False
    assert p.unblock("192.0.2.0/24") is False  # configured blocks stay
    with pytest.raises(IPBlocked):
        p.check("192.0.2.1")
    with pytest.raises(ValueError):
        p.block("not-a-network")


def test_unblock_lifts_failure_blocks_inside_the_cidr() -> None:
    clock = FakeClock()
    p = policy(clock, max_failures=1)
    assert p.record_failure("198.51.100.1") is True
    assert p.record_failure("2001:db8::1") is True
    listed = {(b.cidr, b.source, b.until) for b in p.blocked()}
    assert listed == {
        ("198.51.100.1/32", "failures", clock.now + 300),
        ("2001:db8::1/128", "failures", clock.now + 300),
    }
    assert p.unblock("198.51.100.0/24") is True
    p.check("198.51.100.1")
    with pytest.raises(IPBlocked):
        p.check("2001:db8::1")


def test_memory_is_bounded() -> None:
    clock = FakeClock()
    p = IPPolicy(IPProtection(max_failures=5), clock, max_tracked=100, max_cached=200)
    for i in range(5000):
        ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        p.check(ip)
        p.record_failure(ip)
    assert len(p._failures) <= 100
    assert len(p._decisions) <= 200
    assert p.record_failure("10.0.0.0") is False  # evicted long ago: counting starts over


def test_the_hot_path_is_one_dict_lookup() -> None:
    p = policy(allow=[f"10.{i}.0.0/16" for i in range(200)], block=["10.0.6.0/24"])
    p.check("10.5.1.1")
    per_call = min(timeit.repeat(lambda: p.check("10.5.1.1"), number=10_000, repeat=3)) / 10_000
    assert per_call < 2e-6, f"check() took {per_call * 1e6:.2f} µs"


def test_a_trusted_proxy_is_never_blocked_for_failures() -> None:
    clock = FakeClock()
    p = policy(clock, trusted_proxies=["10.0.0.0/8", "fd00::/8"], max_failures=2)
    for _ in range(10):
        assert p.record_failure("10.0.0.2") is False
        assert p.record_failure("::ffff:10.0.0.3") is False
        assert p.record_failure("fd00::1") is False
    for ip in ("10.0.0.2", "::ffff:10.0.0.3", "fd00::1"):
        p.check(ip)
    assert p.blocked() == []
    assert p.record_failure("198.51.100.1") is False  # everyone else is counted as before
    assert p.record_failure("198.51.100.1") is True
    with pytest.raises(IPBlocked):
        p.check("198.51.100.1")
    p.block("10.0.0.0/8", reason="an operator may still block a proxy")
    with pytest.raises(IPBlocked):
        p.check("10.0.0.2")


def test_never_block_addresses_are_never_counted() -> None:
    p = policy(max_failures=2, never_block=["10.0.0.0/8", "2001:db8::/32"])
    for _ in range(10):
        assert p.record_failure("10.1.2.3") is False
        assert p.record_failure("2001:db8::7") is False
    p.check("10.1.2.3")
    p.check("2001:db8::7")
    assert p.blocked() == []
    assert p.record_failure("198.51.100.1") is False
    assert p.record_failure("198.51.100.1") is True  # everyone else still is


def test_never_block_does_not_override_an_operator_block() -> None:
    p = policy(never_block=["10.0.0.0/8"])
    p.block("10.0.0.0/24", None, "compromised")
    with pytest.raises(IPBlocked):
        p.check("10.0.0.5")


def test_sync_makes_the_stored_blocks_the_dynamic_ones() -> None:
    clock = FakeClock()
    p = policy(clock)
    p.block("192.0.2.0/24", None, "old")
    p.sync([IPBlock("198.51.100.0/24", clock.now + 60, "new", "admin")])
    p.check("192.0.2.1")  # gone from the store: lifted here
    with pytest.raises(IPBlocked) as info:
        p.check("198.51.100.7")
    assert info.value.headers == {"Retry-After": "60"}
    p.sync([])
    p.check("198.51.100.7")


def test_an_automatic_block_once_stored_is_lifted_by_sync() -> None:
    clock = FakeClock()
    p = policy(clock, max_failures=2, block_seconds=300)
    ip = "198.51.100.9"
    p.record_failure(ip)
    assert p.record_failure(ip) is True
    until = p.failure_block(ip)
    assert until == clock.now + 300
    # Stored: the failure block becomes the stored one (same end, same message).
    p.block(f"{ip}/32", until, "too many failed attempts", source="failures")
    assert p.failure_block(ip) is None
    with pytest.raises(IPBlocked, match="too many failed attempts"):
        p.check(ip)
    assert [b.source for b in p.blocked()] == ["failures"]
    p.sync([])  # deleted from the store (swarmgate ip-blocks delete)
    p.check(ip)


def test_sync_keeps_cached_decisions_when_nothing_changed() -> None:
    p = policy()
    blocks = [IPBlock("192.0.2.0/24", None, "", "admin")]
    p.sync(blocks)
    p.check("198.51.100.1")
    cached = dict(p._decisions)
    p.sync(blocks)
    assert p._decisions == cached and cached
