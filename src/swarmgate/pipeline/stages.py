"""The stages around the call that are the gateway's own decisions: authorize, admit.

(Authentication is the authenticator's, called directly: I/O only on a key-cache miss.)
``authorize`` is pure. ``Admission`` (tiers, rate and token limits, concurrency leases) is
``limits.admission``'s, re-exported here so that the stages of the request path read in one
place.
"""

from __future__ import annotations

from swarmgate.auth.roles import require, scope_for_model_type
from swarmgate.errors import BadRequest, Forbidden
from swarmgate.limits.admission import Admission
from swarmgate.pipeline.exchange import Exchange

__all__ = ["Admission", "authorize"]


def authorize(x: Exchange) -> None:
    """The model's type must suit the route; the caller needs its scope and the model."""
    pool, principal = x.pool, x.principal
    assert pool is not None and principal is not None, "authorize runs after resolve"
    if pool.type not in x.route.types:
        raise BadRequest(
            f"model {pool.model!r} ({pool.type}) cannot serve {x.route.client_path}",
            param="model",
        )
    require(principal, scope_for_model_type(pool.type))
    if not principal.allows_model(pool.model):
        raise Forbidden(f"this key may not use model {pool.model!r}", code="model_not_allowed")
