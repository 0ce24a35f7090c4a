"""The Responses API translated to and from chat completions (pure, no I/O).

For a deployment that does not serve ``/v1/responses`` itself, a Responses request becomes a
chat request and the chat answer becomes a ``Response``:

    instructions                      → a system message, first
    input (text, or items)            → messages: a message item keeps its role, its
                                        input_text/output_text parts become text (input_image
                                        an image_url part); function_call items become one
                                        assistant message's tool_calls; function_call_output
                                        a tool message
    tools (type function)             → tools (other tool types cannot be translated: 400)
    tool_choice, parallel_tool_calls  → the same, a named function in chat's shape
    text.format (json_object/schema)  → response_format
    max_output_tokens                 → max_tokens
    temperature, top_p, user          → the same

and back: the assistant's text becomes a ``message`` output item, each tool call a
``function_call`` item (its ``call_id`` the chat tool call's id), usage becomes input/output
tokens, ``finish_reason: length`` an incomplete response. The streamed form of the same
translation is ``pipeline/responses_stream.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from swarmgate.errors import BadRequest, UpstreamError
from swarmgate.types import Usage

# Request fields a response echoes, with OpenAI's defaults when the client sent none.
ECHOED: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "temperature": 1.0,
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
}
_COPIED = ("temperature", "top_p", "user", "parallel_tool_calls")
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


def input_items(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items (a text is one user message)."""
    value = payload.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        raise BadRequest("'input' must be a string or an array of items", param="input")
    return [i if "type" in i else {"type": "message", **i} for i in value]


def chat_request(payload: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat request for a Responses request, whose conversation is ``items`` (the stored
    history of ``previous_response_id`` first, then this request's input)."""
    messages: list[dict[str, Any]] = []
    instructions = payload.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("'instructions' must be a string", param="instructions")
        messages.append({"role": "system", "content": instructions})
    for item in items:
        _add(messages, item)
    chat: dict[str, Any] = {"model": payload.get("model"), "messages": messages}
    for name in _COPIED:
        if payload.get(name) is not None:
            chat[name] = payload[name]
    if payload.get("max_output_tokens") is not None:
        chat["max_tokens"] = payload["max_output_tokens"]
    tools = payload.get("tools")
    if tools:
        chat["tools"] = [_tool(t) for t in _array(tools, "tools")]
    if payload.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(payload["tool_choice"])
    fmt = _format(payload.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if payload.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _array(value: object, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BadRequest(f"'{name}' must be an array of objects", param=name)
    return value


def _add(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    kind = item.get("type")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise BadRequest(f"an input message's role cannot be {role!r}", param="input")
        messages.append({"role": role, "content": _content(item.get("content"))})
    elif kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
        }
        last = messages[-1] if messages else None
        # Consecutive calls (a parallel tool call) are one assistant message in chat.
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _content(output)
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    elif kind == "reasoning":
        return  # a model's own reasoning summary: chat has no place for it
    else:
        raise BadRequest(
            f"input items of type {kind!r} cannot be translated to chat completions for this "
            "model (its deployments do not serve the Responses API)",
            param="input",
        )


def _content(content: object) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("a message's content must be a string or an array", param="input")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal", "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"], "detail": part.get("detail", "auto")}
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise BadRequest(f"content parts of type {kind!r} cannot be translated", param="input")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise BadRequest(
            f"tools of type {tool.get('type')!r} cannot be translated to chat completions "
            "(only function tools can)",
            param="tools",
        )
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    return {"type": "function", "function": function}


def _tool_choice(choice: object) -> object:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise BadRequest(
        "'tool_choice' must be auto, none, required or a function", param="tool_choice"
    )


def _format(text: object) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt, dict):
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest("'text.format' must be text, json_object or json_schema", param="text.format")


def usage_of(usage: Usage | dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat usage (counted, or the answer's object) in the Responses API's words."""
    if usage is None:
        return None
    details: dict[str, Any] = {}
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details") or {}
    else:
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
    reasoning = 0
    if isinstance(usage, dict):
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": details.get("cached_tokens") or 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def skeleton(
    payload: dict[str, Any], response_id: str, created_at: float, model: str
) -> dict[str, Any]:
    """A response before its output: the request's parameters echoed, status in progress."""
    response: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "usage": None,
    }
    for name, default in ECHOED.items():
        value = payload.get(name)
        response[name] = default if value is None else value
    response["tools"] = [_echoed_tool(t) for t in response["tools"] if isinstance(t, dict)]
    response["text"] = {"format": (payload.get("text") or {}).get("format") or {"type": "text"}}
    response["store"] = payload.get("store", True) is not False
    if isinstance(payload.get("user"), str):
        response["user"] = payload["user"]
    return response


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _echoed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool as a response echoes it: a function's ``strict`` and ``parameters`` always
    there, null when the client sent none (nor is any sent to the deployment)."""
    if tool.get("type") != "function":
        return tool
    return {"strict": None, "parameters": None, "description": None, **tool}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [output_text(text)] if text else []
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def finished(response: dict[str, Any], finish_reason: object) -> dict[str, Any]:
    """A response with its status set from the chat answer's ``finish_reason``."""
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())
    return response


def response_of(chat: object, response: dict[str, Any]) -> dict[str, Any]:
    """The ``Response`` for a whole chat answer, filled into ``response`` (its skeleton)."""
    try:
        assert isinstance(chat, dict)
        choice = chat["choices"][0]
        message = choice["message"]
        assert isinstance(message, dict)
    except (AssertionError, KeyError, IndexError, TypeError):
        raise UpstreamError("the deployment's answer is not a chat completion") from None
    output: list[dict[str, Any]] = []
    text = message.get("content") or message.get("refusal")
    if isinstance(text, str) and text:
        output.append(message_item(new_id("msg"), text))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {} if isinstance(call, dict) else {}
        output.append(
            call_item(
                new_id("fc"),
                str(call.get("id") or new_id("call")),
                str(function.get("name", "")),
                str(function.get("arguments", "")),
            )
        )
    response["output"] = output
    response["usage"] = usage_of(chat.get("usage"))
    return finished(response, choice.get("finish_reason"))
