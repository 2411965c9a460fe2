"""The FastAPI application: routes, error handlers and the guards around them (``create_app``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from blip2_triton import __version__
from blip2_triton.client import AsyncBlip2Client, RetryPolicy

from . import sse
from .chat import ChatCompletions
from .config import FrontendConfig
from .errors import ApiError, bad_request
from .guards import ApiKey, BodyLimit, Measured
from .image_urls import ImageFetcher
from .metrics import FrontendMetrics
from .retrieval import Retrieval
from .schemas import ChatCompletionRequest, EmbeddingRequest, ScoreRequest
from .served_model import ServedModel

log = logging.getLogger("blip2_triton.openai")


def _validation_error(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return bad_request(
            f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})"
        )
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = first.get("msg", "invalid request body")
    return bad_request(f"{where}: {message}" if where else message, where or None)


def _http_error(exc: HTTPException) -> ApiError:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return ApiError(exc.status_code, exc.detail, kind=kind)


class Frontend:
    """What the routes share: the served model, the SDK client (made inside the event loop)."""

    def __init__(self, config: FrontendConfig, model: ServedModel) -> None:
        self.config = config
        self.model = model
        self.metrics = FrontendMetrics()
        self.images = ImageFetcher(config.allowed_image_hosts, config.image_fetch_timeout_s)
        self.client = AsyncBlip2Client(
            config.triton_url,
            model_name=model.readiness_model,
            inference_timeout_s=config.request_timeout_s,
            init_timeout_s=5.0,
            max_concurrency=64,
            retry=RetryPolicy.off(),
        )
        self.chat = ChatCompletions(self.client, model, self.images, config.max_choices)
        self.retrieval = Retrieval(self.client, model, self.images)

    def check_model(self, name: str) -> None:
        if name != self.model.id:
            raise bad_request(
                f"model '{name}' is not served here; this server serves '{self.model.id}'",
                "model",
                "model_not_found",
            )

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model.id,
            "object": "model",
            "created": self.model.created,
            "owned_by": "blip2-triton",
            "architecture": self.model.architecture,
            "family": self.model.family,
            "capability": self.model.capability,
        }

    async def close(self) -> None:
        await self.images.close()
        await self.client.close()


def create_app(config: FrontendConfig, model: ServedModel) -> Any:
    """The ASGI application: the routes inside the metrics, API-key and body-limit guards."""
    frontend = Frontend(config, model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await frontend.close()

    app = FastAPI(title="blip2-triton OpenAI-compatible API", version=__version__, lifespan=lifespan)
    app.state.frontend = frontend

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _http_error(exc).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error").response()

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [frontend.model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        if name != model.id:
            raise ApiError(404, f"model '{name}' is not served here", code="model_not_found")
        return frontend.model_card()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        frontend.check_model(body.model)
        job = await frontend.chat.prepare(body)
        if not body.stream:
            return await frontend.chat.complete(job)
        events = await frontend.chat.open_stream(job)
        return StreamingResponse(events, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        frontend.check_model(body.model)
        return await frontend.retrieval.embeddings(body)

    @app.post("/v1/score")
    async def score(body: ScoreRequest) -> dict[str, Any]:
        frontend.check_model(body.model)
        return await frontend.retrieval.score(body)

    @app.get("/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/health")
    async def health() -> JSONResponse:
        ready = await frontend.client.is_ready()
        body = {"live": True, "ready": ready, "triton": config.triton_url, "model": model.id}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(frontend.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    guarded: Any = ApiKey(app, config.api_key)
    guarded = BodyLimit(guarded, config.max_body_bytes)
    return Measured(guarded, frontend.metrics)
