"""Authentication on the hot path.

``OpenAccess`` serves a deployment with authentication switched off (``auth.enabled: false``):
every caller is the system principal.
"""

from __future__ import annotations

from swarmgate.types import ApiScope, Principal, Role

SYSTEM = Principal(
    subject="anonymous",
    role=Role.SYSTEM,
    scopes=frozenset(s.value for s in ApiScope),
    via="anonymous",
)


class OpenAccess:
    async def authenticate(
        self, authorization: str | None, peer: str | None, forwarded_for: str | None
    ) -> Principal:
        return SYSTEM
