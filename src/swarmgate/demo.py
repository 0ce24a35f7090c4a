"""``swarmgate demo``: a simulated fleet of four chat models and the gateway in front.

Everything runs in one process and one event loop on the embedded default (a SQLite file in a
temporary or given directory), so Ctrl-C stops the fleet and the gateway together. The fleet
takes free ports, and the gateway's configuration is written to point at them, so that two
demos can run side by side.

On this machine only (a loopback address) and without ``--key``, the demo accepts the
well-known ``DEMO_KEY`` that the README's examples use; on any other address it makes a key.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import yaml

from swarmgate.config import environment, parse_settings

DEMO_KEY = "sk-sg-demo-0123456789abcdef0123456789abcdef"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

EXAMPLES = """
swarmgate demo is up: gateway on {base} in front of {n} simulated model servers.

API key (send as "Authorization: Bearer ..."):
  {key}

Try it:
  curl {base}/v1/models -H "Authorization: Bearer {key}"

  curl {base}/v1/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "phi-3-mini", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl -N {base}/v1/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "mixtral-8x7b", "stream": true,
         "messages": [{{"role": "user", "content": "Tell me a story"}}]}}'

With the OpenAI Python SDK:
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{key}")
  reply = client.chat.completions.create(
      model="hermes-2", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content)

Manage keys of this demo from another shell (its store lives beside this file):
  {cli} keys create --config {config} --owner alice --role user --models phi-3-mini
  {cli} keys list --config {config}

Docs: {base}/docs   Metrics: {base}/metrics   Readiness: {base}/health/ready
Press Ctrl-C to stop.
"""


def cli_command() -> str:
    """How to run ``swarmgate`` from a shell as it is: the virtualenv's script is often not on
    PATH (``.venv/bin/swarmgate``)."""
    script = Path(sys.executable).parent / "swarmgate"
    found = shutil.which("swarmgate")
    if found is not None and Path(found).resolve() == script.resolve():
        return "swarmgate"
    if script.exists():
        try:
            return shlex.quote(str(script.relative_to(Path.cwd())))
        except ValueError:
            return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m swarmgate.cli"


def demo_config(
    data_dir: Path, port: int, host: str, key: str, urls: dict[str, str] | None = None
) -> dict[str, Any]:
    """The packaged example configuration on this host and port; ``urls`` maps the example's
    deployment URLs to where the fleet really listens."""
    raw = yaml.safe_load(files("swarmgate").joinpath("examples/swarmgate.yaml").read_text())
    raw["server"] = {**raw.get("server", {}), "host": host, "port": port}
    raw["store"] = {"url": f"sqlite+aiosqlite:///{data_dir / 'swarmgate.db'}"}
    raw["audit"] = {"spool_path": str(data_dir / "audit.spool")}
    raw.setdefault("auth", {})["admin_key"] = key
    # Short lines for a terminal, and one for each request (docs/observability.md).
    raw["logging"] = {"format": "console", "access": {"enabled": True, "format": "console"}}
    for model in raw["models"].values():
        for dep in model["deployments"]:
            dep["url"] = (urls or {}).get(dep["url"], dep["url"])
    return dict(raw)


async def _run(host: str, port: int, key: str, data_dir: Path) -> None:
    from swarmgate.serve import serve_in_loop
    from swarmgate.sim import load_fleet_profile, start_fleet

    profile = load_fleet_profile(str(files("swarmgate").joinpath("sim/demo_fleet.yaml")))
    planned = {s.name: f"http://{s.host}:{s.port}" for s in profile.servers}
    free = [s.model_copy(update={"port": 0}) for s in profile.servers]
    fleet = await start_fleet(profile.model_copy(update={"servers": tuple(free)}))
    try:
        urls = {planned[name]: url for name, url in fleet.urls.items()}
        raw = demo_config(data_dir, port, host, key, urls)
        # The key shown is the key that works, whatever SWARMGATE_ADMIN_KEY says.
        settings = parse_settings(raw, environment({"SWARMGATE_ADMIN_KEY": key}))
        # The same configuration, without the key, so that `swarmgate keys ...` can manage
        # this demo's store while it runs.
        config_file = data_dir / "swarmgate.yaml"
        shown = {**raw, "auth": {k: v for k, v in raw["auth"].items() if k != "admin_key"}}
        config_file.write_text(yaml.safe_dump(shown, sort_keys=False))
        base = f"http://{host}:{port}"

        def ready() -> None:
            click.echo(
                EXAMPLES.format(
                    base=base,
                    n=len(fleet.urls),
                    key=key,
                    config=shlex.quote(str(config_file)),
                    cli=cli_command(),
                )
            )

        await serve_in_loop(settings, host, port, on_ready=ready)
    finally:
        await fleet.stop()
        click.echo("swarmgate demo stopped.")


def run_demo(host: str, port: int, key: str | None, data_dir: Path | None) -> None:
    from swarmgate.auth.keys import check_admin_key, generate_secret

    key = key or (DEMO_KEY if host in LOOPBACK else generate_secret())
    check_admin_key(key)
    with tempfile.TemporaryDirectory(prefix="swarmgate-demo-") as tmp:
        directory = data_dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        asyncio.run(_run(host, port, key, directory))
