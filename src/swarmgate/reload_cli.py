"""``swarmgate reload``: a RUNNING gateway re-reads its configuration file (``POST
/admin/reload``, the admin scope).

A file with problems is refused by the gateway and its problems are printed as ``swarmgate
check-config`` prints them (exit status 2, as check-config's); the running config stays.
With Redis, the other workers and replicas re-read their own file too.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

import click

from swarmgate.workers_cli import URL

TIMEOUT = 60.0  # a reload waits for the DNS lookups of new discover entries


def _answer(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


@click.command(name="reload")
@URL
@click.option(
    "--api-key",
    envvar="SWARMGATE_ADMIN_KEY",
    show_envvar=True,
    required=True,
    help="A key with the admin scope.",
)
def reload(url: str, api_key: str) -> None:
    """Make a running gateway reload its configuration file."""
    req = urllib.request.Request(url.rstrip("/") + "/admin/reload", data=b"", method="POST")
    req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            done = _answer(response.read()) or {}
    except urllib.error.HTTPError as exc:
        with exc:
            error = (_answer(exc.read()) or {}).get("error") or {}
        problems = error.get("problems")
        if exc.code == 400 and isinstance(problems, list):
            click.echo(f"swarmgate: invalid configuration in {error.get('config')}:", err=True)
            for problem in problems:
                click.echo(f"  {problem}", err=True)
            click.echo("swarmgate: not reloaded; the running configuration is unchanged", err=True)
            sys.exit(2)
        click.echo(f"swarmgate: {exc.code}: {error.get('message') or exc.reason}", err=True)
        sys.exit(1)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"swarmgate: cannot reach the gateway at {url}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"swarmgate: reloaded {done.get('config')} (sha256 {str(done.get('sha256'))[:12]})")
    pending = done.get("restart_required") or []
    if pending:
        click.echo(
            "swarmgate: warning: changed, but they need a restart: " + ", ".join(pending),
            err=True,
        )
