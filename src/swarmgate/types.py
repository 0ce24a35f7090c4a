"""The bottom layer: ASGI aliases, small frozen value types and Protocols.

Imports nothing from the package, so every other module may import it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

ASGIScope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, Receive, Send], Awaitable[None]]

JSON = dict[str, Any]


class ModelType(enum.StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    IMAGE = "image"
    SPEECH = "speech"  # text to speech: /v1/audio/speech
    TRANSCRIPTION = "transcription"  # speech to text: /v1/audio/transcriptions
    # Before speech and transcription were told apart: a model serving both routes. Kept so
    # that configurations written then stay valid.
    AUDIO = "audio"


class Role(enum.StrEnum):
    """Seed 002's roles; each maps to a default set of scopes (see auth.roles)."""

    GUEST = "guest"
    USER = "user"
    POWER_USER = "power_user"
    ADMIN = "admin"
    SYSTEM = "system"


class ApiScope(enum.StrEnum):
    """Seed 001's scopes, enforced on every route and every model."""

    MODELS_READ = "models:read"
    INFERENCE_TEXT = "inference:text"
    INFERENCE_IMAGE = "inference:image"
    INFERENCE_AUDIO = "inference:audio"
    CLUSTER_READ = "cluster:read"
    CLUSTER_WRITE = "cluster:write"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, once authenticated. Cached in process; never holds a secret."""

    subject: str
    role: Role
    scopes: frozenset[str]
    tier: str = "default"
    models: frozenset[str] | None = None  # None: every model
    key_id: str | None = None
    via: str = "key"  # key | jwt | anonymous
    expires_at: float | None = None
    # The key's own limits over its tier's (``limits.tiers.LimitSet`` fields, as stored).
    limits: tuple[tuple[str, Any], ...] | None = None

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models


class Usage(NamedTuple):
    """Token usage of one answer. A named tuple: made once per answer on the hot path, where a
    frozen dataclass costs ~1 µs to build."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Clock(Protocol):
    def __call__(self) -> float: ...


class Authenticator(Protocol):
    """Turns a request's credentials into a ``Principal`` or raises Unauthorized/IPBlocked."""

    async def authenticate(
        self,
        authorization: str | None,
        peer: str | None,
        forwarded_for: str | None,
        request_id: str | None = None,
    ) -> Principal: ...


class Outcome(enum.StrEnum):
    """How one attempt at a deployment ended: what metrics, logs, and later the circuit
    breakers and outlier detection observe. Classified once, where the attempt ends."""

    OK = "ok"  # a 2xx answer relayed whole
    REFUSED = "refused"  # the upstream's own 4xx, passed through: not the deployment's failure
    UNREACHABLE = "connect"  # the request never reached the deployment: safe to try another
    TIMEOUT = "timeout"  # a first-byte, idle or total bound expired
    SERVER_ERROR = "http_error"  # a 5xx, or a 401/403 about the gateway's own credentials
    PROTOCOL = "protocol"  # an answer in a form the gateway cannot accept
    BROKEN = "stream_broken"  # the stream broke off before its end
    CLIENT_GONE = "client_gone"  # the client left; not the deployment's failure
    THROTTLED = "throttled"  # an upstream 429, retried elsewhere: busy, not broken

    @property
    def is_failure(self) -> bool:
        """Whether the deployment is to blame (what a breaker would count)."""
        return self not in _NOT_FAILURES


_NOT_FAILURES = frozenset({Outcome.OK, Outcome.REFUSED, Outcome.CLIENT_GONE, Outcome.THROTTLED})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a transport sends, and how it keeps connections there (built once per
    deployment). ``keepalive`` must stay below the server's own idle timeout, so that the
    gateway, not the server, closes an idle connection."""

    base_url: str  # scheme://host:port[/prefix], without /v1
    connect: float = 5.0  # seconds to establish a connection
    keepalive: float = 4.0  # seconds an idle pooled connection is kept


class UpstreamResponse(Protocol):
    """A deployment's answer once its head has arrived. ``headers`` looks names up in lower
    case. ``read`` and ``chunks`` raise only errors of ours (``UpstreamBroken``)."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """The one seam to model servers: send a request to an origin, get the head back.

    Knows origins and timeouts, not pools or models. Raises ``UpstreamUnreachable`` when the
    request never reached the server, ``UpstreamError`` for any other failure."""

    async def send(
        self, origin: Origin, path: str, body: bytes, headers: dict[str, str]
    ) -> UpstreamResponse: ...

    async def probe(self, origin: Origin, path: str, headers: dict[str, str]) -> int:
        """A health probe: GET ``path``, read the body, return the status (``UpstreamError``
        when it cannot be had). The caller bounds the wait."""
        ...

    async def close(self) -> None: ...


class CheckKind(enum.IntEnum):
    RATE = 0  # GCRA: ``limit`` per second, ``burst`` at once; ``period`` is the interval
    REQUESTS = 1  # at most ``limit`` requests in any ``period`` seconds
    TOKENS = 2  # at most ``limit`` tokens in any ``period`` seconds (reserved, then settled)
    CONCURRENT = 3  # at most ``limit`` leases held; each expires ``period`` seconds after
    # At most ``limit`` spent in the current UTC day or month (``period``: limits.budget's DAY
    # or MONTH): checked at admission, charged with the request's cost when it settles.
    SPEND = 4
    # A pool's capacity across replicas (Redis only): leases like CONCURRENT, with a line of
    # waiters (limits.capacity) that a freed slot goes to first.
    CAPACITY = 5


class Check(NamedTuple):
    """One limit that applies to a request, on one counter (``key``)."""

    kind: CheckKind
    key: str
    limit: float
    period: float
    burst: int = 1
    name: str = ""  # rpm, tpd, concurrent...: the ``limit`` label of the refusal metric
    scope: str = ""  # key, owner, ip, model, endpoint, global: the ``scope`` label


class Verdict(NamedTuple):
    """What a counter store answered for the checks of one request: all taken or none."""

    refused: int  # the index of the check that refused; -1: every check was charged
    wait: float  # seconds until the refused check would allow it (0 when admitted)
    remaining: tuple[float, ...] = ()  # per check, once charged
    reset: tuple[float, ...] = ()  # per check: seconds until its counter is back to full
    handles: tuple[Any, ...] | None = None  # what the store needs to settle (its own)


class CounterStore(Protocol):
    """The counters of every limit: in process, or in Redis for several replicas.

    ``take`` checks and charges all of ``checks`` at once (one request) or none;
    ``settle`` gives back (or charges more of) its tokens, releases its leases and charges
    its cost to its budgets, without waiting: a store that does I/O queues it;
    ``restore_spend`` sets the budgets' counters it lacks from the ledger, at start."""

    async def take(self, checks: Sequence[Check], tokens: int, lease: str) -> Verdict: ...

    def settle(
        self,
        checks: Sequence[Check],
        verdict: Verdict,
        lease: str,
        reserved: int,
        used: int,
        cost: float = 0.0,
    ) -> None: ...

    async def restore_spend(self, spent: Mapping[str, tuple[float, float]]) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
