"""YAML + environment → frozen settings: the example parses, and every mistake is reported with
its path, all at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from swarmgate.config import (
    Settings,
    Timeouts,
    config_path_from_env,
    load_settings,
    parse_duration,
    parse_settings,
)
from swarmgate.errors import ConfigError
from swarmgate.types import ModelType

EXAMPLE = Path(__file__).parents[1] / "src" / "swarmgate" / "examples" / "swarmgate.yaml"
NO_ENV: dict[str, str] = {}


def minimal(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"models": {"m": {"deployments": [{"url": "http://127.0.0.1:9000"}]}}}
    raw.update(extra)
    return raw


def problems(raw: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_settings(raw, NO_ENV if environ is None else environ)
    assert str(exc.value) == "\n".join(exc.value.problems)
    return exc.value.problems


def test_the_example_configuration_parses() -> None:
    settings = load_settings(EXAMPLE, NO_ENV)
    assert set(settings.models) == {
        "mixtral-8x7b",
        "hermes-2",
        "openchat-3.5",
        "phi-3-mini",
        "embed-small",
        "image-small",
        "tts-small",
        "whisper-small",
    }
    assert settings.default_model == "mixtral-8x7b"
    assert settings.models["image-small"].type is ModelType.IMAGE
    assert settings.models["tts-small"].type is ModelType.SPEECH
    assert settings.models["whisper-small"].type is ModelType.TRANSCRIPTION
    assert settings.models["embed-small"].type is ModelType.EMBEDDING
    assert settings.models["phi-3-mini"].aliases == ("phi3",)
    assert len(settings.models["hermes-2"].deployments) == 2
    sticky = settings.models["hermes-2"].balancer
    assert (sticky.strategy, sticky.hash_on) == ("consistent_hash", ("header", "user"))
    assert settings.server.max_body_bytes == 4194304
    assert settings.timeouts == Timeouts(connect=5, first_byte=60, idle=30, total=600)
    assert settings.limits.max_share == {"free": 0.5}
    assert settings.limits.queue["free"].max_wait == 2


def test_limits_default_to_seed_001s_tiers_and_name_only_known_tiers() -> None:
    limits = parse_settings(minimal(), NO_ENV).limits
    priorities = {name: tier.priority for name, tier in limits.all_tiers().items()}
    assert priorities == {"default": 0, "free": 0, "pro": 10, "enterprise": 20}
    assert limits.max_share == {} and limits.queue == {}
    raw = minimal(
        limits={
            "tiers": {"gold": {"priority": 5}},
            "max_share": {"gold": 0.2, "silver": 0.5, "default": 0.1},
            "queue": {"bronze": {"max_wait": 1}},
        }
    )
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, NO_ENV)
    assert len(info.value.problems) == 2
    assert "limits.max_share.silver: not a tier" in info.value.problems[0]
    assert "limits.queue.bronze: not a tier" in info.value.problems[1]
    for share in (0, 1.5):
        with pytest.raises(ConfigError, match=r"limits\.max_share\.free"):
            parse_settings(minimal(limits={"max_share": {"free": share}}), NO_ENV)


def test_defaults_and_frozen() -> None:
    settings = parse_settings(minimal(), NO_ENV)
    assert settings.server.port == 8000
    assert settings.default_model is None
    dep = settings.models["m"].deployments[0]
    assert dep.url == "http://127.0.0.1:9000"
    assert dep.api_key is None
    assert settings.timeouts_for(dep) is settings.timeouts
    with pytest.raises(ValidationError):
        settings.server.port = 1  # type: ignore[misc]


def test_a_deployment_may_override_timeouts_and_urls_lose_their_trailing_slash() -> None:
    raw = minimal()
    raw["models"]["m"]["deployments"] = [
        {"url": "http://h:1/v/", "timeouts": {"first_byte": 0.5}},
    ]
    dep = parse_settings(raw, NO_ENV).models["m"].deployments[0]
    assert dep.url == "http://h:1/v"
    assert parse_settings(raw, NO_ENV).timeouts_for(dep).first_byte == 0.5


def test_every_bad_url_is_reported_with_its_path() -> None:
    raw = {
        "models": {
            "phi-3-mini": {
                "deployments": [
                    {"url": "http://127.0.0.1:1"},
                    {"url": "localhost:8080"},
                    {"url": "http://h:notaport"},
                ]
            },
            "other": {"deployments": [{"url": "ftp://h"}]},
        }
    }
    found = problems(raw)
    assert found[:3] == [
        "models.phi-3-mini.deployments[1].url: not a URL (got 'localhost:8080')",
        "models.phi-3-mini.deployments[2].url: not a URL (got 'http://h:notaport')",
        "models.other.deployments[0].url: not a URL (got 'ftp://h')",
    ]


def test_one_bad_deployment_is_one_problem() -> None:
    raw = {"models": {"m": {"deployments": [{"url": "ftp://h"}]}}}
    assert problems(raw) == ["models.m.deployments[0].url: not a URL (got 'ftp://h')"]


def test_unknown_fields_are_errors() -> None:
    raw = minimal(servre={"port": 1})
    raw["models"]["m"]["description"] = "fine"
    raw["models"]["m"]["colour"] = "blue"
    found = problems(raw)
    assert found == [
        "models.m.colour: unknown field",
        "servre: unknown field (did you mean 'server'?)",
    ]
    raw["models"]["m"].pop("colour")
    raw["models"]["m"]["deployments"].append({"url": "http://h:2", "wieght": 2})
    assert "models.m.deployments[1].wieght: unknown field (did you mean 'weight'?)" in problems(raw)


def test_missing_and_empty_sections() -> None:
    assert problems({}) == ["models: required"]
    assert problems({"models": {}}) == [
        "models: Dictionary should have at least 1 item after validation, not 0"
    ]
    assert problems({"models": {"m": {}}}) == ["models.m.deployments: required"]
    empty = problems({"models": {"m": {"deployments": []}}})
    assert len(empty) == 1 and empty[0].startswith("models.m.deployments: ")
    assert problems(None) == ["models: required"]
    assert problems(["a", "list"]) == ["(top level): expected a mapping of sections"]


def test_wrong_types_and_ranges() -> None:
    raw = minimal(server={"port": 70000, "max_body_bytes": 10}, timeouts={"idle": 0})
    raw["models"]["m"]["type"] = "video"
    found = problems(raw)
    paths = [p.split(":")[0] for p in found]
    assert paths == ["server.port", "server.max_body_bytes", "timeouts.idle", "models.m.type"]


def test_alias_collisions() -> None:
    raw = {
        "models": {
            "a": {"aliases": ["x"], "deployments": [{"url": "http://h:1"}]},
            "b": {"aliases": ["x"], "deployments": [{"url": "http://h:2"}]},
        }
    }
    assert problems(raw) == ["models.b.aliases: 'x' is already an alias of a"]
    raw["models"]["b"]["aliases"] = ["a"]
    assert problems(raw) == ["models.b.aliases: 'a' is also a model name"]


def test_default_model_must_exist_and_may_be_an_alias() -> None:
    assert problems(minimal(default_model="gpt-4")) == [
        "default_model: 'gpt-4' is not a configured model"
    ]
    raw = minimal(default_model="mm")
    raw["models"]["m"]["aliases"] = ["mm"]
    assert parse_settings(raw, NO_ENV).default_model == "mm"


def test_an_api_key_in_the_file_is_rejected_and_never_echoed() -> None:
    raw = minimal()
    raw["models"]["m"]["deployments"][0]["api_key"] = "sk-very-secret"
    found = problems(raw)
    assert found == [
        "models.m.deployments[0].api_key: never put a key in the file; "
        "name its environment variable in api_key_env"
    ]
    assert "sk-very-secret" not in "\n".join(found)


def test_api_key_env_is_resolved_or_reported() -> None:
    raw = minimal()
    raw["models"]["m"]["deployments"][0]["api_key_env"] = "UPSTREAM_KEY"
    assert problems(raw) == ["models.m.deployments[0].api_key_env: $UPSTREAM_KEY is not set"]
    settings = parse_settings(raw, {"UPSTREAM_KEY": "k-123"})
    dep = settings.models["m"].deployments[0]
    assert dep.api_key == "k-123"
    assert "k-123" not in repr(dep)
    assert "api_key" not in dep.model_dump()


def test_every_problem_is_reported_at_once() -> None:
    raw = minimal(default_model="nope", bogus=1)
    raw["models"]["m"]["deployments"][0]["api_key_env"] = "MISSING_ENV"
    raw["models"]["m"]["deployments"].append({"url": "nope"})
    found = problems(raw)
    assert "models.m.deployments[0].api_key_env: $MISSING_ENV is not set" in found
    assert "models.m.deployments[1].url: not a URL (got 'nope')" in found
    assert "bogus: unknown field" in found
    # Cross-field problems come with the others, not once those are fixed.
    assert "default_model: 'nope' is not a configured model" in found


def test_environment_overrides() -> None:
    env = {
        "SWARMGATE_SERVER__PORT": "9000",
        "SWARMGATE_SERVER__CORS_ORIGINS": "[https://a.example, https://b.example]",
        "SWARMGATE_TIMEOUTS__IDLE": "2.5",
        "SWARMGATE_AUTH__JWT__ENABLED": "false",
        "SWARMGATE_AUTH__IP__MAX_FAILURES": "3",
        "SWARMGATE_ADMIN_KEY": "sk-sg-admin",
        "SWARMGATE_CONFIG": "/ignored.yaml",
        "OTHER_VARIABLE": "ignored",
    }
    settings = parse_settings(minimal(server={"port": 1, "host": "0.0.0.0"}), env)
    assert settings.server.port == 9000
    assert settings.server.host == "0.0.0.0"  # untouched siblings survive
    assert settings.server.cors_origins == ("https://a.example", "https://b.example")
    assert settings.timeouts.idle == 2.5
    assert settings.auth.ip.max_failures == 3
    assert settings.auth.admin_key == "sk-sg-admin"


def test_environment_overrides_are_validated_like_the_file() -> None:
    assert problems(minimal(), {"SWARMGATE_SERVER__PORT": "many"})[0].startswith("server.port: ")
    assert problems(minimal(), {"SWARMGATE_SERVER__NOPE": "1"}) == ["server.nope: unknown field"]


def test_environment_alone_can_name_the_default_model() -> None:
    settings = parse_settings(minimal(), {"SWARMGATE_DEFAULT_MODEL": "m"})
    assert settings.default_model == "m"


def test_load_settings_reads_yaml_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(minimal(server={"port": 1234})))
    assert load_settings(path, NO_ENV).server.port == 1234
    assert load_settings(str(path), {"SWARMGATE_SERVER__PORT": "4321"}).server.port == 4321
    assert isinstance(load_settings(path, NO_ENV), Settings)


def test_a_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("models:\n  m: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, NO_ENV)
    assert len(exc.value.problems) == 1
    assert exc.value.problems[0].startswith(f"{path}: not valid YAML")
    assert "line" in exc.value.problems[0]


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as exc:
        load_settings(path, NO_ENV)
    assert exc.value.problems == [f"{path}: No such file or directory"]


def test_an_empty_file_is_missing_its_models(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, NO_ENV)
    assert exc.value.problems == ["models: required"]


def test_config_path_from_env() -> None:
    assert config_path_from_env({"SWARMGATE_CONFIG": "/etc/sg.yaml"}) == "/etc/sg.yaml"
    assert config_path_from_env({}) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("12h", 43200.0), (" 2D ", 172800.0)],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "-5m", "nan", "inf", "m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_jwks_urls_must_be_https_except_on_this_machine() -> None:
    base = {"models": {"m": {"deployments": [{"url": "http://h:1"}]}}}
    for url in ("https://issuer.example/jwks", "http://127.0.0.1:9/jwks", "http://localhost/j"):
        parse_settings({**base, "auth": {"jwt": {"jwks_url": url}}}, {})
    with pytest.raises(ConfigError) as exc:
        parse_settings({**base, "auth": {"jwt": {"jwks_url": "http://issuer.example/j"}}}, {})
    assert "auth.jwt.jwks_url: must be an https:// URL" in exc.value.problems[0]


def test_a_deployment_url_may_end_in_v1() -> None:
    raw = {
        "models": {"m": {"deployments": [{"url": "http://h:8000/v1/"}, {"url": "http://h:8000"}]}}
    }
    settings = parse_settings(raw, {})
    assert [d.url for d in settings.models["m"].deployments] == ["http://h:8000", "http://h:8000"]


def test_secrets_from_the_environment_are_taken_verbatim() -> None:
    raw = {"models": {"m": {"deployments": [{"url": "http://h:1"}]}}}
    env = {"SWARMGATE_AUTH__SECRET": "ab #c 0123", "SWARMGATE_AUTH__JWT__HS256_SECRET": "0123"}
    settings = parse_settings(raw, env)
    assert settings.auth.secret == "ab #c 0123"
    assert settings.auth.jwt.hs256_secret == "0123"


def test_relative_paths_resolve_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "gw.yaml"
    conf.parent.mkdir()
    conf.write_text(yaml.safe_dump(minimal(audit={"spool_path": "spool/audit.jsonl"})))
    settings = load_settings(conf, NO_ENV)
    assert settings.store.url == f"sqlite+aiosqlite:///{conf.parent / 'swarmgate.db'}"
    assert settings.auth.secret_file == str(conf.parent / "swarmgate.secret")
    assert settings.audit.spool_path == str(conf.parent / "spool" / "audit.jsonl")
    # The same from another working directory, and for a relative path to the file.
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert load_settings(Path("../etc/gw.yaml"), NO_ENV) == settings


def test_absolute_and_non_file_paths_are_left_as_they_are(tmp_path: Path) -> None:
    conf = tmp_path / "gw.yaml"
    raw = minimal(
        store={"url": "sqlite:////var/lib/sg/store.db?timeout=5"},
        auth={"secret_file": "/run/secrets/sg"},
        audit={"spool_path": "/var/spool/sg.jsonl"},
    )
    conf.write_text(yaml.safe_dump(raw))
    settings = load_settings(conf, NO_ENV)
    assert settings.store.url == "sqlite:////var/lib/sg/store.db?timeout=5"
    assert settings.auth.secret_file == "/run/secrets/sg"
    assert settings.audit.spool_path == "/var/spool/sg.jsonl"
    conf.write_text(yaml.safe_dump(minimal(store={"url": "sqlite:///rel.db?timeout=5"})))
    settings = load_settings(conf, NO_ENV)
    assert settings.store.url == f"sqlite:///{tmp_path / 'rel.db'}?timeout=5"
    assert settings.auth.secret_file == str(tmp_path / "rel.secret")  # beside the store
    for url in ("postgresql://u@db/gate", "sqlite://", "sqlite:///:memory:"):
        env = {"SWARMGATE_STORE__URL": url}
        settings = load_settings(conf, env)
        assert settings.store.url == url
        assert settings.auth.secret_file == str(tmp_path / "swarmgate.secret")


def test_without_a_config_file_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"SWARMGATE_MODELS": '{"m": {"deployments": [{"url": "http://127.0.0.1:9"}]}}'}
    settings = load_settings(None, env)
    assert settings.store.url == f"sqlite+aiosqlite:///{tmp_path / 'swarmgate.db'}"
    assert settings.audit.spool_path == str(tmp_path / "swarmgate-audit.spool")


def test_store_commands_need_no_deployment_keys() -> None:
    raw = minimal()
    raw["models"]["m"]["deployments"][0]["api_key_env"] = "UPSTREAM_KEY"
    assert "models.m.deployments[0].api_key_env: $UPSTREAM_KEY is not set" in problems(raw)
    settings = parse_settings(raw, {}, deployment_keys=False)
    assert settings.models["m"].deployments[0].api_key is None
    settings = parse_settings(raw, {"UPSTREAM_KEY": "k"}, deployment_keys=False)
    assert settings.models["m"].deployments[0].api_key is None  # not even read
    raw["models"]["m"]["deployments"][0]["api_key"] = "in-the-file"
    with pytest.raises(ConfigError) as exc:
        parse_settings(raw, {}, deployment_keys=False)
    assert exc.value.problems[0].endswith(
        "never put a key in the file; name its environment variable in api_key_env"
    )


def test_name_clashes_and_a_bad_default_model_are_reported_together() -> None:
    raw = minimal(default_model="gpt-4")
    raw["models"]["n"] = {"aliases": ["m"], "deployments": [{"url": "http://127.0.0.1:9001"}]}
    assert problems(raw) == [
        "models.n.aliases: 'm' is also a model name",
        "default_model: 'gpt-4' is not a configured model",
    ]
    raw["server"] = {"port": "eighty"}
    found = problems(raw)
    assert "default_model: 'gpt-4' is not a configured model" in found
    assert any(p.startswith("server.port: ") and p.endswith("(got 'eighty')") for p in found)


def test_secrets_are_never_echoed_in_problems() -> None:
    found = problems(minimal(auth={"admin_key": 123456789, "secret": ["s3cr3t"]}))
    assert found and all("123456789" not in p and "s3cr3t" not in p for p in found)
    found = problems(minimal(store={"url": 42424242}))
    assert found and all("42424242" not in p for p in found)


def test_an_unknown_field_suggests_the_nearest_known_one_of_its_section() -> None:
    assert problems(minimal(timeoutz={"idle": 1})) == [
        "timeoutz: unknown field (did you mean 'timeouts'?)"
    ]
    assert problems(minimal(server={"prot": 1})) == [
        "server.prot: unknown field (did you mean 'port'?)"
    ]


def test_a_yaml_syntax_error_points_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("models:\n  m: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, NO_ENV)
    assert "<unicode string>" not in exc.value.problems[0]
    assert f'in "{path}", line' in exc.value.problems[0]


def _balancer(value: Any) -> dict[str, Any]:
    raw = minimal()
    raw["models"]["m"]["balancer"] = value
    return raw


def test_a_models_balancer_is_a_name_or_a_strategy_with_its_options() -> None:
    assert parse_settings(minimal(), NO_ENV).models["m"].balancer is None  # left out
    assert parse_settings(_balancer("round_robin"), NO_ENV).models["m"].balancer.strategy == (
        "round_robin"
    )
    # Seed 002's name, written as it is there.
    least = parse_settings(_balancer("Least-Connections"), NO_ENV).models["m"].balancer
    assert least.strategy == "least_outstanding"
    sticky = parse_settings(
        _balancer({"strategy": "consistent_hash", "hash_on": "user", "load_factor": 1.5}), NO_ENV
    ).models["m"]
    assert sticky.balancer.hash_on == ("user",) and sticky.balancer.load_factor == 1.5
    assert sticky.balancer.header == "X-Session-ID"


def _strategy_of(raw: dict[str, Any], model: str = "m") -> str:
    settings = parse_settings(raw, NO_ENV)
    return settings.balancing_of(settings.models[model]).strategy


def test_a_model_naming_no_balancer_is_resource_aware_where_every_deployment_is_scraped() -> None:
    scraped = {"scrape": {"interval": 2}}
    assert _strategy_of(minimal()) == "least_outstanding"  # no scraping
    assert _strategy_of(minimal(**scraped)) == "resource_aware"  # metrics_path: /metrics
    both = minimal(**scraped)
    both["models"]["m"]["deployments"] = [
        {"url": "http://127.0.0.1:9000"},
        {"url": "http://127.0.0.1:9001", "metrics_path": "/stats/prometheus"},
    ]
    assert _strategy_of(both) == "resource_aware"
    # One deployment never scraped: the scraped ones would look busier than it.
    both["models"]["m"]["deployments"][1]["metrics_path"] = None
    assert _strategy_of(both) == "least_outstanding"
    # A balancer named is kept, scraped or not.
    named = _balancer("round_robin") | scraped
    assert _strategy_of(named) == "round_robin"
    assert _strategy_of(_balancer("least_outstanding") | scraped) == "least_outstanding"


def test_a_bad_balancer_is_reported_with_its_path() -> None:
    [unknown] = problems(_balancer("fastest"))
    assert unknown.startswith("models.m.balancer.strategy: Input should be 'least_outstanding'")
    assert unknown.endswith("(got 'fastest')")
    assert problems(_balancer({"strategy": "round_robin", "load_factor": 2, "hash_on": "key"})) == [
        "models.m.balancer: 'hash_on' is not an option of strategy round_robin (it takes no "
        "options)",
        "models.m.balancer: 'load_factor' is not an option of strategy round_robin (it takes no "
        "options)",
    ]
    found = problems(
        _balancer(
            {
                "strategy": "consistent_hash",
                "hash_on": ["header", "cookie"],
                "header": "X Session",
                "load_factor": 0.5,
                "load_fator": 2,
            }
        )
    )
    assert [p.split(":")[0] for p in found] == [
        "models.m.balancer.hash_on[1]",
        "models.m.balancer.header",
        "models.m.balancer.load_factor",
        "models.m.balancer.load_fator",
    ]
    assert found[-1].endswith("unknown field (did you mean 'load_factor'?)")
    assert problems(_balancer({"strategy": "consistent_hash", "hash_on": []})) == [
        "models.m.balancer.hash_on: name at least one of header, user, key"
    ]
