"""``POST /v1/chat/completions``: a request -> the SDK call(s) -> OpenAI's completion or its chunks.

Settings map onto the contract's (``GenerationSettings``): ``max_completion_tokens`` (or
``max_tokens``), ``temperature`` (unset or 0: greedy, the checkpoint's default, as the SDK),
``top_p``, ``seed`` (``random_seed``; choice ``i`` of ``n`` sampled ones takes ``seed + i``) and the
extensions ``min_tokens``, ``beam_width``, ``top_k``, ``repetition_penalty``, ``length_penalty``,
``no_repeat_ngram_size``. Out-of-range values get the server's own one-line message.

``usage``: ``prompt_tokens`` = the image's query tokens (``prompt_tokens_details.image_tokens``) +
the prompt's tokens as the server tokenises it; ``completion_tokens`` = the answer re-tokenised
(the end-of-sequence token not counted; at most ``max_tokens``): exact for answers that tokenise back
to the tokens generated, as a trained checkpoint's do, an estimate otherwise (the server sends text,
not token counts). ``finish_reason``: ``stop`` (the model ended, or a stop
string came), ``length`` when the answer has ``max_tokens`` tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import Any

from blip2_triton.client import AsyncBlip2Client, Blip2ClientError, GenerationSettings
from blip2_triton.runtime.contract import DEFAULT_MAX_TOKENS

from .errors import bad_request, from_client_error
from .image_urls import ImageFetcher
from .messages import conversation
from .schemas import ChatCompletionRequest
from .served_model import ServedModel
from .sse import sse, sse_done
from .stops import StopScanner, cut, stop_list

_EXTENSIONS = (
    "min_tokens",
    "beam_width",
    "top_k",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
)


@dataclass(frozen=True)
class ChatJob:
    """One checked chat request, ready to send."""

    image: bytes
    prompt: str | None
    settings: GenerationSettings
    stops: tuple[str, ...]
    choices: int
    prompt_tokens: int
    include_usage: bool

    @property
    def max_tokens(self) -> int:
        return self.settings.max_tokens or DEFAULT_MAX_TOKENS

    def choice_settings(self, index: int) -> GenerationSettings:
        """Choice ``index``'s settings: a sampled choice with a seed gets ``seed + index``."""
        seed = self.settings.random_seed
        if index == 0 or seed is None or not self.settings.sampling:
            return self.settings
        return replace(self.settings, random_seed=(seed + index) % 2**64)


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    refusals = [
        (bool(request.tools), "tools"),
        (bool(request.logprobs) or bool(request.top_logprobs), "logprobs"),
        (request.frequency_penalty not in (None, 0), "frequency_penalty"),
        (request.presence_penalty not in (None, 0), "presence_penalty"),
        ((request.response_format or {}).get("type", "text") != "text", "response_format"),
    ]
    for asked, name in refusals:
        if asked:
            raise bad_request(f"{name} is not supported by BLIP-2", name)


def _settings(request: ChatCompletionRequest) -> GenerationSettings:
    both = request.max_tokens is not None and request.max_completion_tokens is not None
    if both and request.max_tokens != request.max_completion_tokens:
        raise bad_request("max_tokens and max_completion_tokens differ: send one", "max_tokens")
    values: dict[str, Any] = {
        "max_tokens": request.max_completion_tokens
        if request.max_completion_tokens is not None
        else request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "random_seed": request.seed,
        **{name: getattr(request, name) for name in _EXTENSIONS},
    }
    try:
        return GenerationSettings(**values)
    except (TypeError, ValueError) as exc:
        raise bad_request(str(exc)) from None


class ChatCompletions:
    """Chat completions for the served model, through the SDK's asyncio client."""

    def __init__(
        self, client: AsyncBlip2Client, model: ServedModel, images: ImageFetcher, max_choices: int
    ) -> None:
        self.client = client
        self.model = model
        self.images = images
        self.max_choices = max_choices

    async def prepare(self, request: ChatCompletionRequest) -> ChatJob:
        """The request checked and its image fetched; a 400 ApiError for what is wrong."""
        if not self.model.generates:
            raise bad_request(
                f"model '{self.model.id}' retrieves; it does not generate (use /v1/embeddings)", "model"
            )
        _refuse_unsupported(request)
        if not 1 <= request.n <= self.max_choices:
            raise bad_request(f"n must be 1 ... {self.max_choices}, got {request.n}", "n")
        if request.stream and request.n != 1:
            raise bad_request("a stream has one choice: n must be 1 with stream", "n")
        settings = _settings(request)
        stops = stop_list(request.stop)
        asked = conversation(request.messages, self.model.family or "opt")
        image = await self.images.fetch(asked.image_url)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return ChatJob(
            image,
            asked.prompt,
            settings,
            stops,
            request.n,
            self.model.count_prompt(asked.prompt),
            include_usage,
        )

    # -- unary ----------------------------------------------------------------------------------
    async def complete(self, job: ChatJob) -> dict[str, Any]:
        """The whole ``chat.completion``; the choices are sent concurrently."""
        calls = [self._answer(job, index) for index in range(job.choices)]
        try:
            texts = await asyncio.gather(*calls)
        except Blip2ClientError as error:
            raise from_client_error(error) from None
        choices, completion_tokens = [], 0
        for index, text in enumerate(texts):
            text, stopped = cut(text, job.stops)
            tokens = self._count(job, text)
            completion_tokens += tokens
            message = {"role": "assistant", "content": text}
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self._finish(job, tokens, stopped),
                }
            )
        return {
            **self._envelope("chat.completion"),
            "choices": choices,
            "usage": self._usage(job, completion_tokens),
        }

    async def _answer(self, job: ChatJob, index: int) -> str:
        return await self.client.caption(job.image, prompt=job.prompt, settings=job.choice_settings(index))

    # -- streaming ------------------------------------------------------------------------------
    async def open_stream(self, job: ChatJob) -> AsyncGenerator[str, None]:
        """The SSE events of a stream, opened now: a refusal before the first piece is raised here
        (an ApiError with its status), later ones are sent as an error event."""
        pieces = self.client.stream_caption(job.image, prompt=job.prompt, settings=job.settings)
        try:
            first = await pieces.__anext__()
        except StopAsyncIteration:
            first = ""
        except Blip2ClientError as error:
            await pieces.aclose()
            raise from_client_error(error) from None
        except BaseException:
            await pieces.aclose()
            raise
        return self._events(job, first, pieces)

    async def _events(
        self, job: ChatJob, first: str, pieces: AsyncGenerator[str, None]
    ) -> AsyncGenerator[str, None]:
        envelope = self._envelope("chat.completion.chunk")
        scanner = StopScanner(job.stops)
        answer: list[str] = []

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse({**envelope, "choices": [choice]})

        async with contextlib.aclosing(pieces), contextlib.aclosing(_chain(first, pieces)) as stream:
            # leaving (a stop string, the client gone) closes ``pieces``: the request is cancelled
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for piece in stream:
                    text = scanner.feed(piece)
                    if text:
                        answer.append(text)
                        yield chunk({"content": text})
                    if scanner.stopped:
                        break
            except Blip2ClientError as error:
                yield sse(from_client_error(error).body())
                yield sse_done()
                return
        tail = scanner.flush()
        if tail:
            answer.append(tail)
            yield chunk({"content": tail})
        tokens = self._count(job, "".join(answer))
        yield chunk({}, self._finish(job, tokens, scanner.stopped))
        if job.include_usage:
            yield sse({**envelope, "choices": [], "usage": self._usage(job, tokens)})
        yield sse_done()

    # -- shared -----------------------------------------------------------------------------------
    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model.id,
        }

    def _count(self, job: ChatJob, text: str) -> int:
        """The answer's tokens, re-tokenised; never above ``max_tokens`` (a random model's pieces
        may tokenise back into more tokens than it generated)."""
        return min(self.model.count_text(text), job.max_tokens)

    @staticmethod
    def _finish(job: ChatJob, tokens: int, stopped: bool) -> str:
        return "length" if not stopped and tokens >= job.max_tokens else "stop"

    def _usage(self, job: ChatJob, completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": job.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"image_tokens": self.model.image_tokens},
        }


async def _chain(first: str, rest: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    if first:
        yield first
    async for piece in rest:
        yield piece
