"""Seed 004's own gateway file (``unified-api-gateway.yaml``) and ``.env``, read as swarmgate's.

That format has sections ``service``, ``gateway``, ``load_balancer``, ``models`` (one
``endpoint`` each, with ``weight``, ``max_concurrent``, ``cost_per_request``), ``performance``
and ``monitoring``, and environment variables such as ``API_GATEWAY_PORT``,
``MIXTRAL_8X7B_ENDPOINT`` and ``DEFAULT_MODEL``. ``translate`` turns it into the raw document
swarmgate's loader validates, and says where each value went and what has no equivalent.

The format has no authentication, and its validation commands call the gateway without a key:
the translation turns on anonymous access (callers without a key are guests, who may list
models and run text inference) and leaves authentication on, so a bad key is still refused and
the admin API still needs an admin key. It never opens the admin API.

This module imports nothing of ours: the environment is passed in by the loader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SEED_SECTIONS = frozenset(
    {"service", "gateway", "load_balancer", "performance", "monitoring", "models"}
)
# Present only in seed 004's format (``models`` and ``monitoring`` are in both).
MARKERS = frozenset({"service", "gateway", "load_balancer", "performance"})
# swarmgate sections that may sit beside the seed's, taken as they are.
NATIVE_SECTIONS = frozenset(
    {"store", "redis", "auth", "audit", "ledger", "timeouts", "server", "limits"}
)

# (section, field) → (swarmgate path, environment variable)
MAPPED: dict[tuple[str, str], tuple[tuple[str, ...], str | None]] = {
    ("service", "host"): (("server", "host"), "API_GATEWAY_HOST"),
    ("service", "name"): (("server", "name"), None),
    ("service", "port"): (("server", "port"), "API_GATEWAY_PORT"),
    ("service", "workers"): (("server", "workers"), "API_GATEWAY_WORKERS"),
    ("gateway", "default_model"): (("default_model",), "DEFAULT_MODEL"),
    ("performance", "request_timeout_seconds"): (("timeouts", "total"), "REQUEST_TIMEOUT_SECONDS"),
    ("performance", "rate_limit_rps"): (("limits", "global", "rps"), "RATE_LIMIT_RPS"),
    ("performance", "max_concurrent_requests"): (
        ("limits", "global", "concurrent"),
        "MAX_CONCURRENT_REQUESTS",
    ),
    ("performance", "rate_limiting_enabled"): (("limits", "enabled"), "RATE_LIMITING_ENABLED"),
}
# (section, field) → (why it is ignored, environment variable)
IGNORED: dict[tuple[str, str], tuple[str, str | None]] = {
    ("gateway", "model_routing_enabled"): (
        "requests are always routed by their model",
        "MODEL_ROUTING_ENABLED",
    ),
    ("gateway", "intelligent_routing"): (
        "each model's balancer decides (load_balancer.algorithm; by default the fewest "
        "requests in flight for each replica's weight, or with scrape.interval set the "
        "replicas' own queue and KV-cache figures too)",
        "INTELLIGENT_ROUTING",
    ),
    ("gateway", "cost_optimization_enabled"): (
        "no choice between models by price; between a model's replicas, "
        "load_balancer.algorithm: cost",
        "COST_OPTIMIZATION_ENABLED",
    ),
    ("performance", "memory_limit_gb"): (
        "a resource limit for the service manager, not the gateway",
        "API_GATEWAY_MEMORY_GB",
    ),
    ("performance", "cpu_cores"): (
        "a resource limit for the service manager, not the gateway",
        "API_GATEWAY_CPU_CORES",
    ),
    ("monitoring", "prometheus_port"): (
        "metrics are served on the gateway's own port, at /metrics",
        "PROMETHEUS_PORT",
    ),
    ("monitoring", "log_level"): ("the gateway logs at INFO", None),
}
# Fixed paths in swarmgate: the seed's value is accepted only if it names the same one.
FIXED_PATHS: dict[tuple[str, str], tuple[str, str]] = {
    ("monitoring", "health_check_endpoint"): ("/health", "HEALTH_CHECK_ENDPOINT"),
    ("monitoring", "metrics_endpoint"): ("/metrics", "METRICS_ENDPOINT"),
}
MODEL_FIELDS: dict[str, str] = {
    "weight": "weight",
    "max_concurrent": "max_concurrent",
    "cost_per_request": "cost_per_request",
}
# load_balancer settings that are each model's own in swarmgate (its probes and its circuit):
# given to every model the file describes, as the algorithm is.
PER_MODEL: dict[tuple[str, str], tuple[tuple[str, str], str]] = {
    ("load_balancer", "health_check_interval"): (
        ("health_check", "interval"),
        "HEALTH_CHECK_INTERVAL",
    ),
    ("load_balancer", "circuit_breaker_threshold"): (
        ("circuit_breaker", "threshold"),
        "CIRCUIT_BREAKER_THRESHOLD",
    ),
    ("load_balancer", "circuit_breaker_timeout"): (
        ("circuit_breaker", "open_seconds"),
        "CIRCUIT_BREAKER_TIMEOUT",
    ),
}

# load_balancer.algorithm: the balancer of every model the file describes (a model written in
# swarmgate's own shape keeps its own). The names swarmgate's config takes (its strategies and
# their aliases; tests/test_seedconfig.py keeps the two lists together).
ALGORITHM = ("load_balancer", "algorithm")
ALGORITHM_VARIABLE = "LOAD_BALANCER_ALGORITHM"
ALGORITHMS = frozenset(
    {
        "least_outstanding",
        "least_connections",
        "least_requests",
        "round_robin",
        "weighted_round_robin",
        "power_of_two",
        "consistent_hash",
        "cost",
        "resource_aware",
        "prefix_aware",
    }
)
QUEUE_TIMEOUT = 30.0  # seconds a request waits for a free slot (the seed's request timeout)
MODEL_IGNORED: dict[str, str] = {}


@dataclass
class Translation:
    """The swarmgate document, where each seed value went, and what has no equivalent."""

    config: dict[str, Any]
    mapped: list[str] = field(default_factory=list)  # "service.port → server.port"
    ignored: list[str] = field(default_factory=list)  # "load_balancer.algorithm: why"
    problems: list[str] = field(default_factory=list)
    # Settings every model takes (PER_MODEL): (section, field) → (value, where it came from).
    per_model: dict[tuple[str, str], tuple[Any, str]] = field(default_factory=dict)


def is_seed_config(raw: Any) -> bool:
    """Seed 004's format: one of its own sections, or a model with an ``endpoint``."""
    if not isinstance(raw, dict):
        return False
    if MARKERS & raw.keys():
        return True
    models = raw.get("models")
    return isinstance(models, dict) and any(
        isinstance(m, dict) and "endpoint" in m and "deployments" not in m for m in models.values()
    )


def endpoint_variable(model: str) -> str:
    """``mixtral-8x7b`` → ``MIXTRAL_8X7B_ENDPOINT``, as seed 004's ``.env`` names them."""
    return re.sub(r"[^A-Z0-9]+", "_", model.upper()).strip("_") + "_ENDPOINT"


def _scalar(text: str) -> Any:
    """Environment values as numbers when they look like numbers (``8000``, ``30``)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _set(config: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = config
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _sections(raw: dict[str, Any], out: Translation) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if name in NATIVE_SECTIONS:
            out.config[name] = value
        elif name not in SEED_SECTIONS:
            out.ignored.append(f"{name}: not a section of this format")
        elif value is None:
            sections[name] = {}
        elif not isinstance(value, dict):
            out.problems.append(f"{name}: expected a mapping")
        else:
            sections[name] = value
    return sections


def _settings(
    sections: dict[str, dict[str, Any]], environ: Mapping[str, str], out: Translation
) -> None:
    for section, values in sections.items():
        if section == "models":
            continue
        for key, value in values.items():
            where = (section, key)
            if where in MAPPED:
                path, _ = MAPPED[where]
                _set(out.config, path, value)
                out.mapped.append(f"{section}.{key} → {'.'.join(path)}")
            elif where in IGNORED:
                out.ignored.append(f"{section}.{key}: {IGNORED[where][0]}")
            elif where in FIXED_PATHS:
                _fixed_path(f"{section}.{key}", value, FIXED_PATHS[where][0], out)
            elif where == ALGORITHM:
                continue  # given to each model by _models
            elif where in PER_MODEL:
                out.per_model[PER_MODEL[where][0]] = (value, f"{section}.{key}")
            elif section == "monitoring" and key == "active_users_window":
                _set(out.config, ("monitoring", key), value)
            else:
                out.ignored.append(f"{section}.{key}: not a field of this format")
    _environment(environ, out)
    if "timeouts" in out.config and isinstance(out.config["timeouts"], dict):
        # The seed's one request timeout bounds the whole request; the time to the first
        # byte cannot be longer than that.
        timeouts = out.config["timeouts"]
        if "total" in timeouts and "first_byte" not in timeouts:
            timeouts["first_byte"] = timeouts["total"]


def _environment(environ: Mapping[str, str], out: Translation) -> None:
    """The ``.env`` variables: they override the file, as they would the seed's service."""
    for path, variable in MAPPED.values():
        if variable is not None and variable in environ:
            _set(out.config, path, _scalar(environ[variable]))
            out.mapped.append(f"${variable} → {'.'.join(path)}")
    for path, variable in PER_MODEL.values():
        if variable in environ:
            out.per_model[path] = (_scalar(environ[variable]), f"${variable}")
    for why, variable in IGNORED.values():
        if variable is not None and variable in environ:
            out.ignored.append(f"${variable}: {why}")
    for fixed, variable in FIXED_PATHS.values():
        if variable in environ:
            _fixed_path(f"${variable}", environ[variable], fixed, out)


def _fixed_path(where: str, value: Any, fixed: str, out: Translation) -> None:
    if value == fixed:
        out.mapped.append(f"{where} → {fixed} (fixed)")
    else:
        out.ignored.append(f"{where}: {value!r} cannot be moved: swarmgate serves {fixed}")


def _endpoints(value: Any) -> list[Any]:
    """One endpoint, or several (a list, or ``http://a:1,http://b:1`` in the variable): a
    model served by replicas gets one deployment per endpoint, balanced between them."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [value]


def _algorithm(
    sections: dict[str, dict[str, Any]], environ: Mapping[str, str], out: Translation
) -> str | None:
    """The balancer ``load_balancer.algorithm`` (or its variable) names, if a known one."""
    if ALGORITHM_VARIABLE in environ:
        where, value = f"${ALGORITHM_VARIABLE}", environ[ALGORITHM_VARIABLE]
    elif "algorithm" in sections.get("load_balancer", {}):
        where, value = "load_balancer.algorithm", sections["load_balancer"]["algorithm"]
    else:
        return None
    name = value.strip().lower().replace("-", "_") if isinstance(value, str) else None
    if name not in ALGORITHMS:
        out.problems.append(
            f"{where}: {value!r} is not a balancer swarmgate has (one of "
            f"{', '.join(sorted(ALGORITHMS))})"
        )
        return None
    out.mapped.append(f"{where} → models.*.balancer")
    return name


def _models(
    models: dict[str, Any], environ: Mapping[str, str], out: Translation, algorithm: str | None
) -> None:
    translated: dict[str, Any] = {}
    for name, model in models.items():
        if not isinstance(model, dict):
            out.problems.append(f"models.{name}: expected a mapping")
            continue
        if "deployments" in model:
            # Already swarmgate's shape: taken as it is.
            translated[name] = model
            continue
        deployment: dict[str, Any] = {}
        variable = endpoint_variable(name)
        endpoint = environ.get(variable, model.get("endpoint"))
        if endpoint is None:
            out.problems.append(f"models.{name}.endpoint: required (or set ${variable})")
            continue
        source = f"${variable}" if variable in environ else f"models.{name}.endpoint"
        out.mapped.append(f"{source} → models.{name}.deployments[*].url")
        for key, value in model.items():
            if key == "endpoint":
                continue
            if key in MODEL_FIELDS:
                deployment[MODEL_FIELDS[key]] = value
                out.mapped.append(
                    f"models.{name}.{key} → models.{name}.deployments[*].{MODEL_FIELDS[key]}"
                )
            elif key in MODEL_IGNORED:
                out.ignored.append(f"models.{name}.{key}: {MODEL_IGNORED[key]}")
            else:
                out.ignored.append(f"models.{name}.{key}: not a field of this format")
        translated[name] = {
            "deployments": [{"url": url, **deployment} for url in _endpoints(endpoint)],
            # The seed bounds concurrency per model and expects requests past it to be served
            # (its own load test runs 20 at a time against max_concurrent 10): they wait in
            # line for a slot, up to the request timeout, instead of being refused.
            "queue_timeout": QUEUE_TIMEOUT,
        }
        if algorithm is not None:
            translated[name]["balancer"] = algorithm
        for path, (value, source) in out.per_model.items():
            _set(translated[name], path, value)
            out.mapped.append(f"{source} → models.{name}.{'.'.join(path)}")
        out.mapped.append(f"(implied) → models.{name}.queue_timeout: {QUEUE_TIMEOUT:g}")
    out.config["models"] = translated


def translate(raw: dict[str, Any], environ: Mapping[str, str]) -> Translation:
    """Seed 004's document plus its environment variables → swarmgate's raw document.

    Values are not validated here: swarmgate's loader does that, with the paths it reports."""
    out = Translation(config={})
    sections = _sections(raw, out)
    _settings(sections, environ, out)
    models = sections.get("models", {})
    _models(models, environ, out, _algorithm(sections, environ, out))
    _one_worker_without_redis(out)
    auth = out.config.get("auth")
    if auth is None:
        out.config["auth"] = {"anonymous": True}
        out.mapped.append(
            "(no authentication in this format) → auth.anonymous: true: callers without a "
            "key may list models and run inference; bad keys are refused; the admin API "
            "needs the admin key"
        )
    return out


def _one_worker_without_redis(out: Translation) -> None:
    """The format's ``workers: 4`` beside its rate limits, with no Redis to share the counters:
    four workers would each admit the whole ``rate_limit_rps``. Served with one worker (the
    limits stay exact), said at start; a ``redis`` section keeps the workers."""
    server = out.config.get("server", {})
    try:
        workers = int(server.get("workers", 1))
    except (TypeError, ValueError):
        return  # the loader reports it
    limits_on = out.config.get("limits", {}).get("enabled", True) not in (False, "false")
    if workers > 1 and limits_on and not out.config.get("redis", {}).get("url"):
        server["workers"] = 1
        out.mapped.append(
            f"service.workers: {workers} → server.workers: 1: without Redis, {workers} workers "
            "would each count the rate limits alone; add a redis section (redis.url) to run "
            f"{workers}, or set RATE_LIMITING_ENABLED=false"
        )
