"""What :class:`~.Blip2Client` and :class:`~.AsyncBlip2Client` share: one constructor, options, calls.

Each flavour sets its transport (and the lock that guards the cached language-model family) and
writes its public methods as "build the calls here, send them with my transport".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from blip2_triton.runtime.contract import PUBLIC_MODEL, STREAM_MODEL

from . import _tensors
from .calls import batch_prompts, generation_call
from .images import ImageLike
from .options import ClientOptions
from .retry import RetryPolicy
from .settings import GenerationSettings
from .transport import AsyncTransport, Call, Transport

__all__ = ["ClientBase"]


class ClientBase:
    """The constructor, the read-only options and the call builders of both clients."""

    _transport_class: ClassVar[type[Transport] | type[AsyncTransport]]
    _lock_class: ClassVar[type]

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: str | None = None,
        model_name: str = PUBLIC_MODEL,
        inference_timeout_s: float = 60.0,
        init_timeout_s: float = 30.0,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        tls: bool | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._options = ClientOptions.create(
            url,
            protocol,
            model_name,
            inference_timeout_s,
            init_timeout_s,
            max_concurrency,
            retry,
            tls=tls,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            insecure=insecure,
            headers=headers,
        )
        self._transport: Any = self._transport_class(self._options)
        self._family: str | None = None
        self._family_lock = self._lock_class()

    # -- properties --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._options.url

    @property
    def protocol(self) -> str:
        return self._options.protocol

    @property
    def tls(self) -> bool:
        return self._options.network.tls

    @property
    def model_name(self) -> str:
        return self._options.model_name

    @property
    def max_concurrency(self) -> int:
        return self._options.max_concurrency

    @property
    def transport(self) -> Transport | AsyncTransport:
        """The layer below this client that sends its calls (chat sessions and the index use it too)."""
        return self._transport

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.url!r}, protocol={self.protocol!r}, model_name={self.model_name!r}"
            f"{', tls=True' if self.tls else ''})"
        )

    # -- calls -------------------------------------------------------------------------------
    def _generation_call(self, image: bytes, prompt: str | None, settings: GenerationSettings) -> Call[str]:
        image_input = _tensors.image_input(self.protocol, image)
        return generation_call(self.protocol, self.model_name, image_input, prompt, settings)

    def _stream_call(self, image: bytes, prompt: str | None, settings: GenerationSettings) -> Call[str]:
        """The same request for the streaming model ``blip2_stream``."""
        image_input = _tensors.image_input(self.protocol, image)
        return generation_call(self.protocol, STREAM_MODEL, image_input, prompt, settings)

    @staticmethod
    def _captions_to_make(
        images: Sequence[ImageLike], prompt: str | Sequence[str | None] | None
    ) -> list[tuple[ImageLike, str | None]]:
        """``(image, prompt)`` for each image of a :meth:`caption_batch`."""
        images = list(images)
        return list(zip(images, batch_prompts(prompt, len(images)), strict=True))
