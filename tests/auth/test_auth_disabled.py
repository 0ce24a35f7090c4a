"""``auth.enabled: false``: every caller is the system principal, so the gateway says so loudly,
and the admin API stays closed unless ``auth.open_admin_without_auth`` opens it explicitly."""

from __future__ import annotations

from collections.abc import Callable

from tests.auth.e2e import assert_error, call
from tests.plugins.processes import Gateway, free_port


def _config() -> dict[str, object]:
    return {"models": {"m": {"deployments": [{"url": f"http://127.0.0.1:{free_port()}"}]}}}


def test_the_admin_api_stays_closed_when_authentication_is_off(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(_config(), {"SWARMGATE_AUTH__ENABLED": "false"})
    assert call(gw.url + "/v1/models").status == 200  # what auth.enabled: false is for
    for method, path in (("GET", "/admin/keys"), ("GET", "/admin/audit"), ("POST", "/admin/keys")):
        body = {"name": "x", "owner": "x"} if method == "POST" else None
        reply = call(gw.url + path, method, json_body=body)
        assert_error(reply, 403, "permission_error")
        assert "auth.open_admin_without_auth" in reply.body["error"]["message"]
    assert call(gw.url + "/admin/keys", key=gw.admin_key).status == 403  # even with a key
    log = gw.output()
    assert "authentication is DISABLED" in log and "admin API is closed" in log


def test_open_admin_without_auth_opens_it_and_warns(
    gateway_factory: Callable[..., Gateway],
) -> None:
    env = {"SWARMGATE_AUTH__ENABLED": "false", "SWARMGATE_AUTH__OPEN_ADMIN_WITHOUT_AUTH": "true"}
    gw = gateway_factory(_config(), env)
    assert call(gw.url + "/admin/keys").status == 200
    assert "the admin API is OPEN to every caller" in gw.output()


def test_with_authentication_on_the_setting_changes_nothing(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(_config(), {"SWARMGATE_AUTH__OPEN_ADMIN_WITHOUT_AUTH": "true"})
    assert call(gw.url + "/admin/keys").status == 401
    assert call(gw.url + "/admin/keys", key=gw.admin_key).status == 200
    assert "DISABLED" not in gw.output()
