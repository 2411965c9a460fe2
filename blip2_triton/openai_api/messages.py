"""Chat messages -> the one image and the prompt, exactly as the SDK's ``chat`` builds it.

The turns alternate ``user``, ``assistant``, ..., ``user``: each earlier (user, assistant) pair is a
``(question, answer)`` of the SDK's chat history, the last user message is the question, and the
prompt is ``client.prompts.chat_prompt(family, history, question)`` (OPT ``Question: {q} Answer:``,
Flan-T5 ``... Short answer:``). A conversation of one user message holding only the image asks for
a plain caption (no prompt), as ``Blip2Client.caption``. BLIP-2 sees one image: exactly one
``image_url`` part, in a user message. BLIP-2 has no system prompt: a system message is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from blip2_triton.client.prompts import chat_prompt

from .errors import bad_request
from .schemas import Message

_PARAM = "messages"


@dataclass(frozen=True)
class Conversation:
    """What one chat request asks: the image (its URL) and the prompt (None: a plain caption)."""

    image_url: str
    prompt: str | None


def _text_and_images(message: Message, index: int) -> tuple[str, list[str]]:
    content = message.content
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for part in content:
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type == "image_url" and part.image_url is not None:
            images.append(part.image_url.url)
        else:
            raise bad_request(
                f"messages[{index}]: content part of type {part.type!r} is not supported (text, image_url)",
                _PARAM,
            )
    return " ".join(text.strip() for text in texts if text.strip()), images


def conversation(messages: list[Message], family: str) -> Conversation:
    """The image and prompt of ``messages``; a 400 ApiError naming what is wrong."""
    turns: list[str] = []
    images: list[str] = []
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        article = "a" if expected == "user" else "an"
        if message.role in ("system", "developer"):
            raise bad_request(f"messages[{index}]: BLIP-2 takes no {message.role} message", _PARAM)
        if message.role != expected:
            raise bad_request(
                f"messages[{index}]: expected {article} {expected} message (turns alternate user, assistant, "
                f"..., user), got {message.role!r}",
                _PARAM,
            )
        text, found = _text_and_images(message, index)
        if found and message.role != "user":
            raise bad_request(f"messages[{index}]: only user messages may hold an image", _PARAM)
        images.extend(found)
        turns.append(text)
    if len(turns) % 2 == 0:
        raise bad_request("the last message must be the user's", _PARAM)
    if not images:
        raise bad_request("BLIP-2 needs an image: send one image_url part in a user message", _PARAM)
    if len(images) > 1:
        raise bad_request(f"BLIP-2 takes one image per conversation, got {len(images)}", _PARAM)
    history = list(zip(turns[:-1:2], turns[1::2], strict=True))
    question = turns[-1]
    if not question and not history:
        return Conversation(images[0], None)
    if not question:
        raise bad_request("the last user message has no text (a plain caption is a first turn only)", _PARAM)
    for number, (asked, answered) in enumerate(history):
        if not asked or not answered:
            raise bad_request(f"turn {number + 1} needs both a question and an answer", _PARAM)
    return Conversation(images[0], chat_prompt(family, history, question))
