"""Request and response transformers."""

from __future__ import annotations

from swarmgate.routing.policy import Transform
from swarmgate.routing.transform import RequestEdit, ResponseEdit, merged


def test_no_transform_compiles_to_nothing() -> None:
    assert RequestEdit.of(Transform()) is None
    assert ResponseEdit.of(Transform()) is None
    assert RequestEdit.of(Transform(response_headers={"x": "1"})) is None


def test_defaults_fill_only_what_is_absent() -> None:
    edit = RequestEdit.of(Transform(set_params={"max_tokens": 256, "temperature": 0.2}))
    assert edit is not None
    payload: dict[str, object] = {"max_tokens": 10}
    assert edit.apply(payload, {})
    assert payload == {"max_tokens": 10, "temperature": 0.2}
    same = {"max_tokens": 10, "temperature": 1}
    assert not edit.apply(same, {})


def test_caps_bound_numbers_and_leave_the_rest() -> None:
    edit = RequestEdit.of(Transform(cap_params={"max_tokens": 100, "temperature": 1.5}))
    assert edit is not None
    payload: dict[str, object] = {"max_tokens": 4000, "temperature": 2}
    assert edit.apply(payload, {})
    assert payload == {"max_tokens": 100, "temperature": 1.5}
    assert type(payload["max_tokens"]) is int
    for unchanged in ({"max_tokens": 100}, {"max_tokens": "4000"}, {"max_tokens": True}, {}):
        before = dict(unchanged)
        assert not edit.apply(unchanged, {})
        assert unchanged == before


def test_request_headers_are_added_and_removed() -> None:
    edit = RequestEdit.of(
        Transform(request_headers={"X-Team": "a"}, remove_request_headers=("X-Debug",))
    )
    assert edit is not None
    headers = {"x-debug": "1", "x-other": "2"}
    assert not edit.apply({}, headers)  # headers are not the body
    assert headers == {"x-other": "2", "x-team": "a"}


def test_response_headers_are_added_and_removed() -> None:
    edit = ResponseEdit.of(
        Transform(
            response_headers={"X-Served-By": "gw"},
            remove_response_headers=("x-swarmgate-deployment",),
        )
    )
    assert edit is not None
    got = edit.headers([(b"x-request-id", b"r"), (b"x-swarmgate-deployment", b"d")])
    assert got == [(b"x-request-id", b"r"), (b"x-served-by", b"gw")]


def test_merged_edits_apply_in_order() -> None:
    one = ResponseEdit(((b"a", b"1"),), frozenset({b"b"}))
    two = ResponseEdit(((b"a", b"2"), (b"b", b"3")))
    both = merged([one, None, two])
    assert both is not None
    assert both.headers([(b"a", b"0"), (b"b", b"0"), (b"c", b"0")]) == [
        (b"c", b"0"),
        (b"a", b"2"),
        (b"b", b"3"),
    ]
    assert merged([None, one]) is one
    assert merged([]) is None
