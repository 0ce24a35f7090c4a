"""The stages before the call: authenticate, authorize, admit.

Each reads and fills in the ``Exchange``; only ``authenticate`` may do I/O (on a key-cache
miss), and ``authorize`` is pure. ``Admission`` is the seam where tiers, rate and token limits
and concurrency leases will be decided; today it admits everyone.
"""

from __future__ import annotations

from swarmgate.auth.roles import require, scope_for_model_type
from swarmgate.errors import BadRequest, Forbidden
from swarmgate.pipeline.exchange import Exchange
from swarmgate.types import Authenticator, Principal


async def authenticate(authenticator: Authenticator, x: Exchange) -> Principal:
    head = x.head
    return await authenticator.authenticate(
        head.authorization, x.peer, head.forwarded_for, head.request_id
    )


def authorize(x: Exchange) -> None:
    """The model's type must suit the route; the caller needs its scope and the model."""
    pool, principal = x.pool, x.principal
    assert pool is not None and principal is not None, "authorize runs after resolve"
    if pool.type not in x.route.types:
        raise BadRequest(
            f"model {pool.model!r} is a {pool.type} model and cannot serve /v1/{x.route.name}",
            param="model",
        )
    require(principal, scope_for_model_type(pool.type))
    if not principal.allows_model(pool.model):
        raise Forbidden(f"this key may not use model {pool.model!r}", code="model_not_allowed")


class Admission:
    """Admits every request for now: the no-op seam for limits, quotas and queues."""

    async def admit(self, x: Exchange) -> None:
        return None
