"""``model: "auto"``: the cheapest model that satisfies what the request needs and the rules.

Pure: ``facts_of`` reads a request body (what it needs: tools, vision, JSON-schema output; an
estimate of its prompt tokens), and ``choose`` picks among ``Candidate`` models from those
facts and the configured rules, with no I/O. A candidate is out when it lacks a capability
the request needs, when the prompt is longer than its context window, or when a rule that
applies says so; of those left, the cheapest wins (its cheapest deployment's price for this
prompt and the completion expected), the configured order breaking ties.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from swarmgate.errors import BadRequest
from swarmgate.routing.policy import Condition, Rule, capability

# The characters of text per token a prompt is estimated with (a common rule of thumb for
# English text and BPE tokenizers; images count as IMAGE_TOKENS each).
CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 85


@dataclass(frozen=True, slots=True)
class Facts:
    """What routing reads of one request."""

    prompt_tokens: int
    completion_tokens: int  # the client's max_tokens, else the configured expectation
    needs: frozenset[str]
    tier: str = "default"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    capabilities: frozenset[str]  # normalized (policy.capability)
    context_window: int | None
    # Each deployment's (per request, per 1k input tokens, per 1k output tokens) prices.
    prices: tuple[tuple[float, float, float], ...]

    def cost(self, facts: Facts) -> float:
        return min(
            (
                per_request
                + (facts.prompt_tokens * per_in + facts.completion_tokens * per_out) / 1000
                for per_request, per_in, per_out in self.prices
            ),
            default=0.0,
        )

    def fits(self, prompt_tokens: int) -> bool:
        return self.context_window is None or prompt_tokens <= self.context_window


def needs_of(payload: Mapping[str, Any]) -> frozenset[str]:
    """The capabilities a chat or completions body needs of its model."""
    needs = set()
    if payload.get("tools") or payload.get("functions"):
        needs.add("tools")
    response_format = payload.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        needs.add("json_schema")
    messages = payload.get("messages")
    if isinstance(messages, list) and any(_has_image(m) for m in messages):
        needs.add("vision")
    return frozenset(needs)


def _has_image(message: object) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") in ("image_url", "input_image")
        for part in content
    )


def prompt_tokens_of(payload: Mapping[str, Any]) -> int:
    """An estimate of the prompt's tokens from its text (cheap; no tokenizer)."""
    chars = images = 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict):
                        continue
                    if isinstance(part.get("text"), str):
                        chars += len(part["text"])
                    elif part.get("type") in ("image_url", "input_image"):
                        images += 1
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) for p in prompt if isinstance(p, str))
    return -(-chars // CHARS_PER_TOKEN) + images * IMAGE_TOKENS


def completion_tokens_of(payload: Mapping[str, Any], expected: int) -> int:
    value = payload.get("max_completion_tokens") or payload.get("max_tokens")
    return value if isinstance(value, int) and value > 0 else expected


def facts_of(
    payload: Mapping[str, Any],
    expected_completion: int,
    tier: str = "default",
    headers: Mapping[str, str] | None = None,
) -> Facts:
    return Facts(
        prompt_tokens_of(payload),
        completion_tokens_of(payload, expected_completion),
        needs_of(payload),
        tier,
        headers or {},
    )


def applies(when: Condition, facts: Facts) -> bool:
    if when.min_prompt_tokens is not None and facts.prompt_tokens < when.min_prompt_tokens:
        return False
    if when.max_prompt_tokens is not None and facts.prompt_tokens > when.max_prompt_tokens:
        return False
    if when.tiers and facts.tier not in when.tiers:
        return False
    if any(capability(n) not in facts.needs for n in when.needs):
        return False
    return all(facts.headers.get(k.lower()) == v for k, v in when.header.items())


def admitted(candidates: Sequence[Candidate], rules: Sequence[Rule], facts: Facts) -> list[str]:
    """The names of the candidates that satisfy the request and every rule that applies."""
    needs = set(facts.needs)
    allowed: set[str] | None = None
    excluded: set[str] = set()
    for rule in rules:
        if not applies(rule.when, facts):
            continue
        needs.update(capability(c) for c in rule.require)
        if rule.models:
            allowed = set(rule.models) if allowed is None else allowed & set(rule.models)
        excluded.update(rule.exclude)
    return [
        c.name
        for c in candidates
        if needs <= c.capabilities
        and c.fits(facts.prompt_tokens)
        and (allowed is None or c.name in allowed)
        and c.name not in excluded
    ]


def choose(candidates: Sequence[Candidate], rules: Sequence[Rule], facts: Facts) -> str:
    """The cheapest admitted candidate; ``BadRequest`` when none is."""
    names = set(admitted(candidates, rules, facts))
    best: Candidate | None = None
    best_cost = 0.0
    for c in candidates:  # in order: the first of equal prices wins
        if c.name in names:
            cost = c.cost(facts)
            if best is None or cost < best_cost:
                best, best_cost = c, cost
    if best is None:
        needs = ", ".join(sorted(facts.needs)) or "nothing in particular"
        raise BadRequest(
            f"no model can serve this request automatically (it needs: {needs}; about "
            f"{facts.prompt_tokens} prompt tokens); name a model",
            param="model",
            code="no_model_matches",
        )
    return best.name
