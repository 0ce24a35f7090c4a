"""Seed 001's model downloads: ``POST /api/v1/models/download`` and
``GET /api/v1/models/download/{id}``.

Both need ``cluster:write``: a download changes what the cluster holds, and the job it answers
names the key that asked for it. The POST answers 202 once the job is stored; the pull runs in
the background of this process (``jobs/downloads.py``). The GET reads the SQL store, so any
replica answers for a job another one runs.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from swarmgate.api.native import authenticate
from swarmgate.auth.roles import require
from swarmgate.errors import BadRequest, GatewayError, NotFound, ServiceUnavailable, StoreError
from swarmgate.jobs.downloads import PRIORITIES, SOURCES, Downloads, pull_name
from swarmgate.pipeline.asgi import (
    ClientGone,
    Headers,
    parse_json_object,
    read_body,
    read_head,
    send_json,
)
from swarmgate.pipeline.native_errors import send_native_error, timestamp
from swarmgate.store.downloads import Download, DownloadStatus, DownloadStore
from swarmgate.types import ApiScope, ASGIScope, Authenticator, Clock, Receive, Send

PATH = "/api/v1/models/download"
PREFIX = PATH + "/"
MAX_NAME = 200
# Ollama's names: [host/][namespace/]model[:tag], and Hugging Face's owner/repo[:quant].
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
JOB_ID = re.compile(r"dl_[0-9a-f]{24}")


@dataclass(frozen=True, slots=True)
class DownloadRequest:
    model_name: str
    source: str = "ollama"
    priority: str = "normal"


def _choice(payload: dict[str, Any], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = payload.get(name, default)
    if value not in allowed:
        raise BadRequest(f"'{name}' must be one of {', '.join(allowed)}", param=name)
    return str(value)


def parse_download(body: bytes) -> DownloadRequest:
    payload: dict[str, Any] = parse_json_object(body)
    name = payload.get("model_name")
    if name is None:
        raise BadRequest("'model_name' is a required property", param="model_name")
    if not isinstance(name, str):
        raise BadRequest("'model_name' must be a string", param="model_name")
    if not (len(name) <= MAX_NAME and MODEL_NAME.fullmatch(name)):
        raise BadRequest(
            f"'model_name' must be a model name of at most {MAX_NAME} characters "
            "(letters, digits and . _ : / @ + -)",
            param="model_name",
        )
    source = _choice(payload, "source", "ollama", SOURCES)
    priority = _choice(payload, "priority", "normal", tuple(PRIORITIES))
    return DownloadRequest(name, source, priority)


def new_job_id() -> str:
    return "dl_" + secrets.token_hex(12)


def job_view(job: Download) -> dict[str, Any]:
    total, completed = job.total_bytes, job.completed_bytes
    percent = round(100 * completed / total, 1) if total and completed is not None else None
    return {
        "id": job.id,
        "model_name": job.model_name,
        "source": job.source,
        "pull_name": pull_name(job.source, job.model_name),
        "priority": job.priority,
        "status": job.status.value,
        "progress": {
            "total_bytes": total,
            "completed_bytes": completed,
            "percent": percent,
            "status": job.last_status,
        },
        "error": job.error,
        "requested_by": job.requested_by,
        "created_at": timestamp(job.created_at),
        "updated_at": timestamp(job.updated_at),
    }


class NativeDownloads:
    def __init__(
        self,
        downloads: Downloads,
        store: DownloadStore,
        authenticator: Authenticator,
        max_body_bytes: int,
        clock: Clock,
    ) -> None:
        self.downloads = downloads
        self.store = store
        self.authenticator = authenticator
        self.max_body_bytes = max_body_bytes
        self.clock = clock

    async def create(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """``POST /api/v1/models/download``: 202 with the queued job."""
        head = read_head(scope)
        try:
            head, principal = await authenticate(self.authenticator, scope)
            require(principal, ApiScope.CLUSTER_WRITE.value)
            body = await read_body(receive, self.max_body_bytes, head.content_length)
            request = parse_download(body)
            now = self.clock()
            job = Download(
                new_job_id(),
                request.model_name,
                request.source,
                request.priority,
                DownloadStatus.QUEUED,
                now,
                now,
                principal.key_id,
            )
            await self.downloads.submit(job)
            headers: Headers = [
                (b"x-request-id", head.request_id.encode()),
                (b"location", (PREFIX + job.id).encode()),
            ]
            await send_json(send, 202, job_view(job), headers)
        except GatewayError as exc:
            await send_native_error(send, exc, head.request_id)
        except ClientGone:
            return

    async def status(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/models/download/{id}``: the job as last written, by any replica."""
        head = read_head(scope)
        try:
            head, principal = await authenticate(self.authenticator, scope)
            require(principal, ApiScope.CLUSTER_WRITE.value)
            job_id = scope["path"].removeprefix(PREFIX)
            job = await self._get(job_id) if JOB_ID.fullmatch(job_id) else None
            if job is None:
                raise NotFound(f"no download {job_id!r}", param="id")
            headers: Headers = [(b"x-request-id", head.request_id.encode())]
            await send_json(send, 200, job_view(job), headers)
        except GatewayError as exc:
            await send_native_error(send, exc, head.request_id)

    async def _get(self, job_id: str) -> Download | None:
        try:
            return await self.store.get(job_id)
        except StoreError as exc:
            raise ServiceUnavailable("the job store cannot be reached") from exc
