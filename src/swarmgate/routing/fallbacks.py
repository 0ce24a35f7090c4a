"""Fallback model chains: the model to try when one cannot serve a request.

``models.<id>.fallbacks`` lists, in order, the models that serve a request its model cannot:
because every deployment of it is busy or down (``next_model``, asked by the call stage after
its last attempt), or because the prompt is longer than its context window (``fitting``, asked
before any call). A chain is followed through the fallbacks' own fallbacks, depth first, and
never visits a model twice (config validation refuses cycles; ``tried`` guards anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence


class FallbackChains:
    def __init__(self, chains: Mapping[str, Sequence[str]]) -> None:
        self._chains = {model: tuple(chain) for model, chain in chains.items() if chain}

    def __bool__(self) -> bool:
        return bool(self._chains)

    def order(self, model: str) -> Iterator[str]:
        """The models after ``model``, in the order they are tried."""
        seen = {model}
        stack = list(reversed(self._chains.get(model, ())))
        while stack:
            nxt = stack.pop()
            if nxt in seen:
                continue
            seen.add(nxt)
            yield nxt
            stack.extend(reversed(self._chains.get(nxt, ())))

    def next_model(
        self, failed: str, tried: Collection[str], allowed: Callable[[str], bool] = bool
    ) -> str | None:
        """The next model to try after ``failed`` exhausted its deployments: the first of its
        chain not tried yet and that the caller may use; None when the chain is spent."""
        for model in self.order(failed):
            if model not in tried and allowed(model):
                return model
        return None

    def fitting(
        self, model: str, prompt_tokens: int, windows: Mapping[str, int | None]
    ) -> str | None:
        """``model`` if the prompt fits its context window, else the first fallback it fits;
        None when none does."""
        for name in (model, *self.order(model)):
            window = windows.get(name)
            if window is None or prompt_tokens <= window:
                return name
        return None
