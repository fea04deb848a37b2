"""The FastAPI app: OpenAI routes, auth, limits, the dashboard, and OpenAI-shaped errors.

See ``docs/serving.md`` for the API. Every refusal is an :class:`ApiError` answered as
``{"error": {...}}``; unexpected exceptions answer 500 in the same shape and the server goes on.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import TemplateError
from starlette.exceptions import HTTPException as StarletteHTTPException

from personavec.core.models import LoadedModel, encode_prompt, load_model
from personavec.core.steering import Intervention
from personavec.engines.limits import check_context_length
from personavec.engines.sampling import sample_seed
from personavec.errors import PersonavecError
from personavec.serve.config import ServeConfig
from personavec.serve.events import collect, deliver, stream_events
from personavec.serve.jobs import Job, JobEvent
from personavec.serve.responses import Kind, ResponseBuilder
from personavec.serve.scheduler import Scheduler
from personavec.serve.schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    parse_body,
)
from personavec.serve.vectors import VectorRegistry

STATIC = Path(__file__).parent / "static"


@dataclass
class Server:
    """Everything a request needs."""

    config: ServeConfig
    loaded: LoadedModel
    vectors: VectorRegistry
    scheduler: Scheduler
    # Prompts are templated and tokenized here, off the event loop (one thread: a tokenizer is
    # not safe to use from several threads at once).
    templating: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="personavec-template")
    )

    @property
    def model_names(self) -> set[str]:
        return {self.loaded.model_id, self.config.model, self.loaded.spec}


def create_app(config: ServeConfig, loaded: LoadedModel | None = None) -> FastAPI:
    """The app for ``config``; pass ``loaded`` to reuse a model already in memory."""
    loaded = loaded or load_model(config.model)
    vectors = VectorRegistry.load_dir(config.vectors_dir, loaded.model)
    scheduler = _scheduler_class(config)(
        loaded,
        max_batch=config.max_batch,
        max_queue=config.max_queue,
        batch_wait_ms=config.batch_wait_ms,
    )
    server = Server(config, loaded, vectors, scheduler)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        scheduler.stop()
        server.templating.shutdown(wait=False)

    app = FastAPI(title="personavec", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    _add_error_handlers(app)
    _add_guards(app, server)
    _add_routes(app, server)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _scheduler_class(config: ServeConfig) -> type[Scheduler]:
    """The server's own continuous batching, or vLLM's (``--engine vllm``)."""
    if config.engine == "vllm":
        from personavec.serve.vllm_scheduler import VLLMScheduler

        return VLLMScheduler
    return Scheduler


# ---- errors, auth and limits --------------------------------------------------------------
def _error(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return _error(ApiError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(ApiError(400, str(exc.errors()[0].get("msg", "invalid request"))))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        message = f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
        return _error(ApiError(500, message, kind="server_error"))


def _add_guards(app: FastAPI, server: Server) -> None:
    key = server.config.api_key

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Response:
        if key is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            token = given.removeprefix("Bearer ").strip() if given.startswith("Bearer ") else ""
            if not token:
                return _error(
                    ApiError(
                        401,
                        "missing API key; send Authorization: Bearer KEY",
                        code="invalid_api_key",
                    )
                )
            if not secrets.compare_digest(token.encode(), key.encode()):
                return _error(ApiError(401, "wrong API key", code="invalid_api_key"))
        response: Response = await call_next(request)
        return response


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, f"the body is over {limit} bytes; send a smaller request")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


# ---- routes -------------------------------------------------------------------------------
def _add_routes(app: FastAPI, server: Server) -> None:
    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return JSONResponse({"message": "personavec server; the API is under /v1"})
        return FileResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        scheduler = server.scheduler
        batching = "continuous" if scheduler.joins else "one sequence at a time"
        return {
            "status": "ok",
            "queue": scheduler.queued,
            "active": scheduler.stats.active,
            "batching": batching,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {
            "id": server.loaded.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "personavec",
        }
        return {"object": "list", "data": [entry]}

    @app.get("/v1/vectors")
    async def vectors() -> dict[str, Any]:
        return {"object": "list", "data": server.vectors.info()}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        raw = await _read_body(request, server.config.max_body_bytes)
        return await _complete(server, request, parse_body(raw, ChatCompletionRequest), "chat")

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        raw = await _read_body(request, server.config.max_body_bytes)
        return await _complete(server, request, parse_body(raw, CompletionRequest), "completion")


def _checked_prompts(
    server: Server, body: ChatCompletionRequest | CompletionRequest, kind: Kind
) -> tuple[list[list[int]], int]:
    """The request's prompt ids and ``max_tokens``, or a 4xx :class:`ApiError` (run in
    ``server.templating``, off the event loop)."""
    config, tokenizer = server.config, server.loaded.tokenizer
    if body.model not in server.model_names:
        raise ApiError(
            404,
            f"model {body.model!r} is not served here; use "
            f"{server.loaded.model_id!r} (see /v1/models)",
            param="model",
            code="model_not_found",
        )
    try:
        if isinstance(body, ChatCompletionRequest):
            prompts = [encode_prompt(tokenizer, body.chat())]
        else:
            prompts = [[int(i) for i in tokenizer(p)["input_ids"]] for p in body.prompts]
    except TemplateError as exc:  # e.g. the template's raise_exception('...')
        message = f"the chat template refused the messages: {exc}".splitlines()[0]
        raise ApiError(400, message, param="messages") from None
    except (ValueError, TypeError) as exc:
        raise ApiError(400, f"cannot render the prompt: {exc}".splitlines()[0]) from None
    if isinstance(body, CompletionRequest) and body.echo:
        raise ApiError(400, "echo is not supported; leave it false", param="echo")
    if any(not ids for ids in prompts):
        raise ApiError(400, "the prompt is empty", param="prompt")
    default = config.max_tokens_limit if kind == "chat" else 16
    max_tokens = body.token_limit or min(default, config.max_tokens_limit)
    if max_tokens > config.max_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens {max_tokens} is over this server's limit of "
            f"{config.max_tokens_limit}; ask for fewer",
            param="max_tokens",
        )
    if len(prompts) * body.n > config.max_batch:
        raise ApiError(
            400,
            f"{len(prompts) * body.n} sequences (prompts × n) is over this "
            f"server's batch limit of {config.max_batch}",
            param="n",
        )
    try:
        check_context_length(server.loaded, prompts, max_tokens)
    except PersonavecError as exc:
        raise ApiError(400, str(exc), param="messages" if kind == "chat" else "prompt") from None
    return prompts, max_tokens


async def _complete(
    server: Server, request: Request, body: ChatCompletionRequest | CompletionRequest, kind: Kind
) -> Response:
    """Validate, queue one job per (prompt, choice), then answer whole or as a stream."""
    config, tokenizer = server.config, server.loaded.tokenizer
    loop = asyncio.get_running_loop()
    check = functools.partial(_checked_prompts, server, body, kind)
    prompts, max_tokens = await loop.run_in_executor(server.templating, check)
    interventions = server.vectors.interventions(body.steering)
    readout = server.vectors.readout(body.monitor_items(), body.guard)
    seed = body.seed if body.seed is not None else secrets.randbits(62)
    setting = _describe_setting(body, interventions)
    events: asyncio.Queue[tuple[int, JobEvent]] = asyncio.Queue()
    jobs = [
        Job(
            prompt_ids=ids,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=sample_seed(seed, "serve", p * body.n + k),
            interventions=interventions,
            readout=readout,
            stops=body.stops,
            logprobs=body.logprob_count,
            report=functools.partial(deliver, loop, events, p * body.n + k),
            setting=setting,
        )
        for p, ids in enumerate(prompts)
        for k in range(body.n)
    ]
    builder = ResponseBuilder(
        kind, server.loaded.model_id, tokenizer, readout, prompts=len(prompts)
    )
    server.scheduler.submit(jobs)
    deadline = loop.time() + config.request_timeout_s
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        stream = stream_events(request, events, jobs, builder, deadline, include_usage=usage)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    choices = await collect(request, events, jobs, deadline)
    return JSONResponse(builder.response(choices))


def _describe_setting(
    body: ChatCompletionRequest | CompletionRequest, interventions: list[Intervention]
) -> str:
    """The request's steering and guards in one phrase (``""`` without either), e.g.
    ``steering [evil] (add 1e+30·v at layer 15)``."""
    parts = []
    if body.steering:
        names = ", ".join(item.vector for item in body.steering)
        changes = ", ".join(
            (f"add {i.coef:g}·v" if i.op == "add" else i.op) + f" at layer {i.layer}"
            for i in interventions
        )
        parts.append(f"steering [{names}] ({changes})")
    if body.guard:
        guards = ", ".join(
            f"{g.vector}" + ("" if g.coef is None else f" coef {g.coef:g}") for g in body.guard
        )
        parts.append(f"guard [{guards}]")
    return " and ".join(parts)
