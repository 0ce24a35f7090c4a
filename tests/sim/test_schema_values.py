"""The simulator's JSON values validate against the schemas they are drawn from (checked with
the ``jsonschema`` package, formats included), are a pure function of the seed, and strict
mode's rules are enforced as OpenAI enforces them."""

from __future__ import annotations

import random
from datetime import date, datetime, time
from enum import Enum
from typing import Any, Literal
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from swarmgate.sim import schema

CHECKER = Draft202012Validator.FORMAT_CHECKER


def problems(found: dict[str, Any], value: Any) -> list[str]:
    validator = Draft202012Validator(found, format_checker=CHECKER)
    return [e.message for e in validator.iter_errors(value)]


SCHEMAS: dict[str, dict[str, Any]] = {
    "weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 3, "maxLength": 12},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "margin": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "alerts": {"type": "boolean"},
        },
        "required": ["city", "unit", "days", "margin", "alerts"],
        "additionalProperties": False,
    },
    "formats": {
        "type": "object",
        "properties": {
            f: {"type": "string", "format": f}
            for f in ("date-time", "date", "time", "email", "hostname", "ipv4", "ipv6", "uuid")
        },
        "required": ["date-time", "date", "time", "email", "hostname", "ipv4", "ipv6", "uuid"],
        "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
            "none": {"type": "array", "items": {"type": "integer"}, "maxItems": 0},
            "unique": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 3},
                "minItems": 3,
                "uniqueItems": True,
            },
            "even": {"type": "integer", "minimum": 3, "maximum": 9, "multipleOf": 2},
        },
        "required": ["tags", "none", "unique", "even"],
        "additionalProperties": False,
    },
    "nullable and anyOf": {
        "type": "object",
        "properties": {
            "maybe": {"type": ["string", "null"]},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string", "enum": ["x"]}]},
            "fixed": {"const": "always"},
            "map": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
        "required": ["maybe", "either", "fixed", "map"],
        "additionalProperties": False,
    },
    "recursive": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                    "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
                },
                "required": ["label", "children", "next"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    },
}


@pytest.mark.parametrize("name", list(SCHEMAS))
@pytest.mark.parametrize("seed", range(25))
def test_values_validate_against_their_schema(name: str, seed: int) -> None:
    found = SCHEMAS[name]
    value = schema.instance(found, random.Random(seed))
    assert problems(found, value) == [], value


def test_formats_parse_as_what_they_name() -> None:
    # jsonschema checks some formats only with optional packages: parse them here too.
    for seed in range(20):
        value = schema.instance(SCHEMAS["formats"], random.Random(seed))
        datetime.fromisoformat(value["date-time"])
        date.fromisoformat(value["date"])
        time.fromisoformat(value["time"])
        assert UUID(value["uuid"]).version == 4


def test_values_are_a_pure_function_of_the_seed() -> None:
    found = SCHEMAS["recursive"]
    first = [schema.instance(found, random.Random(s)) for s in range(10)]
    again = [schema.instance(found, random.Random(s)) for s in range(10)]
    assert first == again
    assert len({repr(v) for v in first}) > 5  # and the seed matters


def test_a_recursive_schema_ends() -> None:
    def depth(node: dict[str, Any]) -> int:
        below = [*node["children"], *([node["next"]] if node["next"] else [])]
        return 1 + max((depth(n) for n in below), default=0)

    depths = [depth(schema.instance(SCHEMAS["recursive"], random.Random(s))) for s in range(30)]
    assert max(depths) <= schema.SHALLOW_DEPTH + 1
    assert max(depths) > 1


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Part(BaseModel):
    name: str = Field(max_length=10)
    colour: Colour
    made: date


class Order(BaseModel):
    id: UUID
    placed: datetime
    status: Literal["open", "shipped"]
    quantity: int = Field(ge=1, le=5)
    discount: float | None
    parts: list[Part]


def test_a_pydantic_models_strict_schema_gives_instances_of_the_model() -> None:
    found = to_strict_json_schema(Order)
    assert schema.strict_problem(found) is None  # as the SDK's parse() sends it
    for seed in range(30):
        value = schema.instance(found, random.Random(seed))
        assert problems(found, value) == [], value
        Order.model_validate(value)


json_schemas = st.recursive(
    st.sampled_from(
        [
            {"type": "string"},
            {"type": "integer", "minimum": -5, "maximum": 5},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "string", "enum": ["a", "b"]},
            {"type": ["integer", "null"]},
        ]
    ),
    lambda inner: st.one_of(
        st.builds(
            lambda items, low: {"type": "array", "items": items, "minItems": low},
            inner,
            st.integers(0, 2),
        ),
        st.dictionaries(st.sampled_from("abcde"), inner, max_size=4).map(
            lambda props: {
                "type": "object",
                "properties": props,
                "required": list(props),
                "additionalProperties": False,
            }
        ),
        st.lists(inner, min_size=1, max_size=3).map(lambda options: {"anyOf": options}),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(found=json_schemas, seed=st.integers(0, 2**32))
def test_any_schema_of_the_subset_gets_a_valid_value(found: dict[str, Any], seed: int) -> None:
    assert problems(found, schema.instance(found, random.Random(seed))) == []


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, "()"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                "required": ["a"],
                "additionalProperties": False,
            },
            "Missing 'b'",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "object", "properties": {}}},
                "required": ["a"],
                "additionalProperties": False,
            },
            "('properties', 'a')",
        ),
    ],
)
def test_strict_mode_refuses_open_objects_and_optional_properties(
    found: dict[str, Any], expected: str
) -> None:
    problem = schema.strict_problem(found)
    assert problem is not None and expected in problem


@pytest.mark.parametrize(
    "found",
    [
        {"$ref": "https://example.com/schema.json"},
        {"$ref": "#/$defs/missing"},
        {"type": "integer", "minimum": 5, "maximum": 1},
        {"type": "array", "minItems": 3, "maxItems": 1},
        {"type": "tuple"},
        {"$defs": {"x": {"$ref": "#/$defs/x"}}, "$ref": "#/$defs/x"},
        {"type": "string", "pattern": "^[0-9]{3}-[A-Z]{2}$"},
    ],
)
def test_schemas_without_a_value_are_refused(found: dict[str, Any]) -> None:
    with pytest.raises(schema.SchemaError):
        schema.instance(found, random.Random(0))


def test_a_pattern_a_word_matches_is_served() -> None:
    found = {"type": "string", "pattern": "^[a-z]+$"}
    assert problems(found, schema.instance(found, random.Random(0))) == []


def test_a_generous_bound_does_not_make_a_huge_value() -> None:
    found = {"type": "array", "items": {"type": "integer"}, "maxItems": 10**9}
    sizes = {len(schema.instance(found, random.Random(s))) for s in range(20)}
    assert sizes <= {1, 2, 3} and len(sizes) > 1
