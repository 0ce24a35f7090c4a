"""``swarmgate workers list|add|drain|restart|remove``: the fleet of a RUNNING gateway.

Unlike ``swarmgate keys``, which works on the store, these talk to a gateway's HTTP API
(``/api/v1/workers``): draining and restarting are about the requests in flight in a gateway,
which only the gateway knows. The change is stored and published by that gateway, so with a
shared store it reaches every replica. The key needs ``cluster:read`` to list and
``cluster:write`` (or ``admin``) for the rest.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import click

TIMEOUT_MARGIN = 30.0  # seconds beyond the gateway's own wait for a restart or removal

URL = click.option(
    "--url",
    envvar="SWARMGATE_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    show_envvar=True,
    help="The gateway's base URL.",
)
KEY = click.option(
    "--api-key",
    envvar="SWARMGATE_API_KEY",
    show_envvar=True,
    required=True,
    help="A key with cluster:read (list) or cluster:write (changes).",
)
WAIT = click.option(
    "--wait",
    type=click.FloatRange(0, 3600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the worker's requests in flight.",
)


def request(
    url: str, key: str, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> Any:
    """One API call; its JSON answer, or the error's message on stderr and exit status 1."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        click.echo(f"swarmgate: {exc.code}: {message}", err=True)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"swarmgate: cannot reach the gateway at {url}: {exc}", err=True)
    sys.exit(1)


def _path(worker_id: str, action: str = "") -> str:
    return f"/api/v1/workers/{quote(worker_id, safe='')}" + (f"/{action}" if action else "")


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group()
def workers() -> None:
    """The workers (deployments) of a running gateway."""


@workers.command("list")
@URL
@KEY
@click.option("--json", "as_json", is_flag=True, help="The API's JSON, not a table.")
def list_workers(url: str, api_key: str, as_json: bool) -> None:
    """Every worker: id, model, status, requests in flight of max_concurrent, source."""
    listed = request(url, api_key, "GET", "/api/v1/workers")
    if as_json:
        emit(listed)
        return
    rows = [("ID", "MODEL", "STATUS", "IN FLIGHT", "SOURCE", "URL")]
    for w in listed["data"]:
        load = f"{w['in_flight']}/{w['max_concurrent']}"
        rows.append((w["id"], w["model"], w["status"], load, w["source"], w["url"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@workers.command("add")
@URL
@KEY
@click.argument("model")
@click.argument("worker_url", metavar="URL")
@click.option("--name", default=None, help="The worker's id (default: model@host:port).")
@click.option("--upstream-model", default=None, help="The model's name on the server.")
@click.option("--weight", type=float, default=None)
@click.option("--max-concurrent", type=int, default=None)
@click.option("--api-key-env", default=None, help="The gateway's variable holding its key.")
def add(
    url: str,
    api_key: str,
    model: str,
    worker_url: str,
    name: str | None,
    upstream_model: str | None,
    weight: float | None,
    max_concurrent: int | None,
    api_key_env: str | None,
) -> None:
    """Add a worker serving MODEL at URL (stored: it outlives restarts)."""
    options = {
        "name": name,
        "upstream_model": upstream_model,
        "weight": weight,
        "max_concurrent": max_concurrent,
        "api_key_env": api_key_env,
    }
    body = {
        "model": model,
        "url": worker_url,
        **{k: v for k, v in options.items() if v is not None},
    }
    emit(request(url, api_key, "POST", "/api/v1/workers", body))


@workers.command("drain")
@URL
@KEY
@click.argument("worker_id")
def drain(url: str, api_key: str, worker_id: str) -> None:
    """No new requests to the worker; those in flight finish."""
    emit(request(url, api_key, "POST", _path(worker_id, "drain")))


@workers.command("restart")
@URL
@KEY
@WAIT
@click.argument("worker_id")
def restart(url: str, api_key: str, wait: float, worker_id: str) -> None:
    """Drain the worker, wait for its requests in flight (bounded), readmit it."""
    path = _path(worker_id, "restart") + f"?wait={wait}"
    emit(request(url, api_key, "POST", path, timeout=wait + TIMEOUT_MARGIN))


@workers.command("remove")
@URL
@KEY
@WAIT
@click.argument("worker_id")
def remove(url: str, api_key: str, wait: float, worker_id: str) -> None:
    """Drain the worker, wait for its requests in flight (bounded), remove it."""
    path = _path(worker_id) + f"?wait={wait}"
    emit(request(url, api_key, "DELETE", path, timeout=wait + TIMEOUT_MARGIN))
