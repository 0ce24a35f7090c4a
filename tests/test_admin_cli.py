"""``swarmgate keys ...``, ``swarmgate usage`` and ``swarmgate migrate`` on the store of a
RUNNING gateway.

The CLI runs as the operator would run it: ``python -m swarmgate.cli`` with the gateway's own
configuration file and server secret (``SWARMGATE_AUTH__SECRET``), in a separate process. What
it does must show on the running gateway: a key it creates works there, a key it revokes stops
working within ``auth.cache_ttl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from swarmgate.store.migrate import head_revision
from tests.auth.e2e import (
    Fleet,
    Node,
    admin,
    assert_clean_log,
    audit_records,
    call,
    create_key,
    sdk,
    wait_for,
)
from tests.plugins.processes import free_port

CACHE_TTL = 0.5


@pytest.fixture(scope="module")
def gw(fleet: Fleet) -> Iterator[Node]:
    url = f"http://127.0.0.1:{free_port()}"  # never called: keys are tried on /v1/models
    config = {
        "models": {"m": {"deployments": [{"url": url}]}, "m2": {"deployments": [{"url": url}]}}
    }
    node = fleet.gateway(config, {"SWARMGATE_AUTH__CACHE_TTL": str(CACHE_TTL)})
    yield node
    assert_clean_log(node)


class CLI:
    def __init__(self, fleet: Fleet, gw: Node) -> None:
        self.fleet = fleet
        self.gw = gw
        self.env = {"SWARMGATE_AUTH__SECRET": gw.env["SWARMGATE_AUTH__SECRET"]}

    def run(self, *args: str) -> tuple[int, str, str]:
        command, rest = args[0], args[1:]
        result = self.fleet.cli(
            *command.split(), "--config", str(self.gw.config_path), *rest, env=self.env
        )
        return result.returncode, result.stdout, result.stderr

    def json(self, *args: str) -> Any:
        code, out, err = self.run(*args)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture(scope="module")
def cli(fleet: Fleet, gw: Node) -> CLI:
    return CLI(fleet, gw)


def models_seen(gw: Node, secret: str) -> list[str]:
    with sdk(gw, secret) as client:
        return [m.id for m in client.models.list()]


def works(gw: Node, secret: str) -> bool:
    return call(gw.url + "/v1/models", key=secret).status == 200


def test_create_prints_a_secret_that_works_on_the_running_gateway(cli: CLI, gw: Node) -> None:
    created = cli.json(
        "keys create",
        "--owner",
        "carol",
        "--role",
        "user",
        "--tier",
        "pro",
        "--models",
        "m",
        "--expires",
        "30d",
    )
    secret, key = created["secret"], created["key"]
    assert secret.startswith("sk-sg-") and len(secret) == 49
    assert key["owner"] == "carol" and key["tier"] == "pro" and key["models"] == ["m"]
    assert abs(key["expires_at"] - (time.time() + 30 * 86400)) < 120
    assert models_seen(gw, secret) == ["m"]

    listed = cli.json("keys list", "--owner", "carol")
    assert [k["id"] for k in listed["data"]] == [key["id"]]
    shown = cli.json("keys show", key["id"])
    assert shown["prefixes"] == [secret[:12]]
    # The admin API sees the same store.
    assert admin(gw, "GET", f"/admin/keys/{key['id']}").body["tier"] == "pro"
    for text in (json.dumps(listed), json.dumps(shown)):
        assert secret not in text and secret[12:] not in text


def test_rotate_then_revoke_take_effect_on_the_running_gateway(cli: CLI, gw: Node) -> None:
    key_id, old = create_key(gw, owner="dave")
    assert works(gw, old)
    rotated = cli.json("keys rotate", key_id, "--grace", "1h")
    new = rotated["secret"]
    assert new != old and rotated["old_secret_valid_for"] == 3600
    assert works(gw, new) and works(gw, old)  # both cached now

    code, out, err = cli.run("keys revoke", key_id)
    assert code == 0, err
    revoked_at = time.monotonic()
    assert json.loads(out)["revoked_at"] is not None
    wait_for(lambda: not works(gw, new) and not works(gw, old), CACHE_TTL + 3, what="revoked")
    assert time.monotonic() - revoked_at < CACHE_TTL + 1.0
    with pytest.raises(openai.AuthenticationError):
        models_seen(gw, new)

    def audited() -> bool:
        records = audit_records(gw, actor="cli")
        return {("key.rotate", key_id), ("key.revoke", key_id)} <= {
            (r["action"], r["target"]) for r in records
        }

    wait_for(audited, 5, what="the CLI's actions audited")


def test_update_gives_a_key_a_tier_and_its_own_limits(cli: CLI, gw: Node) -> None:
    key_id, secret = create_key(gw, owner="erin")
    updated = cli.json("keys update", key_id, "--tier", "free", "--rpm", "2", "--concurrent", "1")
    assert updated["tier"] == "free" and updated["limits"] == {"rpm": 2, "concurrent": 1}
    assert admin(gw, "GET", f"/admin/keys/{key_id}").body["limits"] == {"rpm": 2, "concurrent": 1}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    def limited() -> bool:
        # The model's deployment is never reachable (502), but the limit refuses first.
        reply = call(gw.url + "/v1/chat/completions", "POST", key=secret, json_body=body)
        return reply.status == 429

    wait_for(limited, CACHE_TTL + 5, what="the key's own rpm applied")
    budgeted = cli.json("keys update", key_id, "--daily-budget", "2.5", "--monthly-budget", "40")
    assert budgeted["limits"] == {
        "rpm": 2,
        "concurrent": 1,
        "daily_budget": 2.5,
        "monthly_budget": 40.0,
    }
    code, _, err = cli.run("keys update", key_id, "--tier", "gold")
    assert code == 1 and "no tier 'gold'" in err
    code, _, err = cli.run("keys update", key_id)
    assert code == 2 and "nothing to change" in err


def test_expire(cli: CLI, gw: Node) -> None:
    key_id, secret = create_key(gw, owner="dave")
    later = cli.json("keys expire", key_id, "--in", "2h")
    assert abs(later["expires_at"] - (time.time() + 7200)) < 120 and later["active"] is True
    assert works(gw, secret)
    now = cli.json("keys expire", key_id)
    assert now["active"] is False
    wait_for(lambda: not works(gw, secret), CACHE_TTL + 3, what="expired")


def test_usage_reports_the_running_gateways_ledger(cli: CLI, gw: Node) -> None:
    key_id, secret = create_key(gw, owner="dora")
    with sdk(gw, secret) as client:
        for model in ("m", "nope"):  # m's deployment is down (a 502), nope unknown (a 404)
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}]
                )

    def report() -> Any:
        return cli.json("usage", "--owner", "dora", "--by", "key,model", "--bucket", "none")

    wait_for(lambda: report()["totals"]["requests"] == 2, 10, 0.2, "the ledger rows")
    rows = report()["data"]
    assert {(r["key"], r["model"], r["requests"], r["errors"]) for r in rows} == {
        (key_id, "m", 1, 1),
        (key_id, "nope", 1, 1),
    }
    code, out, err = cli.run("usage", "--key", key_id, "--by", "model", "--since", "1h", "--csv")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("bucket,date,model,requests,errors,")
    assert sorted(line.split(",")[2] for line in lines[1:]) == ["m", "nope"]
    assert cli.json("usage", "--key", key_id, "--until", "2000-01-01")["data"] == []


def test_migrate_prints_the_revision(cli: CLI) -> None:
    code, out, err = cli.run("migrate")
    assert code == 0, err
    assert out.strip() == f"store at revision {head_revision()}"


@pytest.mark.parametrize(
    "args",
    [
        ("keys show", "key_0000000000000000"),
        ("keys rotate", "key_0000000000000000", "--grace", "1h"),
        ("keys create", "--role", "emperor"),
        ("keys create", "--expires", "soon"),
        # Issue 11: beyond the database's integers, beyond any sane lifetime.
        ("keys list", "--offset", "9223372036854775808"),
        ("keys create", "--expires", "99999999999d"),
        ("keys rotate", "key_0000000000000000", "--grace", "99999999999d"),
        ("keys create", "--models", "m,nope"),
        ("keys create", "--name", "bell\x07"),
        ("usage", "--since", "yesterday"),
        ("usage", "--by", "tier"),
        ("usage", "--since", "2030-01-02", "--until", "2030-01-01"),
    ],
)
def test_errors_are_one_clear_line(cli: CLI, args: tuple[str, ...]) -> None:
    code, out, err = cli.run(*args)
    assert code != 0
    assert "Traceback" not in err, err
    assert err.startswith("swarmgate: ") and err.count("\n") == 1, err
    assert out == ""


def _store_config(tmp_path: Path, name: str, **store: Any) -> tuple[dict[str, Any], Path]:
    url = f"http://127.0.0.1:{free_port()}"
    config = {
        "models": {"m": {"deployments": [{"url": url}]}},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}", **store},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def test_migrate_sets_up_a_store_that_is_not_migrated_on_start(
    fleet: Fleet, tmp_path: Path
) -> None:
    config, path = _store_config(tmp_path, "manual", migrate_on_start=False)
    result = fleet.cli("migrate", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"store at revision {head_revision()}"
    assert result.stderr == ""  # no "holds no keys yet": a store being set up has none
    gw = fleet.gateway(config)  # and serve starts on it, without migrating it itself
    assert admin(gw, "GET", "/admin/keys").status == 200
    gw.stop()


def test_migrate_never_warns_about_an_empty_store(fleet: Fleet, tmp_path: Path) -> None:
    _, path = _store_config(tmp_path, "auto", migrate_on_start=True)
    result = fleet.cli("migrate", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_store_commands_run_without_the_deployments_api_keys(fleet: Fleet, tmp_path: Path) -> None:
    config, path = _store_config(tmp_path, "upstream-keys")
    config["models"]["m"]["deployments"][0]["api_key_env"] = "UPSTREAM_KEY_THAT_IS_NOT_SET"
    path.write_text(yaml.safe_dump(config))
    created = fleet.cli("keys", "create", "--config", str(path), "--owner", "erin")
    assert created.returncode == 0, created.stderr
    listed = fleet.cli("keys", "list", "--config", str(path), "--owner", "erin")
    assert listed.returncode == 0, listed.stderr
    assert [k["owner"] for k in json.loads(listed.stdout)["data"]] == ["erin"]
    assert fleet.cli("migrate", "--config", str(path)).returncode == 0
    # Serving still needs them: the gateway would call that upstream.
    checked = fleet.cli("check-config", str(path))
    assert checked.returncode == 2
    assert "$UPSTREAM_KEY_THAT_IS_NOT_SET is not set" in checked.stderr
