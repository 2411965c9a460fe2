"""Conversations about one image: :class:`ChatSession` (blocking) and :class:`AsyncChatSession`.

Each question is sent with the earlier questions and answers in the prompt (BLIP-2's LAVIS format,
``prompts.chat_prompt``). The image is encoded once per session, when it starts: every turn sends
the same serialised ``image`` tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Generator
from typing import Any, Protocol

from blip2_triton.runtime.contract import STREAM_MODEL

from . import _tensors
from .calls import generation_call
from .prompts import chat_prompt
from .settings import GenerationSettings, resolve_settings
from .transport import Call

__all__ = ["AsyncChatSession", "ChatSession"]


class _Client(Protocol):
    """What a session uses of its client (``Blip2Client`` or ``AsyncBlip2Client``): public members only."""

    @property
    def protocol(self) -> str: ...

    @property
    def model_name(self) -> str: ...

    @property
    def transport(self) -> Any: ...

    def llm_family(self) -> Any: ...


class _ChatBase:
    """The image tensor, the history and the prompt of a session; the twins only send."""

    def __init__(self, client: _Client, image: bytes) -> None:
        self._client = client
        self._image_input = _tensors.image_input(client.protocol, image)
        self._history: list[tuple[str, str]] = []

    @property
    def history(self) -> tuple[tuple[str, str], ...]:
        """The ``(question, answer)`` turns so far."""
        return tuple(self._history)

    def reset(self) -> None:
        """Forget the earlier turns (same image)."""
        self._history.clear()

    def _prompt(self, family: str, question: str) -> str:
        return chat_prompt(family, self._history, question)

    def _call(self, prompt: str, settings: GenerationSettings, *, stream: bool = False) -> Call[str]:
        client = self._client
        model = STREAM_MODEL if stream else client.model_name
        return generation_call(client.protocol, model, self._image_input, prompt, settings)

    def _answered(self, question: str, answer: str) -> str:
        self._history.append((question, answer))
        return answer


class ChatSession(_ChatBase):
    """A conversation about one image; :meth:`ask` keeps earlier turns in the prompt (LAVIS format)."""

    def prompt_for(self, question: str) -> str:
        """The prompt that :meth:`ask` would send for ``question`` now."""
        return self._prompt(self._client.llm_family(), question)

    def ask(
        self,
        question: str,
        settings: GenerationSettings | None = None,
        *,
        stream: bool = False,
        **generation: Any,
    ) -> Any:
        """The answer to ``question``, given the earlier turns; the turn is added to the history.

        With ``stream=True``: an iterator of the answer's pieces as they are generated; the turn
        is added once the iterator is used up (leaving early cancels the request, adds nothing).
        """
        resolved = resolve_settings(settings, generation)
        call = self._call(self.prompt_for(question), resolved, stream=stream)
        if stream:
            return self._record(question, self._client.transport.stream(call))
        return self._answered(question, self._client.transport.infer(call))

    def _record(self, question: str, pieces: Generator[str, None, None]) -> Generator[str, None, None]:
        answer = []
        with contextlib.closing(pieces):  # closing a stream cancels it
            for piece in pieces:
                answer.append(piece)
                yield piece
        self._answered(question, "".join(answer))


class AsyncChatSession(_ChatBase):
    """A conversation about one image; ``await session.ask(...)`` keeps earlier turns in the prompt."""

    async def prompt_for(self, question: str) -> str:
        """The prompt that :meth:`ask` would send for ``question`` now."""
        return self._prompt(await self._client.llm_family(), question)

    async def ask(
        self,
        question: str,
        settings: GenerationSettings | None = None,
        *,
        stream: bool = False,
        **generation: Any,
    ) -> Any:
        """The answer to ``question``, given the earlier turns; the turn is added to the history.

        With ``stream=True``: ``async for piece in await session.ask(q, stream=True)``; the turn
        is added once the pieces are used up (leaving early cancels the request, adds nothing).
        """
        resolved = resolve_settings(settings, generation)
        call = self._call(await self.prompt_for(question), resolved, stream=stream)
        if stream:
            return self._record(question, self._client.transport.stream(call))
        return self._answered(question, await self._client.transport.infer(call))

    async def _record(self, question: str, pieces: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
        answer = []
        async with contextlib.aclosing(pieces):  # closing a stream cancels it
            async for piece in pieces:
                answer.append(piece)
                yield piece
        self._answered(question, "".join(answer))
