"""The rows of the benchmark table: what runs in front of the static upstream, and how.

Every row proxies to the same nginx that answers POST /v1/chat/completions with a fixed
``chat.completion`` (port 18080), started once for the whole run; the "direct" row hits it with
no proxy at all. Config files for nginx and LiteLLM are written into ``bench/.work``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processes import REPO, WORK, Service

UPSTREAM_PORT = 18080
NGINX_PROXY_PORT = 18081
MINIMAL_PORT = 18090
LITELLM_PORT = 18095
GATEWAY_PORT = 18000
REDIS_PORT = 18379
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
UPSTREAM = f"http://127.0.0.1:{UPSTREAM_PORT}"

VENV = REPO / ".venv" / "bin"
LITELLM_VENV = REPO / "bench" / ".venv-litellm"
GATEWAY_CONFIG = REPO / "bench" / "gateway.yaml"

COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion",
    "created": 1763900000,
    "model": "bench-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23},
}
MODELS = {
    "object": "list",
    "data": [{"id": "bench-model", "object": "model", "created": 0, "owned_by": "bench"}],
}


@dataclass(frozen=True)
class Row:
    key: str  # for --rows
    label: str
    service: Service | None  # None: the upstream itself (the "direct" row)
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: bool = False  # a request without ``headers`` must then be refused
    refusals: tuple[int, ...] = (401,)  # the statuses that count as refused
    redis: bool = False  # needs the run's Redis (started once, for the rows that need it)


@dataclass(frozen=True)
class Keys:
    """Per-run secrets: the bootstrap admin key of swarmgate and LiteLLM's master key."""

    gateway_admin: str
    litellm_master: str

    @classmethod
    def fresh(cls) -> Keys:
        return cls("sk-sg-" + secrets.token_hex(32), "sk-litellm-" + secrets.token_hex(16))


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise SystemExit("nginx is missing: apt-get install nginx-light (or nginx)")
    return found


def _nginx_conf(name: str, port: int, server_block: str, upstream_block: str = "") -> Path:
    prefix = WORK / "nginx" / name
    (prefix / "logs").mkdir(parents=True, exist_ok=True)  # nginx insists on it at startup
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {upstream_block}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        {server_block}
    }}
}}
""")
    return conf


def _nginx_service(name: str, port: int, conf: Path, ready: str) -> Service:
    prefix = conf.parent
    argv = [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return Service(name, [*argv, "-g", "daemon off;"], port, ready_path=ready, cwd=prefix)


def upstream_service() -> Service:
    """nginx answering chat completions with a fixed JSON body: the fastest possible model."""

    def literal(value: object) -> str:
        return json.dumps(value, separators=(",", ":"))  # no single quotes: safe in '...'

    server = f"""
        default_type application/json;
        location = /v1/chat/completions {{ return 200 '{literal(COMPLETION)}'; }}
        location = /v1/models {{ return 200 '{literal(MODELS)}'; }}
        location = /health {{ return 200 '{{"status":"ok"}}'; }}
        location / {{ return 404 '{{"error":{{"message":"not found"}}}}'; }}
    """
    conf = _nginx_conf("upstream", UPSTREAM_PORT, server)
    return _nginx_service("upstream-nginx", UPSTREAM_PORT, conf, "/health")


def nginx_proxy_service() -> Service:
    upstream = f"upstream static {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 256; }}"
    server = """
        location / {
            proxy_pass http://static;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    """
    conf = _nginx_conf("proxy", NGINX_PROXY_PORT, server, upstream)
    return _nginx_service("nginx-proxy", NGINX_PROXY_PORT, conf, "/health")


def minimal_service(server: str) -> Service:
    port = str(MINIMAL_PORT)
    if server == "uvicorn":
        argv = [str(VENV / "uvicorn"), "minimal_proxy:app", "--host", "127.0.0.1", "--port", port]
        argv += ["--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
        argv += ["--log-level", "info", "--backlog", "2048"]  # info: a shutdown is logged
    else:
        argv = [str(VENV / "granian"), "--interface", "asgi", "--host", "127.0.0.1"]
        argv += ["--port", port, "--workers", "1", "--no-access-log", "--backlog", "2048"]
        argv += ["minimal_proxy:app"]
    env = {"BENCH_UPSTREAM": UPSTREAM}
    return Service(f"minimal-{server}", argv, MINIMAL_PORT, env=env, cwd=REPO / "bench")


# Limits on the benchmark key (the admin key, tier ``default``), set high enough never to refuse:
# every request is checked and charged (rpm, tpm, concurrency), none is turned away.
BENCH_LIMITS = {"tiers": {"default": {"rpm": 10**9, "tpm": 10**12, "concurrent": 10**5}}}


def redis_service() -> Service:
    """A Redis for the Redis-mode rows: in memory only, nothing saved."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [binary, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no"]
    return Service("redis", argv, REDIS_PORT, ready_path="")


def gateway_config(
    name: str = "bench", limits: dict[str, Any] | None = None, redis: bool = False
) -> Path:
    """bench/gateway.yaml with its store and spool paths made absolute (a baseline commit may
    resolve relative paths differently), and a store of its own per ``name`` (a baseline's
    older schema must not meet a newer one)."""
    import yaml

    config = yaml.safe_load(GATEWAY_CONFIG.read_text())
    config["store"] = {"url": f"sqlite+aiosqlite:///{WORK / (name + '.db')}"}
    config["audit"] = {"spool_path": str(WORK / f"{name}-audit.spool")}
    if limits is not None:
        config["limits"] = limits
    if redis:
        config["redis"] = {"url": REDIS_URL}
    WORK.mkdir(exist_ok=True)
    path = WORK / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def gateway_service(
    keys: Keys,
    server: str,
    workers: int,
    auth: bool,
    store: str = "bench",
    limits: dict[str, Any] | None = None,
    redis: bool = False,
) -> Service:
    config = gateway_config(store, limits, redis)
    argv = [str(VENV / "swarmgate"), "serve", "--config", str(config)]
    argv += ["--port", str(GATEWAY_PORT), "--workers", str(workers), "--server", server]
    env = {"SWARMGATE_ADMIN_KEY": keys.gateway_admin}
    if not auth:
        env["SWARMGATE_AUTH__ENABLED"] = "false"
    name = f"swarmgate-{server}-{workers}w-auth-{'on' if auth else 'off'}"
    if limits is not None:
        name += "-limits"
    if redis:
        name += "-redis"
    return Service(name, argv, GATEWAY_PORT, env=env, start_timeout=90.0)


def baseline_tree(commit: str) -> Path:
    """The sources of swarmgate at ``commit``, checked out in a detached worktree under
    bench/.work (made once per commit)."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", commit],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    tree = WORK / f"baseline-{sha}"
    if not tree.exists():
        WORK.mkdir(exist_ok=True)
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), sha],
            check=True, capture_output=True,
        )  # fmt: skip
    return tree


def baseline_row(keys: Keys, commit: str) -> Row:
    """swarmgate at another commit (uvicorn, 1 worker, auth on), run by this venv with that
    commit's sources first on the path."""
    tree = baseline_tree(commit)
    sha = tree.name.removeprefix("baseline-")
    service = gateway_service(keys, "uvicorn", 1, auth=True, store=f"bench-{sha}")
    argv = [str(VENV / "python"), "-m", "swarmgate.cli", *service.argv[1:]]
    env = {**service.env, "PYTHONPATH": str(tree / "src")}
    service = Service(f"swarmgate-at-{sha}", argv, GATEWAY_PORT, env=env, start_timeout=90.0)
    bearer = {"Authorization": f"Bearer {keys.gateway_admin}"}
    label = f"swarmgate uvicorn 1w, auth on, at {sha} (baseline)"
    return Row("sg-uvicorn-1w@baseline", label, service, bearer, auth=True)


def litellm_service(keys: Keys) -> Service:
    conf = WORK / "litellm.yaml"
    conf.write_text(
        json.dumps(  # JSON is YAML; LiteLLM reads it as such
            {
                "model_list": [
                    {
                        "model_name": "bench-model",
                        "litellm_params": {
                            "model": "openai/bench-model",
                            "api_base": f"{UPSTREAM}/v1",
                            "api_key": "sk-upstream-unused",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False, "drop_params": True},
                "general_settings": {"master_key": keys.litellm_master},
            },
            indent=2,
        )
    )
    argv = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(conf)]
    argv += ["--host", "127.0.0.1", "--port", str(LITELLM_PORT), "--num_workers", "1"]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch the price list from GitHub
        "LITELLM_TELEMETRY": "False",
        "DISABLE_ADMIN_UI": "True",
        "HF_HUB_OFFLINE": "1",
        "NO_PROXY": "*",
        "LITELLM_LOG": "ERROR",
    }
    return Service("litellm", argv, LITELLM_PORT, "/health/liveliness", env, start_timeout=180.0)


def all_rows(keys: Keys) -> list[Row]:
    bearer = {"Authorization": f"Bearer {keys.gateway_admin}"}
    rows = [
        Row("direct", "direct (nginx static upstream)", None),
        Row("nginx", "nginx reverse proxy", nginx_proxy_service()),
        Row("minimal-uvicorn", "minimal ASGI proxy, uvicorn", minimal_service("uvicorn")),
        Row("minimal-granian", "minimal ASGI proxy, granian", minimal_service("granian")),
    ]
    for server in ("uvicorn", "granian"):
        for workers in (1, 2):
            service = gateway_service(keys, server, workers, auth=True)
            label = f"swarmgate {server} {workers}w, auth on"
            rows.append(Row(f"sg-{server}-{workers}w", label, service, bearer, auth=True))
    service = gateway_service(
        keys, "uvicorn", 1, auth=True, store="bench-limits", limits=BENCH_LIMITS
    )
    label = "swarmgate uvicorn 1w, auth on, limits on (rpm, tpm, concurrent)"
    rows.append(Row("sg-uvicorn-1w-limits", label, service, bearer, auth=True))
    # Redis mode: the same gateway with Redis (auth caches and events through it), limits off
    # and on; with limits on every admission is one Lua call, coalesced per event-loop tick.
    service = gateway_service(
        keys, "uvicorn", 1, auth=True, store="bench-redis", limits={"enabled": False}, redis=True
    )
    label = "swarmgate uvicorn 1w, auth on, Redis, limits off"
    rows.append(Row("sg-uvicorn-1w-redis", label, service, bearer, auth=True, redis=True))
    service = gateway_service(
        keys, "uvicorn", 1, auth=True, store="bench-redis-limits", limits=BENCH_LIMITS, redis=True
    )
    label = "swarmgate uvicorn 1w, auth on, Redis, limits on (rpm, tpm, concurrent, capacity)"
    rows.append(Row("sg-uvicorn-1w-redis-limits", label, service, bearer, auth=True, redis=True))
    service = gateway_service(keys, "uvicorn", 1, auth=False)
    rows.append(Row("sg-uvicorn-1w-noauth", "swarmgate uvicorn 1w, auth off", service))
    master = {"Authorization": f"Bearer {keys.litellm_master}"}
    # LiteLLM 1.106 without its optional ``prisma`` package answers a missing key with 500: its
    # error handler imports prisma. Still a refusal; the measured requests carry the key.
    label = "LiteLLM proxy (uvicorn 1w), auth on"
    rows.append(Row("litellm", label, litellm_service(keys), master, True, (401, 500)))
    return rows
