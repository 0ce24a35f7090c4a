"""One simulated OpenAI-compatible model server: the aiohttp application and its handlers.

aiohttp.web rather than the gateway's ASGI stack: it is low-level enough to hold a thousand
concurrent streams in one process, and it gives direct access to the transport, which failure
injection needs to drop a connection mid-stream. A request runs: the header's failures (a
wrapper around every route) -> parse -> resolve the model -> authorize -> the profile's
failures -> queue for a slot -> prefill (time to first token, shortened by prefix-cache hits)
-> tokens paced at ``tokens_per_second``. Stream headers go out with the first token.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from swarmgate.errors import BadRequest, GatewayError, InvalidJSON, ModelNotFound, Unauthorized
from swarmgate.sim import failures, media, metrics, pull, responses, text, tools, wire
from swarmgate.sim.engine import ModelEngine, Prefill
from swarmgate.sim.failures import NO_FAILURE, FailurePlan
from swarmgate.sim.profile import ServerProfile
from swarmgate.sim.request import (
    EmbeddingRequest,
    GenerationRequest,
    model_of,
    parse_embedding,
    parse_generation,
    parse_image,
    parse_speech,
)
from swarmgate.sim.stream import abort, stream_tokens, stream_tool_calls
from swarmgate.types import Usage

SERVER_HEADER = "X-Sim-Server"
MAX_BODY_BYTES = 32 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SimHandler = Callable[[web.Request, FailurePlan], Awaitable[web.StreamResponse]]


def _json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


class SimServer:
    """The engines of one server's models, and the handlers that drive them."""

    def __init__(self, profile: ServerProfile, *, seed: int, testing: bool) -> None:
        self.profile = profile
        self.name = profile.name
        self.testing = testing
        self.engines = {
            model: ModelEngine(
                model,
                mp.at_speed(profile.speed),
                random.Random(f"{seed}:{profile.name}:{model}:ttft"),
            )
            for model, mp in profile.models.items()
        }
        self._failure_rng = random.Random(f"{seed}:{profile.name}:failures")
        self._text_rng = random.Random(f"{seed}:{profile.name}:text")
        self._created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY_BYTES)
        app.on_response_prepare.append(self._tag)
        route = app.router
        route.add_post("/v1/chat/completions", self._injecting(self.chat_completions))
        route.add_post("/v1/completions", self._injecting(self.completions))
        route.add_post("/v1/responses", self.responses)
        route.add_post("/v1/embeddings", self._injecting(self.embeddings))
        route.add_post("/v1/images/generations", self._injecting(self.images))
        route.add_post("/v1/audio/speech", self._injecting(self.speech))
        route.add_post("/v1/audio/transcriptions", self._injecting(self.transcriptions))
        route.add_get("/v1/models", self._injecting(self.models))
        route.add_get("/v1/models/{model:.+}", self._injecting(self.model))
        route.add_get("/health", self._injecting(self.health))
        route.add_get("/metrics", self._injecting(self.metrics))
        route.add_post("/api/pull", pull.pull)  # Ollama's, for model downloads
        return app

    async def _tag(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers[SERVER_HEADER] = self.name

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            return _json_response(exc.body(), exc.status, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return _json_response(wire.error_json(exc.status, exc.reason), exc.status, headers)

    def _injecting(self, handler: SimHandler) -> Handler:
        """Wrap a handler with the ``X-Sim-Fail`` header's failures (``testing`` only)."""

        async def injecting(request: web.Request) -> web.StreamResponse:
            plan = NO_FAILURE
            if self.testing and failures.HEADER in request.headers:
                plan = failures.parse_header(request.headers[failures.HEADER])
            early = await self._before_first_byte(request, plan)
            return early if early is not None else await handler(request, plan)

        return injecting

    async def _before_first_byte(
        self, request: web.Request, plan: FailurePlan
    ) -> web.StreamResponse | None:
        """Act on every failure that happens before a response starts (not ``reset``)."""
        if plan.slow_ms:
            await asyncio.sleep(plan.slow_ms / 1000)
        if plan.disconnect:
            abort(request)
            return web.Response()
        if plan.hang:
            # The handler is cancelled when the client goes away (handler_cancellation).
            await asyncio.Event().wait()
        if plan.garbage:
            return web.Response(body=b"<html>not json", content_type="application/json")
        if plan.error_status is not None:
            status = plan.error_status
            headers = {"Retry-After": "1"} if status in (429, 503) else None
            body = wire.error_json(status, f"simulated error {status}", "simulated_error")
            return _json_response(body, status, headers)
        return None

    async def _respond(
        self, request: web.Request, plan: FailurePlan, body: Any
    ) -> web.StreamResponse:
        """A JSON 200, or, for a ``reset`` plan, half of it and then a dropped connection."""
        if plan.reset_after is None:
            return _json_response(body)
        data = orjson.dumps(body)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        abort(request)
        return response

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidJSON("request body must be a JSON object")
        return body

    def _engine(self, request: web.Request, model: str, modality: str | None = None) -> ModelEngine:
        engine = self.engines.get(model)
        if engine is None:
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        key = engine.profile.api_key
        if key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                raise Unauthorized("Incorrect API key provided.")
        if modality is not None and engine.profile.modality != modality:
            raise BadRequest(
                f"The model `{model}` is a {engine.profile.modality} model.", param="model"
            )
        return engine

    async def _profile_failures(
        self, request: web.Request, engine: ModelEngine, plan: FailurePlan
    ) -> tuple[FailurePlan, web.StreamResponse | None]:
        """The profile's own failures, unless the header already chose some."""
        if not plan.is_empty:
            return plan, None
        plan = failures.draw(engine.profile.failures, self._failure_rng)
        return plan, await self._before_first_byte(request, plan)

    async def chat_completions(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        return await self._generation(request, plan, chat=True)

    async def completions(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        return await self._generation(request, plan, chat=False)

    async def _generation(
        self, request: web.Request, plan: FailurePlan, *, chat: bool
    ) -> web.StreamResponse:
        gen = parse_generation(await self._body(request), chat=chat)
        engine = self._engine(request, gen.model, "text")
        if engine.profile.is_embedding:
            raise BadRequest(f"The model `{gen.model}` does not support generation.", param="model")
        tokens = text.tokenize(gen.prompt)
        limit = gen.max_tokens or engine.profile.max_tokens_default
        if len(tokens) + limit > engine.profile.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {engine.profile.max_model_len} tokens; "
                f"the request has {len(tokens)} prompt tokens and max_tokens {limit}.",
                param="max_tokens",
            )
        reply = self._reply(gen)
        plan, early = await self._profile_failures(request, engine, plan)
        if early is not None:
            return early
        # A reply's length is its own (tool calls, JSON): its KV blocks are that many.
        output = limit if reply is None or gen.max_tokens is not None else reply.tokens
        async with engine.slot(tokens, len(tokens) + output) as prefill:
            await asyncio.sleep(prefill.seconds)
            if reply is not None:
                return await self._structured(request, plan, engine, gen, prefill, reply)
            return await self._generate(request, plan, engine, gen, prefill, limit, chat=chat)

    def _reply(self, gen: GenerationRequest) -> tools.Reply | None:
        """Tool calls or JSON content when the request asks for them (None: plain text).
        Decided before the slot so that a schema it cannot serve is a 400 at once."""
        if gen.structure is None:
            return None
        seed = text.request_seed(gen.seed, gen.prompt, self._text_rng)
        reply = tools.answer(gen.structure, seed)
        return None if reply.is_text else reply

    async def _structured(
        self,
        request: web.Request,
        plan: FailurePlan,
        engine: ModelEngine,
        gen: GenerationRequest,
        prefill: Prefill,
        reply: tools.Reply,
    ) -> web.StreamResponse:
        """Tool calls, or content that is JSON: its length is the reply's, not max_tokens'
        (unless max_tokens cuts it short: finish_reason "length")."""
        finish = "tool_calls" if reply.tool_calls else "stop"
        if gen.max_tokens is not None and reply.tokens > gen.max_tokens:
            reply, finish = reply.cut(gen.max_tokens), "length"
        usage = Usage(prompt_tokens=prefill.prompt_tokens, completion_tokens=reply.tokens)
        cached = prefill.cached_tokens if engine.kv.prefix_caching else None
        id_, created = wire.completion_id("chatcmpl"), int(time.time())
        if gen.stream:
            fmt = wire.ChunkFormat(
                chat=True, id=id_, created=created, model=gen.model, include_usage=gen.include_usage
            )
            if reply.content is not None:
                content = tools.pieces(reply.content)
                return await stream_tokens(
                    request, engine, fmt, content, finish, usage, cached, plan.reset_after
                )
            return await stream_tool_calls(
                request, engine, fmt, reply.tool_calls, finish, usage, cached, plan.reset_after
            )
        await asyncio.sleep(reply.tokens / engine.profile.tokens_per_second)
        engine.counters.generation_tokens += reply.tokens
        engine.counters.requests_finished += 1
        body = wire.chat_completion(
            id=id_,
            created=created,
            model=gen.model,
            text=reply.content,
            finish_reason=finish,
            usage=usage,
            cached_tokens=cached,
            tool_calls=reply.tool_calls,
        )
        return await self._respond(request, plan, body)

    async def _generate(
        self,
        request: web.Request,
        plan: FailurePlan,
        engine: ModelEngine,
        gen: GenerationRequest,
        prefill: Prefill,
        limit: int,
        *,
        chat: bool,
    ) -> web.StreamResponse:
        out = text.generate(text.request_seed(gen.seed, gen.prompt, self._text_rng), limit)
        finish = "stop" if gen.max_tokens is None else "length"
        usage = Usage(prompt_tokens=prefill.prompt_tokens, completion_tokens=len(out))
        cached = prefill.cached_tokens if engine.kv.prefix_caching else None
        id_ = wire.completion_id("chatcmpl" if chat else "cmpl")
        created = int(time.time())
        if gen.stream:
            fmt = wire.ChunkFormat(
                chat=chat, id=id_, created=created, model=gen.model, include_usage=gen.include_usage
            )
            return await stream_tokens(
                request, engine, fmt, out, finish, usage, cached, plan.reset_after
            )
        await asyncio.sleep(len(out) / engine.profile.tokens_per_second)
        engine.counters.generation_tokens += len(out)
        engine.counters.requests_finished += 1
        build = wire.chat_completion if chat else wire.text_completion
        body = build(
            id=id_,
            created=created,
            model=gen.model,
            text="".join(out),
            finish_reason=finish,
            usage=usage,
            cached_tokens=cached,
        )
        return await self._respond(request, plan, body)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API, for models whose profile serves it (the header's failures apply
        on the chat request it makes, ``sim/responses.py``)."""
        body = await self._body(request)
        engine = self.engines.get(str(body.get("model")))
        served = engine is not None and engine.profile.responses
        return await responses.respond(request, body, served)

    async def embeddings(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        req = parse_embedding(await self._body(request))
        engine = self._engine(request, req.model, "text")
        dim = engine.profile.embedding_dim
        if not dim:
            raise BadRequest(f"The model `{req.model}` does not support embeddings.", param="model")
        if req.dimensions is not None and req.dimensions > dim:
            raise BadRequest(f"'dimensions' must be at most {dim}", param="dimensions")
        plan, early = await self._profile_failures(request, engine, plan)
        if early is not None:
            return early
        tokens = [text.tokenize(s) for s in req.inputs]
        flat = [t for ts in tokens for t in ts]
        async with engine.slot(flat) as prefill:
            await asyncio.sleep(prefill.seconds)
            body = wire.embedding_list(req.model, self._vectors(req, dim), len(flat))
            engine.counters.requests_finished += 1
        return await self._respond(request, plan, body)

    async def images(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        req = parse_image(await self._body(request))
        engine = self._engine(request, req.model, "image")
        size = media.size_of(req.size)
        if size is None:
            raise BadRequest(
                f"'size' must be WIDTHxHEIGHT, each side at most {media.MAX_SIDE}", param="size"
            )
        plan, early = await self._profile_failures(request, engine, plan)
        if early is not None:
            return early
        async with engine.slot(text.tokenize(req.prompt)) as prefill:
            await asyncio.sleep(prefill.seconds)
            images = [media.png(f"{req.prompt}#{i}", *size) for i in range(req.n)]
            engine.counters.requests_finished += 1
        body = wire.images_response(int(time.time()), images, req.response_format)
        return await self._respond(request, plan, body)

    async def speech(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        """A tone as long as the text takes to say, streamed a tenth of a second at a time:
        ``tokens_per_second`` / 10 times faster than real time (60: 6x; a test's 2000: 200x)."""
        req = parse_speech(await self._body(request))
        engine = self._engine(request, req.model, "speech")
        plan, early = await self._profile_failures(request, engine, plan)
        if early is not None:
            return early
        async with engine.slot(text.tokenize(req.input)) as prefill:
            await asyncio.sleep(prefill.seconds)
            audio = media.pcm(media.speech_seconds(req.input))
            content_type = "audio/wav" if req.response_format == "wav" else "audio/pcm"
            response = web.StreamResponse(headers={"Content-Type": content_type})
            await response.prepare(request)
            if req.response_format == "wav":
                await response.write(media.wav_header(len(audio)))
            step = media.SAMPLE_RATE // 5  # 0.1 s of 16-bit samples
            pause = 0.1 * 10 / engine.profile.tokens_per_second
            for i, at in enumerate(range(0, len(audio), step)):
                if plan.reset_after is not None and i >= plan.reset_after:
                    abort(request)
                    return response
                await response.write(audio[at : at + step])
                await asyncio.sleep(pause)
            await response.write_eof()
            engine.counters.requests_finished += 1
        return response

    async def transcriptions(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/"):
            raise BadRequest("the request body must be multipart/form-data")
        try:
            form = await request.post()
        except (ValueError, AssertionError, KeyError, HttpProcessingError) as exc:
            # aiohttp's multipart reader raises these on a malformed body: the client's 400.
            raise BadRequest(f"the multipart/form-data body is malformed ({exc})") from None
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            raise BadRequest("'file' is a required file", param="file")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        engine = self._engine(request, model_of(fields), "transcription")
        fmt = fields.get("response_format", "json")
        if fmt not in ("json", "text", "verbose_json"):
            raise BadRequest(
                "'response_format' must be 'json', 'text' or 'verbose_json'",
                param="response_format",
            )
        plan, early = await self._profile_failures(request, engine, plan)
        if early is not None:
            return early
        audio = upload.file.read()
        async with engine.slot([], 1) as prefill:
            await asyncio.sleep(prefill.seconds)
            said = media.transcript(audio)
            engine.counters.requests_finished += 1
        if fmt == "text":
            return web.Response(text=said, content_type="text/plain")
        body = wire.transcription(said, media.audio_seconds(audio), verbose=fmt == "verbose_json")
        return await self._respond(request, plan, body)

    @staticmethod
    def _vectors(req: EmbeddingRequest, dim: int) -> list[list[float]] | list[str]:
        vectors = [text.embed(s, dim) for s in req.inputs]
        if req.dimensions is not None:
            vectors = [text.truncate(v, req.dimensions) for v in vectors]
        if req.encoding_format == "base64":
            return [text.encode_base64(v) for v in vectors]
        return vectors

    async def models(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        cards = [(m, e.profile.max_model_len) for m, e in self.engines.items()]
        return await self._respond(request, plan, wire.model_list(cards, self._created))

    async def model(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        name = request.match_info["model"]
        engine = self.engines.get(name)
        if engine is None:
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
        card = wire.model_card(name, engine.profile.max_model_len, self._created)
        return await self._respond(request, plan, card)

    async def health(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        return await self._respond(request, plan, {"status": "ok"})

    async def metrics(self, request: web.Request, plan: FailurePlan) -> web.StreamResponse:
        return web.Response(
            text=metrics.render(self.engines.values(), self.profile.metrics),
            headers={"Content-Type": metrics.CONTENT_TYPE},
        )
