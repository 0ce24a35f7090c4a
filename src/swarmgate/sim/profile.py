"""The simulator's fleet profile: which servers to run, and how each model behaves.

A profile is YAML validated once into frozen pydantic models (unknown keys are errors, so a
typo in a capacity plan fails loudly instead of silently simulating the default). One process
can serve many servers, each on its own port; each server serves one or more models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmgate.config import read_yaml, validation_problems
from swarmgate.errors import ConfigError

NonNegative = Annotated[float, Field(ge=0)]
# Whose metric names a server's /metrics uses.
MetricsKind = Literal["vllm", "sglang", "llamacpp"]
Rate = Annotated[float, Field(ge=0, le=1)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PrefixCacheProfile(_Frozen):
    """The model's KV cache, in blocks of ``block_tokens``, and vLLM-style automatic prefix
    caching over it (``enabled``): chained hashes of full prompt blocks, kept after a request
    ends in the room running requests leave free (``capacity_blocks`` in all)."""

    enabled: bool = True
    block_tokens: Annotated[int, Field(ge=1)] = 16
    capacity_blocks: Annotated[int, Field(ge=1)] = 4096
    # Time to first token of a fully cached prompt, when there is no prefill_tokens_per_second.
    hit_ttft_ms: NonNegative = 15.0
    # True: a request also waits for room for its blocks, as vLLM's scheduler makes it (one
    # that could never fit is a 400). False: blocks are overcommitted; only slots queue.
    wait_for_blocks: bool = False


class FailureProfile(_Frozen):
    """Failures drawn per request from the server's seeded RNG."""

    error_rate: Rate = 0.0
    error_status: Annotated[int, Field(ge=400, le=599)] = 500
    hang_rate: Rate = 0.0
    reset_rate: Rate = 0.0
    reset_after_chunks: Annotated[int, Field(ge=0)] = 3
    slow_first_byte_ms: NonNegative = 0.0

    @model_validator(mode="after")
    def _rates_fit(self) -> FailureProfile:
        if self.error_rate + self.hang_rate + self.reset_rate > 1:
            raise ValueError("error_rate + hang_rate + reset_rate must not exceed 1")
        return self


class ModelProfile(_Frozen):
    # Without prefill_tokens_per_second: the time to first token of an uncached prompt of any
    # length. With it: the fixed part (scheduling, the first decode step), to which each
    # uncached prompt token adds 1 / prefill_tokens_per_second.
    ttft_ms: NonNegative = 120.0
    jitter_ms: NonNegative = 0.0
    prefill_tokens_per_second: Annotated[float, Field(gt=0)] | None = None
    # True: the model prefills one prompt at a time at that rate, in admission order (one GPU's
    # compute, shared by the slots). False: each slot prefills on its own at that rate.
    shared_prefill: bool = False
    tokens_per_second: Annotated[float, Field(gt=0)] = 60.0
    slots: Annotated[int, Field(ge=1)] = 4
    max_queue: Annotated[int, Field(ge=0)] = 256
    max_tokens_default: Annotated[int, Field(ge=1)] = 64
    max_model_len: Annotated[int, Field(ge=1)] = 32768
    # > 0: an embedding model (serves /v1/embeddings only, like vLLM started with --task embed).
    embedding_dim: Annotated[int, Field(ge=0)] = 0
    # What it generates: text (chat, completions; embeddings with embedding_dim), images
    # (/v1/images/generations), speech (/v1/audio/speech) or transcripts (/v1/audio/
    # transcriptions). Time to first token is the time to the answer's first byte.
    modality: Literal["text", "image", "speech", "transcription"] = "text"
    prefix_cache: PrefixCacheProfile = PrefixCacheProfile()
    failures: FailureProfile = FailureProfile()
    api_key: str | None = Field(default=None, repr=False)
    # True: it serves POST /v1/responses too (sim/responses.py), as vLLM does.
    responses: bool = False

    @property
    def is_embedding(self) -> bool:
        return self.embedding_dim > 0

    def at_speed(self, speed: float) -> ModelProfile:
        """This model on hardware ``speed`` times as fast: every duration divided by it, every
        rate multiplied (injected failures, such as ``slow_first_byte_ms``, stay as they are)."""
        if speed == 1:
            return self
        prefill = self.prefill_tokens_per_second
        cache = self.prefix_cache.model_copy(
            update={"hit_ttft_ms": self.prefix_cache.hit_ttft_ms / speed}
        )
        return self.model_copy(
            update={
                "ttft_ms": self.ttft_ms / speed,
                "jitter_ms": self.jitter_ms / speed,
                "prefill_tokens_per_second": None if prefill is None else prefill * speed,
                "tokens_per_second": self.tokens_per_second * speed,
                "prefix_cache": cache,
            }
        )

    @model_validator(mode="after")
    def _consistent(self) -> ModelProfile:
        if self.embedding_dim and self.modality != "text":
            raise ValueError("embedding_dim is for text models only")
        if self.shared_prefill and self.prefill_tokens_per_second is None:
            raise ValueError("shared_prefill needs prefill_tokens_per_second")
        return self


class ServerProfile(_Frozen):
    name: Annotated[str, Field(min_length=1)]
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0: pick a free port
    # This server's hardware relative to the profiles' (0.5: half as fast), for skewed fleets.
    speed: Annotated[float, Field(gt=0)] = 1.0
    metrics: MetricsKind = "vllm"
    models: Annotated[dict[str, ModelProfile], Field(min_length=1)]

    @model_validator(mode="after")
    def _one_model_for_llamacpp(self) -> ServerProfile:
        if self.metrics == "llamacpp" and len(self.models) > 1:
            raise ValueError("a server with llama.cpp's metrics serves one model")
        return self


class FleetProfile(_Frozen):
    seed: int = 0
    servers: Annotated[tuple[ServerProfile, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _distinct(self) -> FleetProfile:
        names = [s.name for s in self.servers]
        if len(set(names)) != len(names):
            raise ValueError("server names must be distinct")
        bound = [(s.host, s.port) for s in self.servers if s.port != 0]
        if len(set(bound)) != len(bound):
            raise ValueError("two servers listen on the same host and port")
        return self


def parse_fleet_profile(raw: Any) -> FleetProfile:
    """Validate an already-parsed mapping; raises ``ConfigError`` listing every problem."""
    try:
        return FleetProfile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, FleetProfile)) from None


def load_fleet_profile(path: str | Path) -> FleetProfile:
    return parse_fleet_profile(read_yaml(path))
