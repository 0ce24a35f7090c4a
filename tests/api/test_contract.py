"""The OpenAPI document tells the truth: schemathesis, against a real gateway in front of the
simulator with a valid admin key, finds no 5xx and no status, content type, documented header
or response body the document does not describe (issue 11, B).

It runs schemathesis' own engine (its CLI: the examples, coverage, fuzzing and stateful phases,
unsupported methods included) in deterministic mode, so the same cases run every time, and
reads its NDJSON report: the figures are printed, the failures asserted empty.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.e2e import FAST, Processes, assert_clean_log
from tests.auth.e2e import call
from tests.plugins.processes import Gateway

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
)
MAX_EXAMPLES = 100  # per operation and phase: about 2,500 cases in all
MODELS = ("chat", "chatty", "embed")
MEDIA = {"/v1/images/generations": "painter", "/v1/audio/speech": "voice"}
MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {"role": {"enum": ["user"]}, "content": {"type": "string"}},
}


@pytest.fixture(scope="module")
def gw(procs: Processes) -> Iterator[Gateway]:
    sim = procs.sim(
        {
            "chat": FAST,
            "embed": {**FAST, "embedding_dim": 4},
            "painter": {**FAST, "modality": "image"},
            "voice": {**FAST, "modality": "speech"},
            "scribe": {**FAST, "modality": "transcription"},
        }
    )
    config = {
        "default_model": "chat",
        "models": {
            "chat": {"aliases": ["chatty"], "deployments": [{"url": sim.url}]},
            "embed": {"type": "embedding", "deployments": [{"url": sim.url}]},
            "painter": {"type": "image", "deployments": [{"url": sim.url}]},
            "voice": {"type": "speech", "deployments": [{"url": sim.url}]},
            "scribe": {"type": "transcription", "deployments": [{"url": sim.url}]},
        },
        # Downloads pulled from the simulator's /api/pull (without one they are a 503).
        "native": {"ollama_url": sim.url},
        # The fuzzer sends wrong keys on purpose; being blocked for it would hide the rest.
        "auth": {"ip": {"max_failures": 1_000_000}},
    }
    gateway = procs.gateway(config)
    yield gateway
    assert_clean_log(gateway)


def _document(gw: Gateway, path: Path) -> Path:
    """The gateway's own document, with request bodies naming the configured models: the
    document says any string (an unknown one is a 404), but cases that reach a deployment
    test more than cases that stop at the model lookup."""
    with urllib.request.urlopen(gw.url + "/openapi.json", timeout=10) as r:
        document: dict[str, Any] = json.load(r)
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        body = document["paths"][route]["post"]["requestBody"]["content"]["application/json"]
        body["schema"]["properties"]["model"] = {"enum": [*MODELS, None]}
    for route, name in MEDIA.items():
        body = document["paths"][route]["post"]["requestBody"]["content"]["application/json"]
        body["schema"]["properties"]["model"] = {"enum": [name]}
    upload = document["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    upload["multipart/form-data"]["schema"]["properties"]["model"] = {"enum": ["scribe"]}
    chat = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    chat["application/json"]["schema"]["properties"]["messages"]["items"] = MESSAGE
    model = document["paths"]["/v1/models/{model_id}"]["get"]["parameters"][0]
    model["schema"] = {"enum": list(MODELS)}
    path.write_text(json.dumps(document))
    return path


def _interactions(report: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished:
            recorder = finished["recorder"]
            for interaction in recorder.get("interactions", {}).values():
                yield recorder["label"], interaction


def _failures(report: Path) -> list[str]:
    found = []
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        for checks in (finished or {}).get("recorder", {}).get("checks", {}).values():
            for check in checks:
                if check["status"] == "failure":
                    failure = check["failure_info"]["failure"]
                    found.append(
                        f"{failure['operation']}: {failure['title']}: {failure['message']}"
                    )
    return sorted(set(found))


# Thousands of cases, one at a time: a minute on a quiet machine, more on a loaded one.
@pytest.mark.timeout(300)
def test_the_document_describes_every_answer(gw: Gateway, tmp_path: Path) -> None:
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is in the test extras: pip install -e '.[test]'"
    report = tmp_path / "events.ndjson"
    command = [
        schemathesis,
        "run",
        str(_document(gw, tmp_path / "openapi.json")),
        "--url",
        gw.url,
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",  # fixed cases, no example database
        "--no-shrink",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "-H",
        f"Authorization: Bearer {gw.admin_key}",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--no-color",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]

    statuses: Counter[int] = Counter()
    per_operation: dict[str, Counter[int]] = {}
    for label, interaction in _interactions(report):
        status = interaction["response"]["status_code"] if interaction["response"] else 0
        statuses[status] += 1
        per_operation.setdefault(label, Counter())[status] += 1
    cases = sum(statuses.values())
    print(f"\nschemathesis: {cases} cases; statuses {dict(sorted(statuses.items()))}")
    for label, counted in sorted(per_operation.items()):
        print(f"  {label}: {dict(sorted(counted.items()))}")

    assert _failures(report) == [], run.stdout[-6000:]
    assert not [s for s in statuses if s >= 500 or s == 0], statuses
    assert run.returncode == 0, run.stdout[-6000:]
    assert cases >= 1500, statuses
    # The run touched the inference path for real, not only its refusals.
    for route in (
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/embeddings",
        "POST /v1/images/generations",
        "POST /v1/audio/speech",
        "POST /v1/audio/transcriptions",
    ):
        assert per_operation[route][200] > 0, (route, per_operation[route])
    assert call(gw.url + "/admin/keys", key=gw.admin_key).status == 200  # still an admin
