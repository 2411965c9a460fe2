"""``image_url`` -> encoded image bytes, with limits; what the bytes hold is the server's to check.

- ``data:image/<type>;base64,<data>`` URLs: strict base64, at most the contract's image size.
- ``http(s)://`` URLs: only hosts the operator allowed (``--allow-image-host``), fetched with a time
  limit, redirects not followed (a redirect could leave the allowed hosts), the body read up to the
  size limit and no further.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from urllib.parse import urlsplit

import httpx

from blip2_triton.runtime.contract import MAX_IMAGE_BYTES

from .errors import bad_request

_PARAM = "image_url"


def _too_large(size: int | str) -> Exception:
    return bad_request(f"image_url: the image is over {MAX_IMAGE_BYTES} bytes ({size})", _PARAM)


def decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URL; a 400 ApiError naming the problem."""
    header, comma, data = url.partition(",")
    if not comma or not header.startswith("data:"):
        raise bad_request("image_url: a data URL needs the form data:image/<type>;base64,<data>", _PARAM)
    media_type, *options = header[len("data:") :].split(";")
    if not media_type.startswith("image/"):
        raise bad_request(
            f"image_url: the data URL's type is {media_type or 'missing'!r}, not image/*", _PARAM
        )
    if "base64" not in options:
        raise bad_request("image_url: only base64 data URLs are taken (data:image/<type>;base64,...)", _PARAM)
    if len(data) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise _too_large(f"{len(data)} base64 characters")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("image_url: the data URL's base64 is not valid", _PARAM) from None


class ImageFetcher:
    """Turns ``image_url`` URLs into bytes: data URLs always, http(s) from allowed hosts only."""

    def __init__(self, allowed_hosts: frozenset[str], timeout_s: float) -> None:
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        self.timeout_s = timeout_s
        self._http: httpx.AsyncClient | None = None

    async def fetch(self, url: str) -> bytes:
        if url.startswith("data:"):
            return decode_data_url(url)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise bad_request(
                "image_url: use a data:image/...;base64 URL (or an http(s) URL if allowed)", _PARAM
            )
        host = (parts.hostname or "").lower()
        if host not in self.allowed_hosts:
            raise bad_request(
                f"image_url: host {host!r} is not allowed (the operator allows hosts with --allow-image-host)",
                _PARAM,
            )
        try:  # the whole download, not each read, is bounded
            return await asyncio.wait_for(self._download(url), self.timeout_s)
        except asyncio.TimeoutError:
            raise bad_request(f"image_url: {url} took longer than {self.timeout_s:g} s", _PARAM) from None

    async def _download(self, url: str) -> bytes:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        try:
            async with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise bad_request(f"image_url: {url} answered HTTP {response.status_code}", _PARAM)
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > MAX_IMAGE_BYTES:
                    raise _too_large(f"Content-Length {declared}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_IMAGE_BYTES:
                        raise _too_large(f"more than {MAX_IMAGE_BYTES} bytes sent")
                return bytes(body)
        except httpx.TimeoutException:
            raise asyncio.TimeoutError from None
        except httpx.HTTPError as exc:
            raise bad_request(f"image_url: cannot fetch {url}: {type(exc).__name__}", _PARAM) from None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
