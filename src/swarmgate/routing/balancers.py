"""Balancers: pure choices among a pool's usable candidates.

``choose(views, request)`` sees a read-only view of each candidate (name, weight, in-flight
count, capacity, prices) and the request's routing facts, and returns an index; it never does
I/O, so it can be tested without an event loop. The candidates are the pool's deployments
that have a free slot and have not been tried for this request (``routing/plan.py``), so a
balancer never sees a full one. ``balancer_for`` builds the one a model's config names;
docs/routing.md says when to use which.

The in-flight counts are the gateway's own, taken and released by leases in the same thread
as the choice: always fresh, so a burst is spread as it arrives. Where loads tie, the pick is
random (in proportion to size), so that gateway replicas, each seeing only its own counts, do
not all send their next request to the same deployment.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from math import ceil
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, assert_never

from swarmgate.routing.hashring import HashRing
from swarmgate.types import Principal

if TYPE_CHECKING:
    from swarmgate.config import Balancing

RelativeTo = Literal["weight", "capacity"]
SessionSource = Literal["header", "user", "key"]


class DeploymentView(Protocol):
    """What a balancer may read of a candidate deployment."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def max_concurrent(self) -> int: ...

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float: ...


class RoutingFacts(NamedTuple):
    """What a balancer may read of the request (more facts come with smarter balancers). A
    named tuple: built for every request, where a frozen dataclass costs ~1 µs."""

    model: str
    stream: bool = False
    # The request's session key: found only for a balancer that asks (``Balancer.session``).
    session: str | None = None


class SessionKey:
    """Where a request's session key comes from: the first of ``sources`` it has, of a
    header, the body's ``user`` field and the caller's API key id (a JWT's subject; callers
    without a key have none)."""

    __slots__ = ("_header", "sources")

    def __init__(self, sources: Sequence[SessionSource], header: str = "X-Session-ID") -> None:
        self.sources = tuple(sources)
        self._header = header.lower().encode("latin-1")  # as ASGI servers give header names

    def of(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        payload: Mapping[str, Any],
        principal: Principal | None,
    ) -> str | None:
        for source in self.sources:
            if source == "header":
                for name, value in headers:
                    if name == self._header and value:
                        return value.decode("latin-1")
            elif source == "user":
                user = payload.get("user")
                if isinstance(user, str) and user:
                    return user
            elif principal is not None and principal.via != "anonymous":
                # Callers without a key share one principal: not a session of theirs.
                return principal.key_id or principal.subject
        return None


class Balancer(Protocol):
    # Set by a balancer that keys on a session: the request path finds the key only then.
    session: SessionKey | None

    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        """Index of the chosen candidate among ``views`` (never empty)."""
        ...


def _size(view: DeploymentView, by_capacity: bool) -> float:
    return view.max_concurrent if by_capacity else view.weight


def _draw(sizes: Sequence[float], point: float, skip: int = -1) -> int:
    """The index whose stretch of the sizes laid end to end (``skip``'s left out) holds
    ``point``."""
    last = skip
    for i, size in enumerate(sizes):
        if i != skip:
            point -= size
            last = i
            if point < 0:
                return i
    return last  # rounding left the point at the very end


def least_loaded(
    views: Sequence[DeploymentView], among: Iterable[int], by_capacity: bool, rng: random.Random
) -> int:
    """Of the candidates at ``among``, the one with the fewest requests in flight for its size
    (weight or capacity); among equals, a random one, in proportion to size."""
    # On the hot path (the default balancer): one pass; a list only when loads tie.
    best = 0
    best_load = float("inf")
    tied: list[int] | None = None
    for i in among:
        view = views[i]
        load = view.in_flight / (view.max_concurrent if by_capacity else view.weight)
        if load < best_load:
            best, best_load, tied = i, load, None
        elif load == best_load:
            if tied is None:
                tied = [best]
            tied.append(i)
    if tied is None:
        return best
    total = 0.0
    for i in tied:
        total += _size(views[i], by_capacity)
    point = rng.random() * total
    for i in tied:
        point -= _size(views[i], by_capacity)
        if point < 0:
            return i
    return tied[-1]  # rounding left the point at the very end


class WeightedRoundRobin:
    """Smooth weighted round robin (nginx's): every candidate gains its weight, the richest is
    chosen and pays the total. Over any run the picks follow the weights, interleaved rather
    than in bursts. Candidates that are busy or excluded for a request simply sit that turn
    out, without losing their place."""

    __slots__ = ("_current", "_weighted")
    session: SessionKey | None = None

    def __init__(self, *, weighted: bool = True) -> None:
        self._current: dict[str, float] = {}
        self._weighted = weighted

    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        if len(views) == 1:
            return 0
        current = self._current
        weighted = self._weighted
        best = 0
        best_value = total = 0.0
        for i, view in enumerate(views):
            weight = view.weight if weighted else 1.0
            value = current.get(view.name, 0.0) + weight
            current[view.name] = value
            total += weight
            if i == 0 or value > best_value:
                best, best_value = i, value
        current[views[best].name] = best_value - total
        return best


class RoundRobin(WeightedRoundRobin):
    """Each candidate in turn, weights ignored (smooth round robin with equal weights, so that
    a candidate sitting a turn out, busy or already tried, keeps its place in the order)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(weighted=False)


class LeastOutstanding:
    """The candidate with the fewest requests in flight for its weight (or its capacity):
    a slow deployment holds its requests longer and so gets fewer new ones."""

    __slots__ = ("_by_capacity", "_random")
    session: SessionKey | None = None

    def __init__(
        self, *, relative_to: RelativeTo = "weight", rng: random.Random | None = None
    ) -> None:
        self._by_capacity = relative_to == "capacity"
        self._random = rng or random.Random()

    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        return least_loaded(views, range(len(views)), self._by_capacity, self._random)


class PowerOfTwo:
    """Two candidates drawn at random (in proportion to size), the less loaded of them taken:
    Mitzenmacher's power of two choices. Nearly least-outstanding's balance, and no herd on
    one deployment when several gateways each see only their own counts."""

    __slots__ = ("_by_capacity", "_random")
    session: SessionKey | None = None

    def __init__(
        self, *, relative_to: RelativeTo = "weight", rng: random.Random | None = None
    ) -> None:
        self._by_capacity = relative_to == "capacity"
        self._random = rng or random.Random()

    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        n = len(views)
        by_capacity = self._by_capacity
        if n <= 2:
            return least_loaded(views, range(n), by_capacity, self._random)
        rng = self._random
        sizes = [_size(view, by_capacity) for view in views]
        first = _draw(sizes, rng.random() * sum(sizes))
        second = _draw(sizes, rng.random() * (sum(sizes) - sizes[first]), skip=first)
        return least_loaded(views, (first, second), by_capacity, rng)


class ConsistentHash:
    """Session affinity: consistent hashing with bounded loads (Mirrokni, Thorup and
    Zadimoghaddam, 2018). A session's requests go to its key's owner on the ring unless that
    deployment already holds more than ``load_factor`` times its share of the requests in
    flight (counting this one); then to the next deployment on the ring that does not. A
    request without a key is balanced by least outstanding."""

    __slots__ = ("_by_capacity", "_fallback", "_ring", "load_factor", "session")

    def __init__(
        self,
        session: SessionKey,
        *,
        load_factor: float = 1.25,
        relative_to: RelativeTo = "weight",
        rng: random.Random | None = None,
    ) -> None:
        if load_factor < 1:
            raise ValueError("load_factor must be at least 1")
        self.session: SessionKey | None = session
        self.load_factor = load_factor
        self._by_capacity = relative_to == "capacity"
        self._fallback = LeastOutstanding(relative_to=relative_to, rng=rng)
        self._ring = HashRing(())

    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        key = request.session
        if key is None:
            return self._fallback.choose(views, request)
        by_capacity = self._by_capacity
        ring = self._ring
        members = ring.members
        position: dict[str, int] = {}
        in_flight = 1  # this request
        total = 0.0
        grown = False
        for i, view in enumerate(views):
            name = view.name
            position[name] = i
            in_flight += view.in_flight
            total += _size(view, by_capacity)
            grown = grown or members.get(name) != view.weight
        if grown:
            # Only when a deployment appears (or its weight changes): a pool's members are
            # fixed, and one that is busy or already tried is simply not among the candidates.
            members = {**members, **{view.name: view.weight for view in views}}
            self._ring = ring = HashRing(members.items())
        share = self.load_factor * in_flight / total
        # The bounds add up to at least every request in flight, this one included: some
        # candidate is always below its own, so the walk ends before the ring does.
        for name in ring.successors(key):
            at = position.get(name)
            if at is not None and views[at].in_flight < ceil(share * _size(views[at], by_capacity)):
                return at
        return self._fallback.choose(views, request)


class CostAware:
    """The cheapest candidate for a typical request of ``prompt_tokens`` in and
    ``completion_tokens`` out, by each deployment's prices; among equally cheap ones, the
    least loaded. The cheapest takes requests until it is full (``max_concurrent``), then
    the next cheapest does."""

    __slots__ = ("_by_capacity", "_random", "completion_tokens", "prompt_tokens")
    session: SessionKey | None = None

    def __init__(
        self,
        *,
        prompt_tokens: int = 1000,
        completion_tokens: int = 250,
        relative_to: RelativeTo = "weight",
        rng: random.Random | None = None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self._by_capacity = relative_to == "capacity"
        self._random = rng or random.Random()

    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        cheapest: list[int] = []
        lowest = float("inf")
        for i, view in enumerate(views):
            price = view.cost(self.prompt_tokens, self.completion_tokens)
            if price < lowest:
                cheapest, lowest = [i], price
            elif price == lowest:
                cheapest.append(i)
        if len(cheapest) == 1:
            return cheapest[0]
        return least_loaded(views, cheapest, self._by_capacity, self._random)


def balancer_for(settings: Balancing, rng: random.Random | None = None) -> Balancer:
    """The balancer a model's ``balancer`` setting names, with its options."""
    relative_to = settings.relative_to
    match settings.strategy:
        case "least_outstanding":
            return LeastOutstanding(relative_to=relative_to, rng=rng)
        case "round_robin":
            return RoundRobin()
        case "weighted_round_robin":
            return WeightedRoundRobin()
        case "power_of_two":
            return PowerOfTwo(relative_to=relative_to, rng=rng)
        case "consistent_hash":
            return ConsistentHash(
                SessionKey(settings.hash_on, settings.header),
                load_factor=settings.load_factor,
                relative_to=relative_to,
                rng=rng,
            )
        case "cost":
            return CostAware(
                prompt_tokens=settings.prompt_tokens,
                completion_tokens=settings.completion_tokens,
                relative_to=relative_to,
                rng=rng,
            )
        case unknown:  # a strategy the config takes and no branch builds: mypy says so
            assert_never(unknown)
