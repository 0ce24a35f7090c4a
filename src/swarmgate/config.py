"""YAML + ``SWARMGATE_*`` environment → frozen, validated settings. Parsed once, at the edge.

This is the only module that reads ``os.environ``. Environment overrides use ``__`` to walk
into sections (``SWARMGATE_SERVER__PORT=9000``, ``SWARMGATE_AUTH__SECRET=...``); values are
read as YAML scalars, so ``true``, ``42`` and ``[a, b]`` mean what they look like.
Deployment API keys are never written in the file: ``api_key_env`` names the variable.

Relative paths (a SQLite store's file, the generated server secret, the audit spool) are
resolved here, once, against the directory of the configuration file (the working directory
only when there is no file), so that the gateway, its workers and the CLI agree on them
whatever directory they run in.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from swarmgate import profiles, seedconfig
from swarmgate.errors import ConfigError
from swarmgate.limits.tiers import Limits
from swarmgate.routing import policy
from swarmgate.routing.policy import ModelRouting, Transform
from swarmgate.seedconfig import Translation
from swarmgate.types import ModelType

ENV_PREFIX = "SWARMGATE_"
# Secrets and names are taken from the environment verbatim, never read as YAML
# ("ab #c" is not "ab", "0123" is not 83).
RAW_STRING_FIELDS = frozenset(
    {
        "secret",
        "secret_file",
        "admin_key",
        "hs256_secret",
        "url",
        "spool_path",
        "issuer",
        "audience",
        "cert_file",
        "key_file",
    }
)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not a URL")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError("not a URL") from exc
    return value.rstrip("/")


def _base_url(value: str) -> str:
    """A deployment's base URL: ``http://host:8000`` (a trailing ``/v1``, as OpenAI-style base
    URLs are often written, is dropped: the gateway appends ``/v1/...`` itself)."""
    return _http_url(value).removesuffix("/v1")


def _secure_url(value: str) -> str:
    """Keys that sign tokens must not travel in clear text, except on this machine."""
    url = _http_url(value)
    parts = urlsplit(url)
    if parts.scheme != "https" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise ValueError("must be an https:// URL (plain http only on localhost)")
    return url


HttpUrl = Annotated[str, AfterValidator(_http_url)]
BaseUrl = Annotated[str, AfterValidator(_base_url)]
SecureUrl = Annotated[str, AfterValidator(_secure_url)]
Seconds = Annotated[float, Field(gt=0)]
# The longest lifetime an operator may give a key, a rotation grace or an IP block. Longer is
# a typo (``99999999999d``), and "forever" is said by giving none.
MAX_DURATION = 10 * 365 * 86400.0
Lifetime = Annotated[float, Field(gt=0, le=MAX_DURATION)]


def _duration_value(value: Any) -> Any:
    """``10s``, ``2m`` or a number of seconds."""
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[float, BeforeValidator(_duration_value), Field(gt=0, le=86400)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Timeouts(Frozen):
    """Every wait has a bound. ``first_byte`` is the time to the first response byte
    (time to first token when streaming); ``idle`` the longest gap between two chunks."""

    connect: Seconds = 5.0
    first_byte: Seconds = 60.0
    idle: Seconds = 30.0
    total: Seconds = 600.0
    # A non-streamed answer's first byte comes when all of it is generated: bounded by
    # ``total`` unless this is set (docs/resilience.md: hung deployments).
    unary_first_byte: Seconds | None = None


class CircuitBreaker(Frozen):
    """A deployment's circuit (routing/breaker.py), seed 004's defaults: open after
    ``threshold`` consecutive failed attempts, for ``open_seconds``; then half-open, letting
    ``half_open_requests`` trial requests through at once: one success closes it, one failure
    opens it again."""

    enabled: bool = True
    threshold: Annotated[int, Field(ge=1, le=1000)] = 5
    open_seconds: Duration = 60.0
    half_open_requests: Annotated[int, Field(ge=1, le=100)] = 1


class HealthCheck(Frozen):
    """Active probes of a deployment (routing/watch.py), seed 003's defaults: a GET of
    ``path`` every ``interval`` seconds, bounded by ``timeout``; down after
    ``unhealthy_threshold`` failed probes in a row, up again after ``healthy_threshold``
    good ones. A good probe is any answer below 500 (a server without that path still
    answers; a 503 while a model loads does not), or only a 2xx with ``expect_2xx``. While
    down, or after a failed probe, it is probed every ``unhealthy_interval`` seconds: a hung
    deployment is found within ``interval`` plus ``unhealthy_threshold - 1`` of those, a
    recovered one is back within one ``interval``."""

    enabled: bool = True
    path: str = "/health"
    interval: Annotated[float, Field(gt=0, le=86400)] = 30.0
    unhealthy_interval: Annotated[float, Field(gt=0, le=86400)] = 5.0
    timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0
    healthy_threshold: Annotated[int, Field(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    expect_2xx: bool = False

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in " ?#"):
            raise ValueError("must be a path such as /health or /v1/models")
        return value

    @model_validator(mode="after")
    def _timeout_fits(self) -> HealthCheck:
        for name in ("interval", "unhealthy_interval"):
            if self.timeout > getattr(self, name):
                raise ValueError(
                    f"timeout ({self.timeout:g}s) must not exceed {name} ({getattr(self, name):g}s)"
                )
        return self


class OutlierDetection(Frozen):
    """Passive outlier detection from live traffic (routing/outliers.py), after Envoy's: every
    ``interval`` seconds a deployment with ``consecutive_failures`` failed attempts in a row, or
    at least ``min_requests`` attempts of which ``failure_rate`` or more failed, is ejected for
    ``base_ejection_seconds`` times the number of times it has been ejected (at most
    ``max_ejection_seconds``); never more than ``max_ejection_percent`` of a model's
    deployments at once (but one, in a pool of two or more)."""

    enabled: bool = True
    interval: Annotated[float, Field(gt=0, le=3600)] = 10.0
    consecutive_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    min_requests: Annotated[int, Field(ge=1)] = 10
    base_ejection_seconds: Annotated[float, Field(gt=0, le=86400)] = 30.0
    max_ejection_seconds: Annotated[float, Field(gt=0, le=86400)] = 300.0
    max_ejection_percent: Annotated[float, Field(ge=0, le=100)] = 50.0

    @model_validator(mode="after")
    def _bounds(self) -> OutlierDetection:
        if self.max_ejection_seconds < self.base_ejection_seconds:
            raise ValueError("max_ejection_seconds must be at least base_ejection_seconds")
        return self


class Retry(Frozen):
    """Retries on another deployment before the first byte reached the client (connect
    errors, 5xx, upstream 429, timeouts): at most ``max_attempts`` attempts in all, waiting a
    jittered backoff between them (from ``backoff_base`` seconds, doubling, at most
    ``backoff_max``), under a retry budget: retries in progress at most ``budget_percent`` of
    the model's requests in flight, with a floor of ``min_concurrent_retries`` (Envoy's)."""

    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    backoff_base: Annotated[float, Field(ge=0, le=10)] = 0.025
    backoff_max: Annotated[float, Field(ge=0, le=60)] = 0.25
    budget_percent: Annotated[float, Field(ge=0, le=100)] = 20.0
    min_concurrent_retries: Annotated[int, Field(ge=0)] = 3

    @model_validator(mode="after")
    def _bounds(self) -> Retry:
        if self.backoff_max < self.backoff_base:
            raise ValueError("backoff_max must be at least backoff_base")
        return self


class Fallback(Frozen):
    """What a client gets when every deployment of a model is down (circuit open, ejected or
    failing its probes), seed 003's fallback response: ``status`` (503), and ``body`` (any
    JSON object) instead of the OpenAI error body; ``retry_after`` seconds, if set, go out as
    ``Retry-After``."""

    status: Annotated[int, Field(ge=400, le=599)] = 503
    message: str = "every deployment of the model is unavailable; try again later"
    body: dict[str, Any] | None = None
    retry_after: Annotated[int, Field(ge=0, le=86400)] | None = None


DNS_NAME = re.compile(
    r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?"
)


def _dns_name(value: str) -> str:
    if not DNS_NAME.fullmatch(value):
        raise ValueError("not a DNS name")
    return value.rstrip(".")


DnsName = Annotated[str, AfterValidator(_dns_name)]


class Discover(Frozen):
    """A deployment found in DNS (routing/discovery.py), re-resolved every ``interval``:
    ``dns`` names A/AAAA records (a Kubernetes headless service), each address a deployment
    on ``port``; ``srv`` names SRV records, each target (resolved to its addresses) a
    deployment on the record's port. At most ``max_addresses`` of them."""

    dns: DnsName | None = None
    srv: DnsName | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    scheme: Literal["http", "https"] = "http"
    interval: Duration = 10.0
    max_addresses: Annotated[int, Field(ge=1, le=1024)] = 64

    @model_validator(mode="after")
    def _one_source(self) -> Discover:
        if (self.dns is None) == (self.srv is None):
            raise ValueError("give dns (A/AAAA records) or srv (SRV records), one of them")
        if self.dns is not None and self.port is None:
            raise ValueError("port: required with dns (A/AAAA records carry no port)")
        if self.srv is not None and self.port is not None:
            raise ValueError("port: not with srv (the SRV records give each port)")
        return self


NO_URL = ()  # what stands for a url missing with no discover either (see Deployment)


def _url_given(value: Any) -> Any:
    if value == NO_URL:
        raise ValueError("required (or discover, to find the servers in DNS)")
    return value


class Deployment(Frozen):
    # One server (``url``) or those DNS names (``discover``): one of the two.
    url: Annotated[BaseUrl | None, BeforeValidator(_url_given)] = None
    discover: Discover | None = None
    model: str | None = None  # the name the upstream knows the model by; default: the model id
    api_key_env: str | None = None
    weight: Annotated[float, Field(gt=0)] = 1.0
    max_concurrent: Annotated[int, Field(ge=1)] = 100
    # The depth of its own queue, as scraped from its /metrics (requests waiting inside it,
    # other clients' too), at which it counts as full even below max_concurrent; None: the
    # model's ``max_waiting`` (None there too: its queue is not looked at).
    max_waiting: Annotated[int, Field(ge=1)] | None = None
    input_cost_per_1k: Annotated[float, Field(ge=0)] = 0.0
    output_cost_per_1k: Annotated[float, Field(ge=0)] = 0.0
    # Charged once for each request the deployment answers (seed 004's cost_per_request), on
    # top of the per-token prices.
    cost_per_request: Annotated[float, Field(ge=0)] = 0.0
    timeouts: Timeouts | None = None
    # Where its Prometheus metrics are read, when ``scrape.interval`` is set; null: not read.
    metrics_path: Annotated[str, Field(pattern=r"^/")] | None = "/metrics"
    # Seconds an idle connection to it is kept open: below the server's own keep-alive timeout
    # (5 s for uvicorn, which serves vLLM and SGLang, and for llama.cpp's server).
    keepalive: Seconds = 4.0
    name: str | None = None  # shown in responses and metrics; default: host:port
    # Per deployment, over the model's.
    circuit_breaker: CircuitBreaker | None = None
    health_check: HealthCheck | None = None
    # Resolved from api_key_env by the loader; never written in YAML.
    api_key: str | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _url_or_discover(cls, value: Any) -> Any:
        # A missing url is reported at its place, with the other fields' problems (an
        # "after" check would wait for those to be fixed first).
        if isinstance(value, dict) and value.get("url") is None and "discover" not in value:
            return {**value, "url": NO_URL}
        return value

    @model_validator(mode="after")
    def _not_both(self) -> Deployment:
        if self.url is not None and self.discover is not None:
            raise ValueError("url and discover: give one of them, not both")
        return self


# The options each strategy takes besides ``strategy`` (docs/routing.md).
STRATEGY_OPTIONS: dict[str, frozenset[str]] = {
    "least_outstanding": frozenset({"relative_to"}),
    "round_robin": frozenset(),
    "weighted_round_robin": frozenset(),
    "power_of_two": frozenset({"relative_to"}),
    "consistent_hash": frozenset({"relative_to", "hash_on", "header", "load_factor"}),
    "cost": frozenset({"relative_to", "prompt_tokens", "completion_tokens"}),
    "resource_aware": frozenset({"options"}),
    "prefix_aware": frozenset({"options"}),
}
# The options of the balancers that read scraped metrics (docs/routing-aware.md), given as
# ``balancer: {strategy: prefix_aware, options: {block_bytes: 512}}``.
RESOURCE_OPTIONS = frozenset({"half_life", "stale_after", "kv_requests"})
AWARE_OPTIONS: dict[str, frozenset[str]] = {
    "resource_aware": RESOURCE_OPTIONS,
    "prefix_aware": RESOURCE_OPTIONS | {"block_bytes", "load_factor", "slack", "index_blocks"},
}
STRATEGY_ALIASES = {"least_connections": "least_outstanding", "least_requests": "least_outstanding"}
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 §5.6.2)


class Balancing(Frozen):
    """How a model picks among its deployments: a strategy and that strategy's options.

    Written as a name (``balancer: round_robin``) or a mapping (``balancer: {strategy:
    consistent_hash, hash_on: user}``); an option another strategy takes is refused."""

    strategy: Literal[
        "least_outstanding",
        "round_robin",
        "weighted_round_robin",
        "power_of_two",
        "consistent_hash",
        "cost",
        "resource_aware",
        "prefix_aware",
    ] = "least_outstanding"
    # What a deployment's in-flight count is measured against: its weight or max_concurrent.
    relative_to: Literal["weight", "capacity"] = "weight"
    # Where a request's session key comes from, the first present one winning: a header, the
    # body's ``user`` field, the caller's API key (or JWT subject).
    hash_on: tuple[Literal["header", "user", "key"], ...] = ("header",)
    header: str = "X-Session-ID"
    # A deployment takes a key's requests while it holds at most this many times its share
    # of the in-flight requests (Mirrokni, Thorup and Zadimoghaddam's bound).
    load_factor: Annotated[float, Field(ge=1.0, le=100.0)] = 1.25
    # The request whose price ranks the deployments: a typical one of this model's.
    prompt_tokens: Annotated[int, Field(ge=0)] = 1000
    completion_tokens: Annotated[int, Field(ge=0)] = 250
    # The resource- and prefix-aware balancers' own options (AWARE_OPTIONS).
    options: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {"strategy": value}
        if isinstance(value, dict) and isinstance(value.get("strategy"), str):
            name = value["strategy"].strip().lower().replace("-", "_")
            value = {**value, "strategy": STRATEGY_ALIASES.get(name, name)}
        return value

    @field_validator("hash_on", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list | tuple) and not value:
            raise ValueError("name at least one of header, user, key")
        return value

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not HEADER_NAME.fullmatch(value):
            raise ValueError("not a header name")
        return value

    @model_validator(mode="after")
    def _options_fit(self) -> Balancing:
        aware = AWARE_OPTIONS.get(self.strategy, frozenset())
        unknown = sorted(set(self.options) - aware)
        if unknown:
            takes = ", ".join(sorted(aware)) or "none"
            raise ValueError(
                f"options {', '.join(unknown)}: not options of strategy {self.strategy}"
                f" (it takes {takes})"
            )
        allowed = STRATEGY_OPTIONS[self.strategy]
        stray = sorted(self.model_fields_set - allowed - {"strategy"})
        if stray:
            takes = ", ".join(sorted(allowed)) or "no options"
            raise ValueError(
                "\n".join(
                    f"{name!r} is not an option of strategy {self.strategy} (it takes {takes})"
                    for name in stray
                )
            )
        return self


# A model's balancer when its config names none (``Settings.balancing_of``).
SCRAPED_DEFAULT = Balancing(strategy="resource_aware")
UNSCRAPED_DEFAULT = Balancing()


class Model(Frozen):
    type: ModelType = ModelType.CHAT
    capabilities: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    description: str = ""
    owned_by: str = "swarmgate"
    # How a request picks one of the deployments (docs/routing.md). Left out (None): chosen
    # when the pools are built, by ``Settings.balancing_of``.
    balancer: Balancing | None = None
    # Model routing (docs/model-routing.md): the longest prompt it takes, in tokens (a longer
    # one goes to the first fallback that takes it); the models tried, in order, when all its
    # deployments are busy or down; the edits made to its requests and answers.
    context_window: Annotated[int, Field(ge=1)] | None = None
    fallbacks: tuple[str, ...] = ()
    transform: Transform | None = None
    # When every deployment is at max_concurrent: how long a request may wait for a slot, and
    # how many of one tier may wait at once (past either: 503). 0: refuse at once. A tier's
    # own bounds in ``limits.queue`` take precedence.
    queue_timeout: Annotated[float, Field(ge=0)] = 0.0
    queue_size: Annotated[int, Field(ge=0)] = 100
    # Its deployments' ``max_waiting`` unless they set their own (docs/limits.md).
    max_waiting: Annotated[int, Field(ge=1)] | None = None
    # Resilience (docs/resilience.md); a deployment may override the first two.
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    health_check: HealthCheck = HealthCheck()
    outlier_detection: OutlierDetection = OutlierDetection()
    retry: Retry = Retry()
    fallback: Fallback = Fallback()
    # Seconds between SSE comments sent while a stream waits for its first chunk (a long
    # prefill behind a load balancer's idle timeout); None: off. Once one went out, a
    # failure is an SSE error event, not an HTTP status, and no retry (docs/resilience.md).
    stream_keepalive: Annotated[float, Field(gt=0, le=3600)] | None = None
    deployments: tuple[Deployment, ...]

    @field_validator("deployments")
    @classmethod
    def _at_least_one(cls, value: tuple[Deployment, ...]) -> tuple[Deployment, ...]:
        # A validator rather than min_length: a bad deployment must be one problem, not two.
        if not value:
            raise ValueError("at least one deployment is required")
        return value


# TLS 1.2 suites by their IANA names (seed 003 writes them so) → OpenSSL's names. Only ECDHE
# key exchange with an AEAD cipher: forward secrecy, no CBC. TLS 1.3's suites are all AEAD and
# are not configurable here. (tests/test_tls.py keeps this in step with the servers.)
TLS12_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
# Seed 003 leaves the hash off the ChaCha20 suites' names.
TLS12_ALIASES = {
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}


class TLS(Frozen):
    """HTTPS on the gateway's own port (docs/operations.md): a PEM certificate chain and its
    key, TLS ``min_version`` or newer. ``ciphers`` narrows TLS 1.2's suites (IANA names, seed
    003's list for one); uvicorn honours it, granian (rustls) has a fixed set and refuses a
    list. With ``watch`` the files are looked at every ``watch_interval`` seconds and a changed,
    valid pair is served to new connections without a restart (a certificate rotation)."""

    cert_file: str
    key_file: str
    min_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: tuple[str, ...] = ()
    watch: bool = True
    watch_interval: Annotated[float, Field(gt=0, le=3600)] = 10.0

    @field_validator("ciphers")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(TLS12_ALIASES.get(n.strip().upper(), n.strip().upper()) for n in value)
        unknown = [n for n in names if n not in TLS12_SUITES]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not a TLS 1.2 ECDHE AEAD suite (one of "
                f"{', '.join(TLS12_SUITES)})"
            )
        return names


class Server(Frozen):
    name: str = "swarmgate"  # this gateway's name in /health and / (seed 004's service.name)
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1)] = 1
    server: Literal["uvicorn", "granian"] = "uvicorn"
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    # multipart/form-data uploads (audio to transcribe): OpenAI's own limit is 25 MB.
    max_upload_bytes: Annotated[int, Field(ge=1024)] = 25 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    shutdown_grace: Seconds = 30.0
    access_log: bool = False
    # Bounds on clients, so that idle or slow connections cannot exhaust the process: the time
    # to send a request's head (from the connection or the head's first byte), the longest
    # pause in a body, the time a kept-alive connection may wait for its next request, and
    # the connections held open at once (past it a new one gets a 503 and is closed).
    header_timeout: Seconds = 10.0
    body_timeout: Seconds = 30.0
    keepalive_timeout: Seconds = 5.0
    max_connections: Annotated[int, Field(ge=1)] = 10000
    tls: TLS | None = None  # None: plain HTTP (TLS ends at a proxy in front, if anywhere)

    @model_validator(mode="after")
    def _tls_fits_the_server(self) -> Server:
        if self.tls is not None and self.tls.ciphers and self.server == "granian":
            raise ValueError(
                "tls.ciphers: granian (rustls) serves a fixed set of suites and takes no list "
                "(TLS 1.2: ECDHE with AES-GCM or ChaCha20-Poly1305, which includes seed 003's); "
                "remove ciphers, or serve with uvicorn"
            )
        return self


class Monitoring(Frozen):
    # Distinct callers seen within this many seconds are gateway_active_users.
    active_users_window: Seconds = 300.0
    # Seconds between the background pings of the database and Redis that /health reports.
    health_interval: Seconds = 10.0
    # Seconds between two reads of the fleet's run-time changes (workers added, drained or
    # removed through the API) from the store: the fallback when a replica misses their event.
    fleet_sync_interval: Seconds = 5.0


class Tracing(Frozen):
    """OpenTelemetry spans of the inference requests, exported over OTLP (docs/observability.md).

    A request is sampled once, when it arrives: by the client's ``traceparent`` sampled flag
    when it sent one (``parent_based``), else by a random draw against ``sampling``. Only a
    sampled request's spans are built, after it has finished, from the times it recorded."""

    enabled: bool = False
    sampling: Annotated[float, Field(ge=0, le=1)] = 0.1  # seed 003's probabilistic 0.1
    parent_based: bool = True  # a client's traceparent decides for its request
    protocol: Literal["http", "grpc"] = "http"
    # OTLP/HTTP: the traces URL (Jaeger and the collector: :4318/v1/traces); gRPC: host:port
    # URL (:4317). None: the protocol's local default.
    endpoint: HttpUrl | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    insecure: bool = True  # gRPC without TLS (a collector beside the gateway)
    timeout: Seconds = 10.0
    service_name: str | None = None  # default: server.name
    export_interval: Seconds = 2.0  # the batch processor's delay between exports
    max_queue: Annotated[int, Field(ge=1)] = 2048  # spans waiting for export; more are dropped
    max_batch: Annotated[int, Field(ge=1)] = 512

    @property
    def target(self) -> str:
        if self.endpoint is not None:
            return self.endpoint
        if self.protocol == "grpc":
            return "http://localhost:4317"
        return "http://localhost:4318/v1/traces"


class AccessLog(Frozen):
    """One line per inference request, written by a background thread (never on the request's
    path): queued on the request's finish, rendered and written in batches."""

    enabled: bool = False
    format: Literal["json", "console"] = "json"
    # The fraction of answered (< 400) requests logged; refused and failed ones always are.
    sample: Annotated[float, Field(ge=0, le=1)] = 1.0
    path: str | None = None  # a file to append to; None: standard error
    flush_interval: Annotated[float, Field(gt=0, le=60)] = 0.2
    max_queue: Annotated[int, Field(ge=1)] = 100_000  # lines waiting; more are dropped, counted


class Logging(Frozen):
    """The gateway's own log lines (``text``: the default, ``json``: one object a line,
    ``console``: short and readable, for the demo) and the access log."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json", "console"] = "text"
    access: AccessLog = AccessLog()


class Store(Frozen):
    """The SQL store. On PostgreSQL each process keeps a pool of ``pool_size`` connections,
    opens up to ``max_overflow`` more under load, and fails a query that waited
    ``pool_timeout`` seconds for one (seed 001 gives 20 / 30 / 30 s; docs/operations.md).

    ``prepared_statements``: psycopg prepares a query on the server after it ran five times
    on a connection. Behind pgbouncer in transaction pooling mode (before 1.21, or with
    ``max_prepared_statements = 0``) the next transaction may run on another server
    connection, where that statement is missing or another client's holds its name: off by
    default, since the gateway's queries are few and simple and gain little from it."""

    url: str = "sqlite+aiosqlite:///swarmgate.db"
    migrate_on_start: bool = True
    pool_size: Annotated[int, Field(ge=1, le=1000)] = 10
    max_overflow: Annotated[int, Field(ge=0, le=1000)] = 10
    pool_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 5.0
    prepared_statements: bool = False


class Redis(Frozen):
    url: str | None = None
    # The longest an admin change waits for its event to reach Redis; past it the event is
    # retried in the background (replicas' caches expire within ``auth.cache_ttl`` anyway).
    publish_timeout: Seconds = 0.25
    # Replicas share where prompts were served, for prefix-aware balancers (hints only).
    share_placements: bool = True


class JWTClaims(Frozen):
    """Where to find role, scopes and tier in a token's claims."""

    subject: str = "sub"
    role: str = "role"
    scopes: str = "scope"
    tier: str = "tier"
    models: str = "models"
    default_role: str = "user"


class JWT(Frozen):
    enabled: bool = False
    hs256_secret: str | None = Field(default=None, repr=False)
    oidc_discovery_url: SecureUrl | None = None
    jwks_url: SecureUrl | None = None
    algorithms: tuple[Literal["HS256", "RS256", "ES256"], ...] = ("RS256", "ES256")
    issuer: str | None = None
    audience: str | None = None
    leeway: Annotated[float, Field(ge=0)] = 30.0
    jwks_cache_seconds: Seconds = 300.0
    claims: JWTClaims = JWTClaims()


class IPProtection(Frozen):
    allow: tuple[str, ...] = ()  # CIDRs; empty: everyone not blocked
    block: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    # Never blocked after failures (operators' own networks): the way out of a lock-out that
    # no failure can close. The allow and block lists and operator blocks still apply.
    never_block: tuple[str, ...] = ()
    max_failures: Annotated[int, Field(ge=1)] = 10
    failure_window: Seconds = 60.0
    block_seconds: Seconds = 300.0


class Auth(Frozen):
    enabled: bool = True
    secret: str | None = Field(default=None, repr=False)  # HMAC key for API keys
    # Where the server secret is kept when ``secret`` is not set (created on first start);
    # the loader fills it in: beside a SQLite store, else in the configuration's directory.
    secret_file: str | None = None
    admin_key: str | None = Field(default=None, repr=False)  # SWARMGATE_ADMIN_KEY
    anonymous: bool = False  # allow unauthenticated callers as the guest role
    cache_ttl: Seconds = 5.0
    # While the store is unreachable, a key verified within this many seconds stays usable
    # (still dropped by revocation events and never past its expiry); 0: never.
    stale_max_age: Annotated[float, Field(ge=0)] = 3600.0
    rotation_grace: Annotated[float, Field(ge=0)] = 86400.0
    # Key lifecycle (seeds 001 and 002), each off unless set: the lifetime of a key created
    # without an expiry; how long an expired or revoked key is kept before it is deleted; the
    # age (since its last rotation, or creation) at which a key is due for rotation.
    default_key_expiry: Lifetime | None = None
    key_retention: Annotated[float, Field(ge=0, le=MAX_DURATION)] | None = None
    rotation_period: Lifetime | None = None
    lifecycle_interval: Seconds = 60.0  # how often retention and the rotation count run
    # With ``enabled: false`` every caller is the system principal; the admin API stays closed
    # to them unless this is set too (for a sealed-off test box, never for a shared network).
    open_admin_without_auth: bool = False
    jwt: JWT = JWT()
    ip: IPProtection = IPProtection()


# Seed 003: logs are kept for 30 days.
THIRTY_DAYS = 30 * 86400.0
Retention = Annotated[float, Field(gt=0, le=MAX_DURATION)]


class Audit(Frozen):
    spool_path: str = "swarmgate-audit.spool"
    flush_interval: Seconds = 1.0
    queue_size: Annotated[int, Field(ge=1)] = 10000
    # Seconds an audit record is kept; None: forever. Pruned every ``ledger.prune_interval``.
    retention: Retention | None = THIRTY_DAYS


class Responses(Frozen):
    """Stored responses of ``POST /v1/responses`` (``store: true``)."""

    # Seconds a stored response is kept (OpenAI's: 30 days); None: forever. Pruned every
    # ``ledger.prune_interval``, with the ledger and the audit log.
    retention: Retention | None = THIRTY_DAYS


class Ledger(Frozen):
    """The usage ledger (one record per authenticated inference request, docs/usage.md),
    written behind the hot path like the audit log."""

    enabled: bool = True
    # Default: beside the audit spool, ``<audit.spool_path>.ledger``.
    spool_path: str | None = None
    # A ``kill -9`` loses at most the records of one interval: keep it at 1 s or below.
    flush_interval: Seconds = 1.0
    # Records held in memory before the oldest half goes to the spool (about 300 bytes each).
    queue_size: Annotated[int, Field(ge=1)] = 20000
    batch_size: Annotated[int, Field(ge=1, le=10000)] = 1000
    retention: Retention | None = THIRTY_DAYS  # seconds; None: forever
    prune_interval: Seconds = 3600.0  # how often ledger and audit rows past retention go


class Native(Frozen):
    """The seed-native ``/api/v1`` face: its answers are kept in memory, per process, for
    ``GET /api/v1/inference/{task_id}``: at most ``results_max_entries`` answers and
    ``results_max_bytes`` bytes of them, each for ``results_ttl`` seconds."""

    results_ttl: Seconds = 600.0
    results_max_entries: Annotated[int, Field(ge=1)] = 1000
    results_max_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    # The Ollama server ``POST /api/v1/models/download`` pulls onto (its base URL, no /api);
    # None: downloads are refused (503).
    ollama_url: BaseUrl | None = None
    # Per process: pulls run at once, jobs waiting behind them (more are refused with a 429),
    # and how long a pull may go without a progress line before it is failed.
    download_concurrency: Annotated[int, Field(ge=1, le=32)] = 2
    download_queue: Annotated[int, Field(ge=1)] = 100
    download_idle_timeout: Seconds = 300.0


class Scrape(Frozen):
    """Reading the deployments' own ``/metrics`` (queue, running, KV cache) for the
    resource-aware balancer (docs/routing-aware.md). Off unless ``interval`` is set."""

    interval: Seconds | None = None
    timeout: Seconds = 1.0  # a scrape not answered by then fails (the figures are kept)
    # Figures this old are dropped; a balancer weighs them less as they approach it.
    stale_after: Seconds = 10.0


class Discovery(Frozen):
    """How DNS discovery resolves (``discover`` in a deployment): the nameservers to ask
    (``10.96.0.10``, ``127.0.0.1:5353``, ``[::1]:53``; none: the system's, from
    /etc/resolv.conf) and how long one lookup may take."""

    nameservers: tuple[str, ...] = ()
    timeout: Annotated[float, Field(gt=0, le=60)] = 2.0

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for server in value:
            nameserver_address(server)
        return value


def nameserver_address(text: str) -> tuple[str, int]:
    """``10.0.0.1``, ``10.0.0.1:5353``, ``::1``, ``[::1]:5353`` → (address, port)."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{text!r} is not an address[:port]")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isdigit():
            raise ValueError(f"{text!r} is not an address[:port]")
        port = int(number)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: a nameserver is an IP address (with :port)") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: the port must be 1 to 65535")
    return host, port


class Reload(Frozen):
    """Configuration hot reload (docs/configuration.md): with ``watch``, the file is looked
    at every ``interval`` seconds and reloaded when its content changed."""

    watch: bool = False
    interval: Annotated[float, Field(gt=0, le=3600)] = 5.0


class Settings(Frozen):
    server: Server = Server()
    default_model: str | None = None
    timeouts: Timeouts = Timeouts()
    routing: ModelRouting = ModelRouting()  # model-level routing (docs/model-routing.md)
    models: Annotated[dict[str, Model], Field(min_length=1)]
    store: Store = Store()
    monitoring: Monitoring = Monitoring()
    redis: Redis = Redis()
    auth: Auth = Auth()
    audit: Audit = Audit()
    ledger: Ledger = Ledger()
    responses: Responses = Responses()
    native: Native = Native()
    limits: Limits = Limits()
    scrape: Scrape = Scrape()
    discovery: Discovery = Discovery()
    reload: Reload = Reload()
    tracing: Tracing = Tracing()
    logging: Logging = Logging()

    @model_validator(mode="after")
    def _names_resolve(self) -> Settings:
        aliases = {name: list(model.aliases) for name, model in self.models.items()}
        problems = name_problems(aliases, self.default_model)
        problems += policy.problems(
            {
                name: policy.ModelFacts(
                    aliases=m.aliases,
                    capabilities=m.capabilities,
                    fallbacks=m.fallbacks,
                    chat=m.type in (ModelType.CHAT, ModelType.COMPLETION),
                )
                for name, m in self.models.items()
            },
            self.routing,
        )
        if problems:
            # One message, one problem a line: validation_problems splits it again.
            raise ValueError("\n".join(problems))
        unknown = [name for name in self.limits.models if name not in self.models]
        if unknown:
            raise ValueError(f"limits.models: {', '.join(unknown)}: not a configured model")
        return self

    @model_validator(mode="after")
    def _queue_depth_read(self) -> Settings:
        problems = [
            f"models.{name}.deployments[{i}]: {problem}"
            for name, model in self.models.items()
            for i, dep in enumerate(model.deployments)
            if (problem := max_waiting_problem(self.scrape, model, dep)) is not None
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def timeouts_for(self, deployment: Deployment) -> Timeouts:
        return deployment.timeouts or self.timeouts

    def balancing_of(self, model: Model) -> Balancing:
        """The balancer ``model`` names; if it names none, resource-aware where every one of
        its deployments is scraped, least-outstanding otherwise (docs/routing-aware.md).

        Every one, not some: a deployment that is never scraped would look idler than its
        scraped peers (their figures add to their in-flight counts) and draw their traffic."""
        if model.balancer is not None:
            return model.balancer
        if self.scrape.interval is not None and all(d.metrics_path for d in model.deployments):
            return SCRAPED_DEFAULT
        return UNSCRAPED_DEFAULT


def max_waiting_problem(scrape: Scrape, model: Model, dep: Deployment) -> str | None:
    """Why ``dep``'s ``max_waiting`` (its own, or ``model``'s) would never apply, if so: a
    limit that nobody reads must not look set."""
    if (dep.max_waiting if dep.max_waiting is not None else model.max_waiting) is None:
        return None
    if scrape.interval is None:
        return (
            "max_waiting needs scrape.interval (the queue depth is read from the deployment's "
            "own /metrics)"
        )
    if dep.metrics_path is None:
        return "max_waiting needs a metrics_path (it is null)"
    return None


def worker_problem(settings: Settings, workers: int) -> str | None:
    """Several workers of one gateway count limits alone unless they share Redis: refused."""
    if workers > 1 and settings.limits.any_limit and not settings.redis.url:
        return (
            f"server.workers: {workers} workers without redis.url would each count the rate "
            "limits on their own (a limit of 100 would admit up to "
            f"{workers * 100}); set redis.url to share the counters, run one worker, or set "
            "limits.enabled: false"
        )
    return None


def name_problems(aliases: Mapping[str, list[Any]], default_model: Any) -> list[str]:
    """Every clash between model names and aliases, and a default model that is neither.

    Plain data in, so that it can run on the raw document too: these problems are reported
    with the others, not once those are fixed."""
    problems = []
    seen: dict[str, str] = {}
    for name, names in aliases.items():
        for alias in names:
            if not isinstance(alias, str):
                continue
            if alias in aliases:
                problems.append(f"models.{name}.aliases: {alias!r} is also a model name")
            elif alias in seen:
                problems.append(
                    f"models.{name}.aliases: {alias!r} is already an alias of {seen[alias]}"
                )
            else:
                seen[alias] = name
    if isinstance(default_model, str) and default_model not in {*aliases, *seen}:
        problems.append(f"default_model: {default_model!r} is not a configured model")
    return problems


def _raw_name_problems(raw: dict[str, Any]) -> list[str]:
    models = raw.get("models")
    if not isinstance(models, dict):
        return []
    aliases: dict[str, list[Any]] = {}
    for name, model in models.items():
        names = model.get("aliases") if isinstance(model, dict) else None
        aliases[str(name)] = list(names) if isinstance(names, list | tuple) else []
    return name_problems(aliases, raw.get("default_model"))


def _inner_models(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds: ``Model``, ``Model | None``, ``dict[str, Model]``,
    ``tuple[Model, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(_inner_models(arg))
    return found


def _fields_at(schema: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the section at ``loc`` (``("models", "m")`` → a Model's fields);
    dictionary keys and list indexes along the way are stepped over."""
    current = [schema]
    for part in loc:
        step: list[type[BaseModel]] = []
        for model in current:
            info = model.model_fields.get(str(part))
            step.extend(_inner_models(info.annotation) if info is not None else [model])
        if not step:
            return []
        current = step
    return sorted({name for model in current for name in model.model_fields})


# Never echoed back in a problem: what the value of these could give away.
SECRET_FIELDS = frozenset({"secret", "admin_key", "hs256_secret", "api_key"})


def _echo(loc: tuple[int | str, ...], value: Any) -> str:
    """`` (got 'eighty')`` for a scalar that is not secret; nothing otherwise."""
    secret = any(part in SECRET_FIELDS for part in loc) or loc[:1] in (("store",), ("redis",))
    if secret or isinstance(value, dict | list | tuple) or value is None:
        return ""
    text = repr(value)
    return f" (got {text})" if len(text) <= 80 else ""


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_problems(exc: ValidationError, schema: type[BaseModel] | None = None) -> list[str]:
    """One ``path: message`` line per problem (``models.m.deployments[1].url: not a URL``),
    with the value given (never a secret's) and, for an unknown field, the nearest known one."""
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        loc = tuple(err["loc"])
        where = _format_loc(loc)
        if err["type"] == "missing":
            msg = "required"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
            known = _fields_at(schema, loc[:-1]) if schema is not None and loc else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif "\n" not in msg:
            msg += _echo(loc, err.get("input"))
        for line in msg.splitlines():
            problems.append(
                f"{where}: {line}" if where and not line.startswith(f"{where}:") else line
            )
    return problems


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key == "admin_key":
            path = ["auth", "admin_key"]
        elif key in ("config", "profile"):  # which file, which of its profiles
            continue
        else:
            path = key.split("__")
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if path[-1] in RAW_STRING_FIELDS:
            node[path[-1]] = value
            continue
        try:
            node[path[-1]] = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            node[path[-1]] = value


def _resolve_keys(
    raw: dict[str, Any], environ: Mapping[str, str], problems: list[str], resolve: bool
) -> None:
    models = raw.get("models")
    if not isinstance(models, dict):
        return
    for name, model in models.items():
        deployments = model.get("deployments") if isinstance(model, dict) else None
        if not isinstance(deployments, list):
            continue
        for i, dep in enumerate(deployments):
            if not isinstance(dep, dict):
                continue
            if "api_key" in dep:
                problems.append(
                    f"models.{name}.deployments[{i}].api_key: never put a key in the file; "
                    "name its environment variable in api_key_env"
                )
                dep.pop("api_key")
            env = dep.get("api_key_env")
            if isinstance(env, str) and resolve:
                if env not in environ:
                    problems.append(
                        f"models.{name}.deployments[{i}].api_key_env: ${env} is not set"
                    )
                else:
                    dep["api_key"] = environ[env]


def parse_settings(
    raw: Any,
    environ: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
    deployment_keys: bool = True,
    profile: str | None = None,
) -> Settings:
    """Validate a parsed YAML document plus environment overrides into ``Settings``.

    Relative paths resolve against ``base_dir`` (default: the working directory). With
    ``deployment_keys`` false the deployments' ``api_key_env`` variables are neither required
    nor read: for commands that work on the store and never call an upstream. ``profile``
    (default: ``SWARMGATE_PROFILE``; ``""``: none) names the entry of the document's
    ``profiles`` laid over it, before the environment's overrides."""
    env = os.environ if environ is None else environ
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping of sections"])
    overlay = profiles.apply(
        raw,
        profile_from_env(env) if profile is None else profile or None,
        has_logging="logging" in Settings.model_fields,
    )
    raw = overlay.config
    problems: list[str] = list(overlay.problems)
    if seedconfig.is_seed_config(raw):
        translation = seedconfig.translate(raw, env)
        raw = translation.config
        problems.extend(translation.problems)
    _apply_env(raw, env)
    _resolve_keys(raw, env, problems, deployment_keys)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, Settings))
        for problem in _raw_name_problems(raw):
            if problem not in problems:
                problems.append(problem)
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return _resolve_paths(settings, Path.cwd() if base_dir is None else base_dir)


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL (``sqlite+aiosqlite:///a.db`` → ``a.db``); None for another
    database or an in-memory one."""
    scheme, sep, rest = url.partition(":///")
    path = rest.partition("?")[0]
    if not sep or not scheme.startswith("sqlite") or path in ("", ":memory:"):
        return None
    return path


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    url = settings.store.url
    db_file = sqlite_file(url)
    if db_file is not None and not Path(db_file).is_absolute():
        scheme, _, rest = url.partition(":///")
        db_file = str(base / db_file)
        url = f"{scheme}:///{db_file}{rest[len(rest.partition('?')[0]) :]}"
    auth = settings.auth
    if auth.secret_file is not None:
        secret_file = base / auth.secret_file
    elif db_file is not None:
        secret_file = Path(db_file).with_suffix(".secret")
    else:
        secret_file = base / "swarmgate.secret"
    audit_spool = base / settings.audit.spool_path
    ledger = settings.ledger.spool_path
    ledger_spool = base / ledger if ledger else audit_spool.with_name(audit_spool.name + ".ledger")
    server = settings.server
    if server.tls is not None:
        tls = server.tls.model_copy(
            update={
                "cert_file": str(base / server.tls.cert_file),
                "key_file": str(base / server.tls.key_file),
            }
        )
        server = server.model_copy(update={"tls": tls})
    # model_copy: Settings stay frozen; the values are paths built from already valid ones.
    return settings.model_copy(
        update={
            "server": server,
            "store": settings.store.model_copy(update={"url": url}),
            "auth": auth.model_copy(update={"secret_file": str(secret_file)}),
            "audit": settings.audit.model_copy(update={"spool_path": str(audit_spool)}),
            "ledger": settings.ledger.model_copy(update={"spool_path": str(ledger_spool)}),
        }
    )


def read_yaml(path: str | Path) -> Any:
    """A YAML file's document; unreadable files and bad YAML are a ``ConfigError``."""
    try:
        # A stream, not its text: YAML's errors then name the file, not "<unicode string>".
        with Path(path).open(encoding="utf-8") as stream:
            return yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc


def load_settings(
    path: str | Path | None,
    environ: Mapping[str, str] | None = None,
    *,
    deployment_keys: bool = True,
    profile: str | None = None,
) -> Settings:
    """Read ``path`` (YAML) and apply ``SWARMGATE_*`` overrides. Relative paths in it resolve
    against the file's directory; without a file, against the working directory."""
    if path is None:
        return parse_settings({}, environ, deployment_keys=deployment_keys, profile=profile)
    return parse_settings(
        read_yaml(path),
        environ,
        base_dir=Path(path).resolve().parent,
        deployment_keys=deployment_keys,
        profile=profile,
    )


def profile_names(path: str | Path) -> list[str]:
    """The profiles a configuration file defines, in its order."""
    raw = read_yaml(path)
    return profiles.names(raw) if isinstance(raw, dict) else []


def profile_notes(path: str | Path, profile: str) -> list[str]:
    """What profile ``profile`` of the file maps where, and what of it has no equivalent."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        return []
    return profiles.apply(raw, profile, has_logging="logging" in Settings.model_fields).notes


def seed_translation(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> Translation | None:
    """How a file in seed 004's format maps onto swarmgate's settings; None for swarmgate's own
    format. (``load_settings`` applies the same translation.)"""
    raw = read_yaml(path)
    if not seedconfig.is_seed_config(raw):
        return None
    return seedconfig.translate(raw, os.environ if environ is None else environ)


def environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The process environment with ``overrides`` on top, for ``parse_settings``."""
    return {**os.environ, **overrides}


def metrics_dir_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """prometheus-client's multiprocess directory, set by ``serve`` when running workers."""
    env = os.environ if environ is None else environ
    return env.get("PROMETHEUS_MULTIPROC_DIR")


def config_path_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get(ENV_PREFIX + "CONFIG")


def profile_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``SWARMGATE_PROFILE``: the profile ``serve`` was given, passed on to its workers."""
    env = os.environ if environ is None else environ
    return env.get(ENV_PREFIX + "PROFILE") or None


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | float, *, allow_zero: bool = False) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` → seconds, at most ``MAX_DURATION``.
    Raises ValueError."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        value = text.strip().lower()
        unit = _UNITS.get(value[-1:]) if value else None
        number = value[:-1] if unit else value
        try:
            seconds = float(number) * (unit or 1.0)
        except ValueError:
            raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 12h, 30d)") from None
    if seconds < 0 or (seconds == 0 and not allow_zero) or seconds != seconds:
        raise ValueError(f"{text!r} is not a positive duration")
    if seconds > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than the maximum of 10 years")
    return seconds
