"""The ``swarmgate`` command: serve, sim, demo, check-config, check, version (keys, ip-blocks
and migrate: the store; workers, reload and status: a running gateway)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

import click

from swarmgate import __version__
from swarmgate.config import (
    Settings,
    load_settings,
    profile_names,
    profile_notes,
    seed_translation,
    worker_problem,
)
from swarmgate.errors import ConfigError, StoreError

CONFIG_HELP = "YAML configuration file (SWARMGATE_* environment variables override it)."
PROFILE_HELP = "The entry of the file's profiles laid over it (development, production, ...)."


def _load(path: str | None, profile: str | None = None) -> Settings:
    try:
        return load_settings(path, profile=profile)
    except ConfigError as exc:
        where = path or "(environment)"
        if profile:
            where += f", profile {profile}"
        click.echo(f"swarmgate: invalid configuration in {where}:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


class Commands(click.Group):
    """The store commands load SQLAlchemy and Alembic; import them only when they are used."""

    LAZY: ClassVar[dict[str, str]] = {
        "keys": "keys",
        "ip-blocks": "ip_blocks",
        "usage": "usage",
        "migrate": "migrate_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY, "workers", "reload", "status"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "workers":  # a running gateway's API, not the store
            from swarmgate.workers_cli import workers

            return workers
        if cmd_name == "status":
            from swarmgate.status_cli import status

            return status
        if cmd_name == "reload":
            from swarmgate.reload_cli import reload

            return reload
        if cmd_name in self.LAZY:
            from swarmgate import admin_cli

            command: click.Command = getattr(admin_cli, self.LAZY[cmd_name])
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="swarmgate")
def main() -> None:
    """swarmgate: one OpenAI-compatible endpoint in front of a swarm of model servers."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="SWARMGATE_CONFIG",
    show_envvar=True,
    help=CONFIG_HELP + " Required, here or in SWARMGATE_CONFIG.",
)
@click.option("--host", default=None, help="Address to bind (default: server.host).")
@click.option("--port", type=int, default=None, help="Port to bind (default: server.port).")
@click.option(
    "--workers", type=int, default=None, help="Worker processes (default: server.workers)."
)
@click.option(
    "--server",
    "server_kind",
    type=click.Choice(["uvicorn", "granian"]),
    default=None,
    help="ASGI server (default: server.server).",
)
@click.option("--profile", default=None, envvar="SWARMGATE_PROFILE", help=PROFILE_HELP)
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    server_kind: str | None,
    profile: str | None,
) -> None:
    """Run the gateway."""
    from swarmgate.serve import serve as run

    if config_path is None:
        # Not click's required=True: its help would say [required] of an option that the
        # environment variable can stand in for.
        raise click.UsageError("Missing option '--config' (or set SWARMGATE_CONFIG).")
    settings = _load(config_path, profile)
    s = settings.server
    translation = seed_translation(config_path)
    for line in translation.mapped if translation else ():
        if line.startswith("service.workers:"):  # a change the file did not ask for
            click.echo(f"swarmgate: {line}", err=True)
    try:
        run(
            config_path,
            settings,
            host or s.host,
            s.port if port is None else port,
            workers or s.workers,
            server_kind or s.server,
            profile=profile,
        )
    except ConfigError as exc:
        click.echo(f"swarmgate: invalid configuration in {config_path}:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    except StoreError as exc:
        click.echo(f"swarmgate: cannot start: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="Simulator fleet profile (YAML).",
)
@click.option(
    "--testing",
    is_flag=True,
    help="Honour the X-Sim-Fail request header (failure injection per request).",
)
def sim(config_path: str, testing: bool) -> None:
    """Run simulated OpenAI-compatible model servers from a profile file."""
    from swarmgate.sim import main_sim

    main_sim(config_path, testing)


@main.command(name="check-config")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--profile", default=None, help="Check this profile only (default: all of them).")
def check_config(path: str, profile: str | None) -> None:
    """Validate a configuration file, and each of its profiles laid over it; print every
    problem with its path.

    A file in the unified-api-gateway format (service, gateway, load_balancer, models with an
    endpoint each, performance, monitoring) is translated: its mapping is printed too."""
    # "": the base as the file gives it, whatever SWARMGATE_PROFILE says; then each profile.
    settings = _load(path, profile or "")
    translation = seed_translation(path)
    if translation is not None:
        click.echo(f"{path}: unified-api-gateway format, read as swarmgate's configuration:")
        for line in translation.mapped:
            click.echo(f"  {line}")
        click.echo("ignored (no equivalent in swarmgate):")
        for line in translation.ignored:
            click.echo(f"  {line}")
    deployments = sum(len(m.deployments) for m in settings.models.values())
    click.echo(f"{path}: OK ({len(settings.models)} models, {deployments} deployments)")
    problem = worker_problem(settings, settings.server.workers)
    if problem is not None:
        click.echo(f"swarmgate: warning: serve will refuse this: {problem}", err=True)
    failed = False
    for name in [profile] if profile else profile_names(path):
        failed |= not _check_profile(path, name)
    if failed:
        sys.exit(2)


def _check_profile(path: str, name: str) -> bool:
    """One profile over the base: OK, with what it maps where, or its problems."""
    try:
        settings = load_settings(path, profile=name)
    except ConfigError as exc:
        click.echo(f"swarmgate: invalid configuration in {path}, profile {name}:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        return False
    click.echo(f"  profile {name}: OK ({len(settings.models)} models)")
    for note in profile_notes(path, name):
        click.echo(f"    {note}")
    refused = worker_problem(settings, settings.server.workers)
    if refused is not None:
        click.echo(f"swarmgate: warning: profile {name}: serve will refuse: {refused}", err=True)
    return True


@main.command()
@click.option("--url", required=True, help="The gateway's base URL (http://127.0.0.1:8000).")
@click.option("--key", default=None, envvar="SWARMGATE_CHECK_KEY", help="API key to call it with.")
@click.option("--verbose", "-v", is_flag=True, help="Say why each check passed too.")
def check(url: str, key: str | None, verbose: bool) -> None:
    """Run the gateway test list against a running gateway: health, root endpoint, models,
    chat, streaming, authentication, rate limiting, load spread. Exits 1 if a check fails."""
    from swarmgate.checks import report, run_checks

    outcomes = run_checks(url, key)
    for line in report(outcomes, verbose):
        click.echo(line)
    if any(o.verdict == "FAIL" for o in outcomes):
        sys.exit(1)


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway address.")
@click.option("--port", default=8000, show_default=True, help="Gateway port.")
@click.option(
    "--key",
    default=None,
    envvar="SWARMGATE_ADMIN_KEY",
    help="API key the demo accepts (sk-sg-...); default: the README's demo key on a loopback "
    "address, a new key on any other.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the demo keeps its SQLite store (default: a temporary directory).",
)
def demo(host: str, port: int, key: str | None, data_dir: str | None) -> None:
    """Start a simulated fleet of four models and the gateway in front of it."""
    from swarmgate.demo import run_demo

    try:
        run_demo(host, port, key, Path(data_dir) if data_dir else None)
    except (ConfigError, StoreError) as exc:
        click.echo(f"swarmgate demo: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
