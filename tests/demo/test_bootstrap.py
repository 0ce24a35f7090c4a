"""``scripts/bootstrap.sh`` installs once, and again only when pyproject.toml or the extras
change (``demo.sh --help`` must not reinstall the package every time)."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _repo(tmp_path: Path) -> Path:
    """A copy of the script and pyproject.toml, with a stand-in .venv whose pip logs calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in {
        "python": "exit 0",
        "pip": 'echo "$@" >> "$(dirname "$0")/../pip.log"; touch "$(dirname "$0")/swarmgate"; '
        'chmod +x "$(dirname "$0")/swarmgate"',
    }.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return tmp_path


def _installs(repo: Path, *args: str) -> list[str]:
    subprocess.run(["bash", "scripts/bootstrap.sh", *args], cwd=repo, check=True, timeout=60)
    log = repo / ".venv" / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


def test_bootstrap_installs_only_when_something_changed(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    assert _installs(repo) == ["install -q -e ."]
    assert _installs(repo) == ["install -q -e ."]  # current: nothing to do
    with (repo / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency\n")
    assert len(_installs(repo)) == 2
    # Test extras are a different install; after it the plain one is current too.
    assert _installs(repo, "test")[-1] == "install -q -e .[test]"
    assert len(_installs(repo)) == 3
