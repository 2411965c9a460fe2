"""SendThread: sends leave the caller at once and run in order on one thread; a failing send
stops nothing; close makes every send queued before it."""

from __future__ import annotations

import threading
import time

from blip2_triton.runtime.llm.send_thread import SendThread


def test_sends_run_in_order_on_one_thread_and_the_caller_does_not_wait():
    sender = SendThread()
    made: list[tuple[int, str]] = []

    def slow_send(index: int) -> None:
        time.sleep(0.01)
        made.append((index, threading.current_thread().name))

    started = time.monotonic()
    send = sender.wrap(slow_send)
    for index in range(20):
        send(index)
    handed_over = time.monotonic() - started
    assert sender.close()
    assert handed_over < 0.1  # 20 sends of 10 ms each: the caller did not wait for them
    assert [index for index, _ in made] == list(range(20))
    assert {name for _, name in made} == {"blip2-responses"}


def test_a_failing_send_does_not_stop_the_ones_after_it(capsys):
    sender = SendThread()
    made: list[int] = []

    def send(index: int) -> None:
        if index == 1:
            raise RuntimeError("the client is gone")
        made.append(index)

    for index in range(4):
        sender.put(send, index)
    assert sender.close()
    assert made == [0, 2, 3]
    assert "the client is gone" in capsys.readouterr().err


def test_close_reports_sends_it_could_not_finish_in_time():
    sender = SendThread()
    release = threading.Event()
    sender.put(release.wait)
    assert not sender.close(timeout_s=0.05)
    release.set()
