"""JSON values that validate against a JSON schema: the simulator's tool arguments and
structured outputs.

Covers the subset of JSON Schema that OpenAI's strict mode accepts (objects with
``properties``, ``required`` and ``additionalProperties``; strings with ``enum``, ``format``,
``minLength``/``maxLength`` and a ``pattern`` that a word happens to match; numbers and
integers with their bounds and ``multipleOf``; booleans; arrays with ``items``,
``minItems``/``maxItems``; ``anyOf``; ``$defs``/``$ref``, recursion included; ``const``;
nullable as a type list), plus what pydantic's own schemas add (``allOf`` of one ``$ref``,
``oneOf``, a ``dict``'s ``additionalProperties`` schema). A value is a pure function of the
schema and the RNG it is given, so the same seed gives the same arguments on every run.

``strict_problem`` checks a schema as OpenAI does before it accepts ``strict: true``: every
object closed (``additionalProperties: false``) and every property required.
"""

from __future__ import annotations

import operator
import random
import re
import uuid
from collections.abc import Callable
from typing import Any

from swarmgate.sim.text import VOCABULARY

# Past this depth a value takes the shortest way out: nulls, empty arrays, only the required
# properties (how a recursive schema such as a tree of pydantic models ends); past the hard
# limit the schema is taken to have no finite value.
SHALLOW_DEPTH = 4
MAX_DEPTH = 40


class SchemaError(ValueError):
    """A schema outside the subset served, or one with no value (the client's 400)."""


def instance(schema: Any, rng: random.Random) -> Any:
    """A value that validates against ``schema``, a JSON Schema as parsed JSON."""
    return _Values(schema, rng).of(schema, 0)


class _Values:
    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def of(self, schema: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise SchemaError("the schema nests too deeply (a recursion that never ends?)")
        if schema is True or schema == {}:
            return self.words(1, 3)
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object, not {schema!r}")
        if "$ref" in schema:
            return self.of(self.resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.choice(schema["enum"], "enum")
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.of(self.branch(schema[key], key, depth), depth + 1)
        if "allOf" in schema:
            return self.of(_merged(schema["allOf"]), depth + 1)
        return self.typed(schema, depth)

    def typed(self, schema: dict[str, Any], depth: int) -> Any:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = self.kind_of(kind, depth)
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        match kind:
            case "object":
                return self.object(schema, depth)
            case "array":
                return self.array(schema, depth)
            case "string" | None:
                return self.string(schema)
            case "integer":
                return self.integer(schema)
            case "number":
                return self.number(schema)
            case "boolean":
                return self.rng.random() < 0.5
            case "null":
                return None
        raise SchemaError(f"unsupported type {kind!r}")

    def resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local references are supported, not {ref!r}")
        node = self.root
        for part in filter(None, ref[1:].split("/")):
            name = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or name not in node:
                raise SchemaError(f"the reference {ref!r} points at nothing")
            node = node[name]
        return node

    def choice(self, options: Any, keyword: str) -> Any:
        if not isinstance(options, list) or not options:
            raise SchemaError(f"'{keyword}' must be a non-empty array")
        return options[self.rng.randrange(len(options))]

    def branch(self, branches: Any, keyword: str, depth: int) -> Any:
        chosen = self.choice(branches, keyword)  # drawn either way: the RNG moves alike
        if depth >= SHALLOW_DEPTH:
            for option in branches:
                if isinstance(option, dict) and option.get("type") == "null":
                    return option
        return chosen

    def kind_of(self, kinds: list[Any], depth: int) -> Any:
        if not kinds:
            raise SchemaError("'type' must not be an empty array")
        others = [k for k in kinds if k != "null"]
        draw = self.rng.random()
        if not others or (len(others) < len(kinds) and (depth >= SHALLOW_DEPTH or draw < 0.2)):
            return "null"
        return others[int(draw * len(others)) % len(others)]

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        if not isinstance(properties, dict) or not isinstance(required, list):
            raise SchemaError("'properties' must be an object and 'required' an array")
        shallow = depth >= SHALLOW_DEPTH
        out = {
            name: self.of(sub, depth + 1)
            for name, sub in properties.items()
            if not shallow or name in required
        }
        for name in required:
            if name not in out:
                out[name] = self.words(1, 2)
        extra = schema.get("additionalProperties")
        if not properties and isinstance(extra, dict) and not shallow:
            for _ in range(self.rng.randint(1, 2)):
                out[self.rng.choice(VOCABULARY)] = self.of(extra, depth + 1)
        return out

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low = _bound(schema, "minItems", 0)
        high = _bound(schema, "maxItems", low + 3)
        if high < low:
            raise SchemaError("'maxItems' is below 'minItems'")
        # At least one item when allowed, at most three more than the minimum.
        most = min(high, low + 3)
        count = low if depth >= SHALLOW_DEPTH else self.rng.randint(max(low, min(1, most)), most)
        items = schema.get("items", {})
        out: list[Any] = []
        for _ in range(count * 10 if schema.get("uniqueItems") else count):
            value = self.of(items, depth + 1)
            if not schema.get("uniqueItems") or value not in out:
                out.append(value)
            if len(out) == count:
                return out
        if len(out) < low:
            raise SchemaError("cannot find enough distinct items for 'uniqueItems'")
        return out

    def words(self, low: int, high: int) -> str:
        return " ".join(self.rng.choice(VOCABULARY) for _ in range(self.rng.randint(low, high)))

    def string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt](self.rng)
        low = _bound(schema, "minLength", 0)
        high = _bound(schema, "maxLength", max(low, 40))
        value = self.words(1, 3)
        while len(value) < low:
            value += " " + self.words(1, 3)
        value = value[:high].rstrip() if len(value) > high else value
        value = value.ljust(low, "x")
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            return self.matching(pattern, value)
        return value

    def matching(self, pattern: str, value: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise SchemaError(f"'pattern' {pattern!r} is not a regular expression") from exc
        candidates = [value, *VOCABULARY, "0", "123", "A", "ABC", "a1", "x@example.com"]
        for candidate in candidates:
            if compiled.search(candidate):
                return candidate
        raise SchemaError(f"no string to offer for the pattern {pattern!r}")

    def integer(self, schema: dict[str, Any]) -> int:
        low, high = _range(schema, integral=True)
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first, last = -(-low // step), high // step
            if first > last:
                raise SchemaError("no multiple of 'multipleOf' within the bounds")
            return self.rng.randint(int(first), int(last)) * step
        return self.rng.randint(int(low), int(high))

    def number(self, schema: dict[str, Any]) -> float | int:
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool):
            return self.integer(schema)
        low, high = _range(schema, integral=False)
        value = round(low + (high - low) * self.rng.random(), 2)
        if not _within(schema, value):
            value = (low + high) / 2
        return value


def _bound(schema: dict[str, Any], name: str, default: int) -> int:
    value = schema.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SchemaError(f"'{name}' must be a non-negative integer")
    return value


def _range(schema: dict[str, Any], *, integral: bool) -> tuple[float, float]:
    """The inclusive bounds a value is drawn from (exclusive ones moved in by one for an
    integer); 0 to 100 when the schema gives none, 100 either side of a lone bound."""
    low: float | None = _number(schema, "minimum")
    high: float | None = _number(schema, "maximum")
    below = _number(schema, "exclusiveMaximum")
    above = _number(schema, "exclusiveMinimum")
    nudge = 1 if integral else 0.001
    if above is not None:
        low = max(low if low is not None else above + nudge, above + nudge)
    if below is not None:
        high = min(high if high is not None else below - nudge, below - nudge)
    if integral:
        low = None if low is None else float(-(-low // 1))
        high = None if high is None else float(high // 1)
    if low is None:
        low = 0 if high is None else high - 100
    if high is None:
        high = low + 100
    if low > high:
        raise SchemaError("the schema's bounds leave no number")
    return low, high


def _number(schema: dict[str, Any], name: str) -> float | None:
    value = schema.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SchemaError(f"'{name}' must be a number")
    return value


_BOUNDS: tuple[tuple[str, Callable[[float, float], bool]], ...] = (
    ("minimum", operator.ge),
    ("maximum", operator.le),
    ("exclusiveMinimum", operator.gt),
    ("exclusiveMaximum", operator.lt),
)


def _within(schema: dict[str, Any], value: float) -> bool:
    return all(schema.get(name) is None or ok(value, schema[name]) for name, ok in _BOUNDS)


def _merged(parts: Any) -> dict[str, Any]:
    """``allOf``: pydantic writes one ``$ref`` (a field with a description); several parts
    are merged shallowly, their properties and requirements joined."""
    if not isinstance(parts, list) or not parts:
        raise SchemaError("'allOf' must be a non-empty array")
    if len(parts) == 1:
        only: dict[str, Any] = parts[0]
        return only
    merged: dict[str, Any] = {}
    for part in parts:
        if not isinstance(part, dict) or "$ref" in part:
            raise SchemaError("'allOf' of several references is not supported")
        properties = {**merged.get("properties", {}), **part.get("properties", {})}
        required = [*merged.get("required", []), *part.get("required", [])]
        merged.update(part)
        merged["properties"], merged["required"] = properties, required
    return merged


def _two(rng: random.Random, low: int, high: int) -> str:
    return f"{rng.randint(low, high):02d}"


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2000, 2030)}-{_two(rng, 1, 12)}-{_two(rng, 1, 28)}"


def _time(rng: random.Random) -> str:
    return f"{_two(rng, 0, 23)}:{_two(rng, 0, 59)}:{_two(rng, 0, 59)}Z"


_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": lambda rng: f"{_date(rng)}T{_time(rng)}",
    "date": _date,
    "time": _time,
    "duration": lambda rng: f"P{rng.randint(0, 9)}DT{rng.randint(0, 23)}H{rng.randint(0, 59)}M",
    "email": lambda rng: f"{rng.choice(VOCABULARY)}@example.com",
    "hostname": lambda rng: f"{rng.choice(VOCABULARY)}.example.com",
    "uri": lambda rng: f"https://example.com/{rng.choice(VOCABULARY)}",
    "ipv4": lambda rng: ".".join(str(rng.randint(1, 254)) for _ in range(4)),
    "ipv6": lambda rng: ":".join(f"{rng.getrandbits(16):x}" for _ in range(8)),
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
}


def strict_problem(schema: Any, path: tuple[str, ...] = ()) -> str | None:
    """What OpenAI would refuse in a ``strict: true`` schema, in its words; None if nothing."""
    if not isinstance(schema, dict):
        return None
    context = f"In context={path!r}, "
    properties = schema.get("properties")
    if schema.get("type") == "object" or isinstance(properties, dict):
        if schema.get("additionalProperties") is not False:
            return context + "'additionalProperties' is required to be supplied and to be false."
        names = list(properties) if isinstance(properties, dict) else []
        required = schema.get("required")
        missing = [n for n in names if not isinstance(required, list) or n not in required]
        if missing:
            return (
                context + "'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
    for child_path, child in _children(schema, path):
        problem = strict_problem(child, child_path)
        if problem is not None:
            return problem
    return None


def _children(schema: dict[str, Any], path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """The subschemas of ``schema`` that strict mode checks too, with their paths."""
    children: list[tuple[tuple[str, ...], Any]] = []
    for key in ("properties", "$defs", "definitions"):
        named = schema.get(key)
        if isinstance(named, dict):
            children.extend(((*path, key, name), sub) for name, sub in named.items())
    for key in ("anyOf", "oneOf", "allOf"):
        listed = schema.get(key)
        if isinstance(listed, list):
            children.extend(((*path, key, str(i)), sub) for i, sub in enumerate(listed))
    if "items" in schema:
        children.append(((*path, "items"), schema["items"]))
    return children
