"""``swarmgate demo`` as a user runs it: a real process, the OpenAI SDK, Ctrl-C."""

import json
import signal
import subprocess
import time

import openai
import pytest

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
    proc = spawn([*SWARMGATE, "demo", "--port", str(port), "--key", key], log)
    demo = Process(proc, log, f"http://127.0.0.1:{port}")
    try:
        wait_healthy(demo, "/health/ready")
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
        output = demo.output()
        assert f"http://127.0.0.1:{port}/v1" in output and "curl" in output
        # The banner's key-management command works against the running demo's store.
        listing = next(line for line in output.splitlines() if "swarmgate keys list" in line)
        config = listing.split("--config", 1)[1].strip()
        created = subprocess.run(
            [
                *SWARMGATE,
                "keys",
                "create",
                "--config",
                config,
                "--owner",
                "bob",
                "--models",
                "phi-3-mini",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        bob = json.loads(created.stdout)["secret"]
        bobs = openai.OpenAI(base_url=demo.url + "/v1", api_key=bob, max_retries=0)
        assert [m.id for m in bobs.models.list()] == ["phi-3-mini"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=demo.url + "/v1", api_key="sk-sg-wrong", max_retries=0
            ).models.list()
    finally:
        started = time.monotonic()
        code = demo.stop(signal.SIGINT)
    assert code == 0, demo.output()
    assert time.monotonic() - started < 10
    assert "Traceback" not in demo.output()
