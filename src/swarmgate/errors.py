"""The one error tree. Every error knows its HTTP status and its OpenAI ``type``/``code``.

    SwarmgateError
    ├── ConfigError                       (startup, reload; never reaches a client)
    ├── DiscoveryFailed                   a DNS name could not be resolved (logged)
    ├── StoreError                        database / Redis unavailable (503)
    └── GatewayError                      rendered as an OpenAI error body
        ├── BadRequest            400  invalid_request_error
        │   ├── InvalidJSON       400  invalid_request_error / invalid_json
        │   └── ConfigRejected    400  invalid_request_error / invalid_config (a reload's
        │                              problems, as check-config prints them)
        ├── Unauthorized          401  authentication_error / invalid_api_key
        ├── Forbidden             403  permission_error
        │   └── IPBlocked         403  permission_error / ip_blocked
        ├── NotFound              404  invalid_request_error / not_found
        │   └── ModelNotFound     404  invalid_request_error / model_not_found
        ├── MethodNotAllowed      405  invalid_request_error / method_not_allowed
        ├── Conflict              409  invalid_request_error / conflict
        ├── RequestTimeout        408  invalid_request_error / request_timeout
        ├── PayloadTooLarge       413  invalid_request_error / payload_too_large
        ├── RateLimited           429  rate_limit_error (Retry-After)
        │   ├── RequestsLimited   429  requests / rate_limit_exceeded (a request limit)
        │   ├── TokensLimited     429  tokens / rate_limit_exceeded (a token limit)
        │   ├── QuotaExceeded     429  insufficient_quota (a spend budget, for budgets)
        │   └── UpstreamThrottled 429  rate_limit_error / upstream_rate_limited (every
        │                              deployment tried answered 429)
        ├── UpstreamError         502  api_error / bad_gateway
        │   ├── UpstreamUnreachable  502  never reached the deployment (safe to retry)
        │   └── UpstreamBroken       502  the answer broke off while being read
        ├── NoDeployment          503  api_error / no_deployment_available
        │   └── DeploymentsDown   503  api_error / no_healthy_deployment (the model's
        │                              fallback response: status and body configurable)
        ├── ServiceUnavailable    503  api_error / service_unavailable
        └── UpstreamTimeout       504  api_error / upstream_timeout

Third-party errors (aiohttp, sqlalchemy, redis) are translated once at their seam with
``raise ... from exc``. An upstream 4xx is not an error of ours: it is passed through unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SwarmgateError(Exception):
    """Base of every error swarmgate raises on purpose."""


class ConfigError(SwarmgateError):
    """The configuration is invalid; ``problems`` lists ``path: message`` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class DiscoveryFailed(SwarmgateError):
    """A DNS lookup of discovery failed (timeout, no answer, no such name): the last answer
    stays in use."""


class StoreError(SwarmgateError):
    """The SQL store or Redis is unavailable or failed."""


class ClientGone(Exception):
    """The client disconnected: nothing more can be sent to it (not an error to answer)."""


class GatewayError(SwarmgateError):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code  # type: ignore[misc]
        self.headers = headers or {}

    def body(self, request_id: str | None = None, trace_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if request_id is not None:
            error["request_id"] = request_id
        if trace_id is not None:  # only where the request belongs to a trace
            error["trace_id"] = trace_id
        return {"error": error}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class ConfigRejected(BadRequest):
    """A reload refused: the file's problems, each one as ``swarmgate check-config`` says it,
    are in the body as ``problems`` too, and the file as ``config``."""

    code = "invalid_config"

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"invalid configuration in {path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems

    def body(self, request_id: str | None = None, trace_id: str | None = None) -> dict[str, Any]:
        out = super().body(request_id, trace_id)
        out["error"]["problems"] = self.problems
        out["error"]["config"] = self.path
        return out


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "insufficient_permissions"


class IPBlocked(Forbidden):
    code = "ip_blocked"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class RequestsLimited(RateLimited):
    """A request limit (rate, window or concurrency): OpenAI's ``type`` for it."""

    type = "requests"


class TokensLimited(RateLimited):
    type = "tokens"


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"
    code = "insufficient_quota"


class UpstreamThrottled(RateLimited):
    """A deployment answered 429 and no other could be tried (the upstream's Retry-After is
    passed on)."""

    code = "upstream_rate_limited"


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    code = "bad_gateway"


class UpstreamUnreachable(UpstreamError):
    """The request never reached the deployment: safe to try another one."""


class UpstreamBroken(UpstreamError):
    """The deployment's answer broke off while its body or stream was being read."""


class NoDeployment(GatewayError):
    status = 503
    type = "api_error"
    code = "no_deployment_available"


class DeploymentsDraining(NoDeployment):
    """Every deployment of the model is drained by an operator (``/api/v1/workers/{id}/drain``):
    none takes a new request, so waiting in line for one would only time out."""


class DeploymentsDown(NoDeployment):
    """Every deployment of the model is down (circuit open, ejected, failing its probes):
    the model's fallback response. ``status`` and ``content`` (a body that replaces the OpenAI
    error body) come from its configuration."""

    code = "no_healthy_deployment"

    def __init__(
        self,
        message: str,
        *,
        status: int = 503,
        content: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.status = status  # type: ignore[misc]
        self.content = content

    def body(self, request_id: str | None = None, trace_id: str | None = None) -> dict[str, Any]:
        if self.content is not None:
            return self.content
        return super().body(request_id, trace_id)


class ServiceUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"
