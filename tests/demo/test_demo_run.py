"""``swarmgate demo`` as a user runs it: a real process, the OpenAI SDK, Ctrl-C."""

import json
import signal
import subprocess
import time
from pathlib import Path

import openai
import pytest

from swarmgate.demo import DEMO_KEY
from tests.plugins.processes import (
    SWARMGATE,
    Process,
    free_port,
    new_admin_key,
    spawn,
    wait_healthy,
)

pytestmark = pytest.mark.slow


def test_demo_serves_the_four_models_and_stops_cleanly_on_ctrl_c(tmp_path) -> None:
    port = free_port()
    key = new_admin_key()
    log = tmp_path / "demo.log"
    # --key wins over SWARMGATE_ADMIN_KEY: the key the demo prints is the one that works.
    env = {"SWARMGATE_ADMIN_KEY": new_admin_key()}
    proc = spawn([*SWARMGATE, "demo", "--port", str(port), "--key", key], log, env)
    demo = Process(proc, log, f"http://127.0.0.1:{port}")
    second_log = tmp_path / "second.log"
    second_port = free_port()
    second = Process(
        spawn([*SWARMGATE, "demo", "--port", str(second_port)], second_log),
        second_log,
        f"http://127.0.0.1:{second_port}",
    )
    try:
        wait_healthy(demo, "/health/ready")
        # A second demo runs beside the first: its fleet takes free ports too.
        wait_healthy(second, "/health/ready")
        # Without --key, on this machine: the README's key, so its examples work as written.
        assert DEMO_KEY in (Path(__file__).parents[2] / "README.md").read_text()
        models = openai.OpenAI(base_url=second.url + "/v1", api_key=DEMO_KEY, max_retries=0)
        assert "phi-3-mini" in {m.id for m in models.models.list()}
        client = openai.OpenAI(base_url=demo.url + "/v1", api_key=key, max_retries=0)
        ids = {m.id for m in client.models.list()}
        assert {"mixtral-8x7b", "hermes-2", "openchat-3.5", "phi-3-mini"} <= ids
        for model in ("mixtral-8x7b", "hermes-2", "openchat-3.5", "phi-3-mini"):
            reply = client.chat.completions.create(
                model=model, max_tokens=4, messages=[{"role": "user", "content": "Hello!"}]
            )
            assert reply.choices[0].message.content
        text = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="phi-3-mini",
                stream=True,
                max_tokens=6,
                messages=[{"role": "user", "content": "Tell me a story"}],
            )
            if chunk.choices
        )
        assert text
        # One short access line a request, on the console (written within 0.2 s), the key
        # named by its id only.
        # Five requests, five lines: the writer batches them, so wait for all of them.
        deadline = time.monotonic() + 10
        while len(access := [ln for ln in demo.output().splitlines() if " POST /v1/" in ln]) < 5:
            assert time.monotonic() < deadline, demo.output()
            time.sleep(0.05)
        assert " 200 POST /v1/chat/completions phi-3-mini " in demo.output()
        assert not any(key in line for line in access)
        output = demo.output()
        assert f"http://127.0.0.1:{port}/v1" in output and "curl" in output
        # The banner's key-management command runs as shown, from a shell whose PATH does
        # not have the virtualenv, against the running demo's store.
        listing = next(line for line in output.splitlines() if " keys list " in line)
        command = listing.strip().replace(" keys list ", " keys create ", 1)
        created = subprocess.run(
            f"{command} --owner bob --models phi-3-mini",
            shell=True,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        bob = json.loads(created.stdout)["secret"]
        bobs = openai.OpenAI(base_url=demo.url + "/v1", api_key=bob, max_retries=0)
        assert [m.id for m in bobs.models.list()] == ["phi-3-mini"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=demo.url + "/v1", api_key="sk-sg-wrong", max_retries=0
            ).models.list()
    finally:
        second.stop(signal.SIGINT)
        started = time.monotonic()
        code = demo.stop(signal.SIGINT)
    assert code == 0, demo.output()
    assert time.monotonic() - started < 10
    assert "Traceback" not in demo.output()
    assert DEMO_KEY in second.output() and "Traceback" not in second.output()
