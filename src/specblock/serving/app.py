"""The OpenAI-compatible HTTP API over a `BatchScheduler` (FastAPI; run by `specblock serve`).

Endpoints: POST /v1/chat/completions, POST /v1/completions (both stream as server-sent
events in OpenAI's chunk format), GET /v1/models, GET /health, GET /metrics (Prometheus
text), GET / (the web view). Every error is an OpenAI-style body; one request's failure
never stops the others.
"""

from __future__ import annotations

import asyncio
import html
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from specblock.api import SpecGenerator
from specblock.decoding import DecodeSettings, cache_slots_for
from specblock.errors import SpecBlockError
from specblock.sampling import SamplingParams
from specblock.serving.metrics import ServerMetrics
from specblock.serving.responses import Reply, sse, tau
from specblock.serving.scheduler import BatchScheduler, Failed, Finished, Job, QueueFullError, Tokens
from specblock.serving.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    error_body,
    error_response,
)
from specblock.target.kernels import CHECKED_CALL_ROWS

MAX_STOP_STRINGS = 4
DISCONNECT_CHECK_S = 0.5


@dataclass
class ServerConfig:
    model_name: str  # the id clients send as `model`
    api_key: str | None = None
    request_timeout_s: float = 600.0
    default_max_tokens: int = 512
    max_batch: int = 4
    queue_size: int = 16
    max_context: int = 8192  # tokens per request (prompt + output), at most the model's context


class RequestError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


class Server:
    """The loaded generator, its scheduler and counters; `app` is the ASGI application."""

    def __init__(self, generator: SpecGenerator, config: ServerConfig, engine_thread: bool = True) -> None:
        """`engine_thread=False`: the caller runs `scheduler.run()` on its own thread (the CLI's main
        thread, see `serving.scheduler`); otherwise the app starts an engine thread."""
        self.gen = generator
        self.config = config
        self.engine_thread = engine_thread
        self.context = min(config.max_context, generator.target.cfg.max_position_embeddings)
        self.scheduler = BatchScheduler(
            generator.target, generator.drafter, generator.tokenizer.decode, config.max_batch, config.queue_size,
            slot_capacity=cache_slots_for(self.context, generator.node_budget),
            batch_budgets=generator.batch_budgets(config.max_batch),
        )  # fmt: skip
        self.metrics = ServerMetrics()
        self.app = self._build_app()

    def exactness_note(self) -> str | None:
        """A warning when a full batch verifies more rows per product than the kernel table
        checked for row invariance (outputs then equal solo ones, but unverified). A
        chunked plan runs every exact call in chunks of one checked size: no warning."""
        rows = self.config.max_batch * (self.gen.node_budget + 1)
        target = self.gen.target
        if target.batch_invariant and not target.plan.chunk_rows and rows > CHECKED_CALL_ROWS:
            return (f"note: a full batch verifies up to {rows} rows per product; row invariance was checked up to "
                    f"{CHECKED_CALL_ROWS}, so equality with solo outputs beyond that is expected but unchecked")  # fmt: skip
        return None

    # -- requests to jobs ---------------------------------------------------------------
    def settings_for(self, body: SamplingFields, prompt_tokens: int) -> DecodeSettings:
        if body.model != self.config.model_name:
            raise RequestError(404, f"model {body.model!r} is not served here; this server serves "
                               f"{self.config.model_name!r}", "model_not_found", "model")  # fmt: skip
        if body.n != 1:
            raise RequestError(400, f"n={body.n} is not supported: each request returns one choice", param="n")
        if body.presence_penalty or body.frequency_penalty:
            raise RequestError(400, "presence_penalty and frequency_penalty are not supported (they would change "
                               "the target's distribution)", param="presence_penalty")  # fmt: skip
        if body.logprobs:
            raise RequestError(400, "logprobs are not supported", param="logprobs")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise RequestError(400, f"stop takes at most {MAX_STOP_STRINGS} non-empty strings", param="stop")
        context = self.context
        if prompt_tokens >= context:
            raise RequestError(400, f"the prompt has {prompt_tokens} tokens; this server's context holds {context} "
                               "(the model's window or --max-context), so it must be shorter to leave room for at "
                               "least one new token",
                               "context_length_exceeded", "messages")  # fmt: skip
        asked = getattr(body, "max_completion_tokens", None)
        asked = body.max_tokens if asked is None else asked
        if asked is not None and asked < 1:
            raise RequestError(400, f"max_tokens must be >= 1, got {asked}", param="max_tokens")
        max_new = min(asked or self.config.default_max_tokens, context - prompt_tokens)
        try:
            sampling = SamplingParams(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, seed=body.seed)
            return DecodeSettings(
                max_new_tokens=max_new, sampling=sampling, node_budget=self.gen.node_budget,
                eos_token_ids=self.gen.tokenizer.eos_token_ids(self.gen.target.cfg), stop_strings=tuple(stops),
            )  # fmt: skip
        except SpecBlockError as exc:
            raise RequestError(400, str(exc)) from None

    def encode(self, body: ChatCompletionRequest | CompletionRequest) -> list[int]:
        try:
            if isinstance(body, ChatCompletionRequest):
                messages = [{"role": m.role, "content": m.content} for m in body.messages]
                return self.gen.tokenizer.encode(messages=messages)
            return self.gen.tokenizer.encode(body.prompt, raw=True)
        except SpecBlockError as exc:
            raise RequestError(400, str(exc)) from None

    # -- running one request --------------------------------------------------------------
    async def run(self, request: Request, body: ChatCompletionRequest | CompletionRequest) -> Response:
        ids = self.encode(body)
        settings = self.settings_for(body, len(ids))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(ids, settings, lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
                  self.config.request_timeout_s)  # fmt: skip
        try:
            self.scheduler.submit(job)
        except QueueFullError as exc:
            self.metrics.record("rejected")
            return error_response(503, f"the server is busy ({exc}); retry shortly", "server_busy",
                                  headers={"Retry-After": "1"})  # fmt: skip
        reply = Reply(self, body, ids, settings)
        if body.stream:
            return StreamingResponse(self._stream(request, job, events, reply), media_type="text/event-stream")
        checked = [time.monotonic()]
        try:
            while True:
                event = await self._next(request, job, events, checked)
                if event is None:
                    self.metrics.record("cancelled")
                    return Response(status_code=499)  # the client left; nobody reads this
                if isinstance(event, Tokens):
                    reply.add(event)
                elif isinstance(event, Finished):
                    self.metrics.record("completed", len(ids), event.stats.new_tokens, tau(event.stats))
                    return JSONResponse(reply.whole(event))
                else:
                    return self._failure(event)
        finally:
            job.cancel()  # a no-op once the engine dropped it; frees the slot if we leave early

    async def _next(self, request: Request, job: Job, events: asyncio.Queue, checked: list[float]):
        """The next engine event, or None once the client disconnected (the job is then cancelled).
        The connection is checked every DISCONNECT_CHECK_S even while events keep coming."""
        while True:
            if time.monotonic() - checked[0] >= DISCONNECT_CHECK_S:
                checked[0] = time.monotonic()
                if await request.is_disconnected():
                    job.cancel()
                    return None
            try:
                return await asyncio.wait_for(events.get(), timeout=DISCONNECT_CHECK_S)
            except TimeoutError:
                continue

    async def _stream(self, request: Request, job: Job, events: asyncio.Queue, reply: "Reply") -> AsyncIterator[str]:
        finished, checked = False, [time.monotonic()]
        try:
            yield sse(reply.opening())
            held = None
            while True:
                event, held = held or await self._next(request, job, events, checked), None
                if event is None:
                    return
                if isinstance(event, Tokens):
                    pieces = reply.add(event)
                    while not events.empty():  # a client slower than the engine gets one chunk for all
                        held = events.get_nowait()
                        if not isinstance(held, Tokens):
                            break
                        pieces += reply.add(held)
                        held = None
                    if pieces:
                        yield sse(reply.chunk(pieces))
                    continue
                finished = True
                if isinstance(event, Finished):
                    self.metrics.record("completed", len(reply.ids), event.stats.new_tokens, tau(event.stats))
                    for chunk in reply.closing(event):
                        yield sse(chunk)
                else:
                    self._record_failure(event)
                    yield sse(error_body(event.message, event.kind))
                yield "data: [DONE]\n\n"
                return
        finally:
            if not finished:
                job.cancel()  # disconnected mid-stream: the engine frees the slot at the next iteration
                self.metrics.record("cancelled")

    def _record_failure(self, event: Failed) -> None:
        self.metrics.record("timeout" if event.kind == "timeout" else "failed")

    def _failure(self, event: Failed) -> JSONResponse:
        self._record_failure(event)
        status = {"timeout": 504, "shutdown": 503}.get(event.kind, 500)
        return error_response(status, event.message, event.kind)

    # -- the application ------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI):
            if self.engine_thread:
                self.scheduler.start()
            yield
            left = self.scheduler.active + self.scheduler.queue_depth
            self.scheduler.stop()
            done = self.metrics.requests["completed"]
            print(f"specblock serve: shut down ({done} requests completed, {left} cancelled at shutdown)", flush=True)

        app = FastAPI(title="specblock", lifespan=lifespan, docs_url=None, redoc_url=None)
        self._add_error_handlers(app)

        @app.middleware("http")
        async def authenticate(request: Request, call_next):
            key = self.config.api_key
            if key and request.url.path.startswith("/v1/"):
                given = request.headers.get("authorization", "")
                if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
                    return error_response(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                          code="invalid_api_key")  # fmt: skip
            return await call_next(request)

        @app.post("/v1/chat/completions")
        async def chat_completions(body: ChatCompletionRequest, request: Request):
            return await self.run(request, body)

        @app.post("/v1/completions")
        async def completions(body: CompletionRequest, request: Request):
            return await self.run(request, body)

        @app.get("/v1/models")
        async def models():
            entry = {"id": self.config.model_name, "object": "model", "created": 0, "owned_by": "specblock"}
            return {"object": "list", "data": [entry]}

        @app.get("/health")
        async def health():
            if not self.scheduler.alive:
                return error_response(503, "the engine has stopped", "server_error", code="engine_stopped")
            return {"status": "ok", "model": self.config.model_name, "method": self.gen.method,
                    "node_budget": self.gen.node_budget, "batch_budgets": self.scheduler.batch_budgets,
                    "dtype": self.gen.target.dtype_name,
                    "active": self.scheduler.active, "queue": self.scheduler.queue_depth}  # fmt: skip

        @app.get("/metrics")
        async def metrics():
            return PlainTextResponse(self.metrics.render(self.scheduler), media_type="text/plain; version=0.0.4")

        @app.get("/")
        async def web_view():
            page = resources.files("specblock.serving").joinpath("static/index.html").read_text(encoding="utf-8")
            name = self.config.model_name
            return HTMLResponse(page.replace("{{MODEL_JSON}}", json.dumps(name)).replace("{{MODEL}}", html.escape(name)))

        return app

    def _add_error_handlers(self, app: FastAPI) -> None:
        @app.exception_handler(RequestError)
        async def refused(request: Request, exc: RequestError):
            self.metrics.record("rejected")
            return error_response(exc.status, str(exc), code=exc.code, param=exc.param)

        @app.exception_handler(RequestValidationError)
        async def invalid(request: Request, exc: RequestValidationError):
            self.metrics.record("rejected")
            errors = exc.errors()
            if any(e.get("type") == "json_invalid" for e in errors):
                return error_response(400, "the request body is not valid JSON", code="invalid_json")
            first = errors[0] if errors else {}
            where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
            return error_response(422, f"invalid request: {where or 'body'}: {first.get('msg', 'invalid')}",
                                  param=where or None)  # fmt: skip

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException):
            return error_response(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

        @app.exception_handler(Exception)
        async def unexpected(request: Request, exc: Exception):
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error")
