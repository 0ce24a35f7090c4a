"""The demo's gateway config and its simulated fleet must describe the same models and ports."""

from importlib.resources import files
from pathlib import Path

import yaml

from swarmgate.config import load_settings
from swarmgate.sim import load_fleet_profile

PACKAGE = files("swarmgate")


def test_every_deployment_of_the_example_config_is_served_by_the_demo_fleet() -> None:
    settings = load_settings(str(PACKAGE.joinpath("examples/swarmgate.yaml")), environ={})
    fleet = load_fleet_profile(str(PACKAGE.joinpath("sim/demo_fleet.yaml")))
    served = {f"http://{server.host}:{server.port}": set(server.models) for server in fleet.servers}
    for model_id, model in settings.models.items():
        for dep in model.deployments:
            assert model_id in served.get(dep.url, set()), f"{model_id} not served at {dep.url}"
    seed_models = {"mixtral-8x7b", "hermes-2", "openchat-3.5", "phi-3-mini"}
    for name in seed_models:
        assert len(settings.models[name].deployments) == 2


def test_repository_examples_point_at_the_packaged_files() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    packaged = yaml.safe_load(PACKAGE.joinpath("examples/swarmgate.yaml").read_text())
    assert yaml.safe_load((root / "swarmgate.yaml").read_text()) == packaged


def test_the_docs_stand_on_their_own_and_the_license_is_shipped() -> None:
    root = Path(__file__).resolve().parents[2]
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        assert "../shared" not in page.read_text(), page
    assert "Apache License" in (root / "LICENSE").read_text()
    assert 'license = "Apache-2.0"' in (root / "pyproject.toml").read_text()
