"""Tool calls and structured outputs: what a chat request with ``tools`` or
``response_format`` asks for, and what the simulated model answers.

``parse_structure`` checks the request's ``tools``, ``tool_choice``, ``parallel_tool_calls``
and ``response_format`` once (a 400 for anything malformed, as OpenAI's); ``answer`` decides,
as a pure function of them and a seed:

- a tool call when ``tool_choice`` is ``required`` or names a function, or when it is
  ``auto`` (the default) and the last message is the user's; text (or the schema's JSON)
  otherwise, so that after a ``tool`` message the model answers;
- which tools: the named one; else every tool the last user message names, by its name or
  a word of it (``weather`` for ``get_weather``; only the first without
  ``parallel_tool_calls``); else one drawn by the seed;
- their arguments drawn from each tool's ``parameters`` schema (``sim.schema``), and with
  ``response_format`` a content that validates against its schema (``json_object``: an
  object with an ``answer``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from swarmgate.errors import BadRequest
from swarmgate.sim import schema
from swarmgate.sim.text import content_text

# What json_object mode answers: any JSON object would do; this one is easy to read.
JSON_OBJECT: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
PIECE = 4  # characters per token of JSON text, as the simulator's tokenizer has about
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Structure:
    """The parts of a chat request that shape its answer beyond plain text."""

    tools: tuple[Function, ...]
    choice: str  # "auto", "required", "none", or the name of the function to call
    parallel: bool
    response_schema: dict[str, Any] | None  # None: text content
    user_turn: bool  # whether the last message is the user's
    last_user_text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model answers: tool calls, or a content (None: the usual generated text).

    Its tokens, as the simulator counts and streams them: a tool call's name is one, and
    its arguments and the content are pieces of ``PIECE`` characters.
    """

    tool_calls: tuple[ToolCall, ...] = ()
    content: str | None = None

    @property
    def is_text(self) -> bool:
        return not self.tool_calls and self.content is None

    @property
    def tokens(self) -> int:
        if self.content is not None:
            return len(pieces(self.content))
        return sum(1 + len(pieces(c.arguments)) for c in self.tool_calls)

    def cut(self, limit: int) -> Reply:
        """The first ``limit`` tokens (``max_tokens``): JSON cut short, as a model's is."""
        if self.content is not None:
            return Reply(content=self.content[: limit * PIECE])
        calls = []
        for call in self.tool_calls:
            if limit <= 0:
                break
            kept = call.arguments[: (limit - 1) * PIECE]
            calls.append(ToolCall(call.id, call.name, kept))
            limit -= 1 + len(pieces(kept))
        return Reply(tool_calls=tuple(calls))


def pieces(text: str) -> list[str]:
    """JSON text as streamed: ``PIECE`` characters at a time."""
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)]


def parse_structure(body: dict[str, Any]) -> Structure | None:
    """None when the request asks for nothing beyond text (the plain path)."""
    tools = _tools(body.get("tools"))
    choice = _choice(body.get("tool_choice"), tools)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise BadRequest("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    response_schema = _response_schema(body.get("response_format"))
    if not tools and response_schema is None:
        return None
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else {}
    user_turn = isinstance(last, dict) and last.get("role") == "user"
    last_user = ""
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = content_text(message.get("content"))
            break
    return Structure(tools, choice, parallel, response_schema, user_turn, last_user)


def _tools(raw: Any) -> tuple[Function, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequest("'tools' must be an array", param="tools")
    functions = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise BadRequest(f"'tools[{i}]' must be an object", param=f"tools[{i}]")
        if tool.get("type", "function") != "function":
            continue  # custom and built-in tools: this model calls functions only
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(
                f"'tools[{i}].function.name' is required", param=f"tools[{i}].function.name"
            )
        assert isinstance(function, dict)
        parameters = function.get("parameters", NO_PARAMETERS)
        if not isinstance(parameters, dict):
            raise BadRequest(
                f"'tools[{i}].function.parameters' must be an object",
                param=f"tools[{i}].function.parameters",
            )
        if function.get("strict") is True:
            _check_strict(parameters, f"function '{name}'", f"tools[{i}].function.parameters")
        functions.append(Function(name, parameters))
    return tuple(functions)


def _choice(raw: Any, tools: tuple[Function, ...]) -> str:
    if raw is None:
        return "auto" if tools else "none"
    if raw in ("auto", "none", "required"):
        choice: str = raw
    elif (
        isinstance(raw, dict)
        and raw.get("type") == "function"
        and isinstance(raw.get("function"), dict)
        and isinstance(raw["function"].get("name"), str)
    ):
        choice = raw["function"]["name"]
        if all(f.name != choice for f in tools):
            raise BadRequest(
                f"Invalid value for 'tool_choice': function '{choice}' is not in 'tools'.",
                param="tool_choice",
            )
    else:
        raise BadRequest(
            "'tool_choice' must be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if not tools and choice != "none":
        raise BadRequest(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            param="tool_choice",
        )
    return choice


def _response_schema(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind == "json_schema":
        assert isinstance(raw, dict)
        spec = raw.get("json_schema")
        if not isinstance(spec, dict):
            raise BadRequest(
                "'response_format.json_schema' must be an object",
                param="response_format.json_schema",
            )
        found = spec.get("schema", JSON_OBJECT)
        if not isinstance(found, dict):
            raise BadRequest(
                "'response_format.json_schema.schema' must be an object",
                param="response_format.json_schema.schema",
            )
        if spec.get("strict") is True:
            name = spec.get("name", "")
            _check_strict(found, f"response_format '{name}'", "response_format")
        return found
    raise BadRequest(
        "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
        param="response_format",
    )


def _check_strict(found: dict[str, Any], what: str, param: str) -> None:
    problem = schema.strict_problem(found)
    if problem is not None:
        raise BadRequest(f"Invalid schema for {what}: {problem}", param=param)


def answer(structure: Structure, seed: int) -> Reply:
    """The reply, drawn from ``seed`` (the request's: its ``seed`` field and prompt)."""
    rng = random.Random(seed)
    calls_tool = structure.choice not in ("auto", "none") or (
        structure.choice == "auto" and structure.user_turn
    )
    if not calls_tool or not structure.tools:
        if structure.response_schema is None:
            return Reply()
        return Reply(content=_json(structure.response_schema, rng, "response_format"))
    calls = []
    for function in _called(structure, rng):
        arguments = _json(function.parameters, rng, f"tools[{function.name}]")
        call_id = "call_" + "".join(rng.choice(_ID_ALPHABET) for _ in range(24))
        calls.append(ToolCall(call_id, function.name, arguments))
    return Reply(tool_calls=tuple(calls))


def _called(structure: Structure, rng: random.Random) -> list[Function]:
    tools = structure.tools
    if structure.choice not in ("auto", "required"):
        return [f for f in tools if f.name == structure.choice][:1]
    text = structure.last_user_text.lower()
    mentioned = [f for f in tools if any(word in text for word in _words_of(f.name))]
    drawn = tools[rng.randrange(len(tools))]
    if not mentioned:
        return [drawn]
    return mentioned if structure.parallel else mentioned[:1]


def _words_of(name: str) -> list[str]:
    """What names a tool in a user's words: its name, and each word of four letters or more
    in it (``get_weather``, ``weather``; ``searchFiles``, ``search``, ``files``)."""
    words = [w.lower() for w in _WORD.findall(name)]
    return [name.lower(), *(w for w in words if len(w) >= 4)]


def _json(found: dict[str, Any], rng: random.Random, param: str) -> str:
    try:
        value = schema.instance(found, rng)
    except schema.SchemaError as exc:
        raise BadRequest(f"the schema of {param} cannot be served: {exc}", param=param) from None
    # Spaced (", ", ": ") as OpenAI's models write JSON; orjson writes only compact JSON.
    return json.dumps(value, ensure_ascii=False)
