"""A request's life in the engine model, without a server: the relayed book, the responder, error codes."""

from __future__ import annotations

import threading

import pytest

from blip2_triton.runtime.contract import RELAY_ID_PREFIX
from blip2_triton.runtime.errors import (
    ClientGoneError,
    EngineOverloadedError,
    RequestValidationError,
    code_of,
    from_tagged,
    one_line,
    tagged,
)
from blip2_triton.runtime.llm.relayed import RelayedRequests
from blip2_triton.runtime.llm.responder import RequestResponder


class Request:
    def __init__(self) -> None:
        self.cancels = 0

    def cancel(self) -> None:
        self.cancels += 1


def test_a_cancel_reaches_the_relayed_request_it_names_once():
    book = RelayedRequests()
    first, second = Request(), Request()
    book.add(RELAY_ID_PREFIX + "a", first)
    book.add(RELAY_ID_PREFIX + "b", second)
    assert book.cancel(RELAY_ID_PREFIX + "a") is True
    assert (first.cancels, second.cancels) == (1, 0)
    book.finished(RELAY_ID_PREFIX + "b")
    assert len(book) == 0


def test_a_cancel_before_its_request_cancels_it_on_arrival():
    book = RelayedRequests()
    assert book.cancel(RELAY_ID_PREFIX + "late") is False
    late = Request()
    book.add(RELAY_ID_PREFIX + "late", late)
    assert late.cancels == 1 and len(book) == 0


def test_early_cancels_are_bounded():
    book = RelayedRequests(early_limit=3)
    for number in range(10):
        book.cancel(f"{RELAY_ID_PREFIX}{number}")
    oldest, newest = Request(), Request()
    book.add(f"{RELAY_ID_PREFIX}0", oldest)
    book.add(f"{RELAY_ID_PREFIX}9", newest)
    assert (oldest.cancels, newest.cancels) == (0, 1)


def test_a_client_request_id_is_never_entered_nor_cancelled():
    book = RelayedRequests()
    mine = Request()
    book.add("1", mine)
    assert book.cancel("1") is False
    assert mine.cancels == 0 and len(book) == 0


def _responder(rows: int, *, stream: bool, sent: list):
    return RequestResponder(
        rows,
        stream=stream,
        send=lambda texts, error, final: sent.append((texts, error, final)),
        client_cancelled=lambda: False,
    )


def test_a_stream_sends_pieces_then_one_final_and_nothing_after():
    sent: list = []
    responder = _responder(1, stream=True, sent=sent)
    responder.text(0, "a ")
    responder.text(0, "")
    responder.text(0, "cat")
    responder.finish(0, "a cat")
    responder.text(0, "late")
    responder.fail(0, ClientGoneError())
    responder.finish(0, "again")
    assert sent == [(["a "], None, False), (["cat"], None, False), (None, None, True)]


def test_a_unary_request_answers_every_row_at_once_or_the_first_error():
    sent: list = []
    responder = _responder(2, stream=False, sent=sent)
    responder.text(0, "ignored")
    responder.finish(1, "two")
    assert sent == []
    responder.finish(0, "one")
    assert sent == [(["one", "two"], None, True)]
    failed: list = []
    responder = _responder(2, stream=False, sent=failed)
    responder.finish(0, "one")
    error = ClientGoneError()
    responder.fail(1, error)
    responder.finish(1, "late")
    assert failed == [(None, error, True)] and responder.cancelled_by_client and responder.cancelled()


def test_pieces_racing_a_cancel_never_follow_the_final_response():
    for _ in range(50):
        sent: list = []
        responder = _responder(1, stream=True, sent=sent)
        start = threading.Barrier(2)

        def pieces(responder: RequestResponder, start: threading.Barrier) -> None:
            start.wait()
            for _ in range(200):
                responder.text(0, "x")

        worker = threading.Thread(target=pieces, args=(responder, start))
        worker.start()
        start.wait()
        responder.fail(0, ClientGoneError())
        worker.join()
        finals = [index for index, (_, _, final) in enumerate(sent) if final]
        assert finals == [len(sent) - 1]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RequestValidationError("bad\nimage"), "INVALID_ARG"),
        (EngineOverloadedError("full"), "UNAVAILABLE"),
        (ClientGoneError(), "CANCELLED"),
        (RuntimeError("boom"), "INTERNAL"),
    ],
)
def test_error_codes_survive_a_relay_as_message_tags(error, code):
    assert code_of(error) == code
    back = from_tagged(tagged(one_line(error), code))
    if code == "INTERNAL":
        assert back is None
    else:
        assert type(back) is type(error) and str(back) == one_line(error)
    assert from_tagged("a message without a tag") is None
