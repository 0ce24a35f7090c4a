"""deploy/systemd/swarmgate.service passes ``systemd-analyze verify`` with nothing to say.

``verify`` runs on a root laid out as install.sh lays out a box (the unit in
/etc/systemd/system, the gateway at /opt/swarmgate/bin/swarmgate) with the system's own units
beside it; it exits 0 on unknown keys and bad values (it only warns), so any output fails.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swarmgate.config import Server

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "swarmgate.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def _verify(unit_text: str, root: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/bootstrap.sh test installs systemd"
    if not (root / "usr").exists():
        shutil.copytree(SYSTEM_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
        bin_dir = root / "opt" / "swarmgate" / "bin"
        bin_dir.mkdir(parents=True)
        shutil.copy2(Path(sys.prefix) / "bin" / "swarmgate", bin_dir / "swarmgate")
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    (units / "swarmgate.service").write_text(unit_text)
    return subprocess.run(
        [analyze, "verify", "--man=no", f"--root={root}", "/etc/systemd/system/swarmgate.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_analyze_verify_has_nothing_to_say(tmp_path: Path) -> None:
    done = _verify(UNIT.read_text(), tmp_path)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize(
    ("line", "wrong"),
    [("RestartSec=2", "RestartSecs=2"), ("ProtectSystem=strict", "ProtectSystem=strictly")],
)
def test_verify_would_catch_a_mistake(tmp_path: Path, line: str, wrong: str) -> None:
    text = UNIT.read_text()
    assert line in text
    done = _verify(text.replace(line, wrong), tmp_path)
    assert done.stdout + done.stderr != ""


def test_the_unit_runs_the_installed_gateway_and_lets_it_drain() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    # install.sh's prefix, as the unit's header comment installs it.
    assert service["ExecStart"] == "/opt/swarmgate/bin/swarmgate serve"
    assert "sh deploy/docker/install.sh . /opt/swarmgate" in UNIT.read_text()
    assert service["Environment"] == "SWARMGATE_CONFIG=/etc/swarmgate/swarmgate.yaml"
    assert service["DynamicUser"] == "yes"  # never root
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    # systemd waits for the graceful shutdown before it kills.
    assert float(service["TimeoutStopSec"]) > Server().shutdown_grace
