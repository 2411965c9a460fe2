"""The SDK's retries: UNAVAILABLE (and a model being unloaded) retried with jittered backoff, the rest not."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from blip2_triton.client.errors import InvalidRequestError, ServerError, ServerUnavailableError
from blip2_triton.client.options import ClientOptions
from blip2_triton.client.retry import RetryPolicy, is_retryable
from blip2_triton.client.transport import AsyncTransport, Call, Transport

UNLOADING = ServerError("Request for unknown model: 'blip2' has no available versions", "NOT_FOUND")


def test_what_is_retried() -> None:
    assert is_retryable(ServerUnavailableError("Exceeds maximum queue size", "UNAVAILABLE"))
    assert is_retryable(UNLOADING)
    assert not is_retryable(InvalidRequestError("image is empty (0 bytes)", "INVALID_ARG"))
    assert not is_retryable(ServerError("boom", "INTERNAL"))
    assert not is_retryable(ValueError("not ours"))


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5)
    rng = random.Random(0)
    for retry in range(8):
        waits = [policy.backoff_s(retry, rng) for _ in range(200)]
        ceiling = min(0.5, 0.1 * 2**retry)
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > 0.8 * ceiling and min(waits) < 0.2 * ceiling  # spread over the range


def test_attempts_and_deadline_end_retries() -> None:
    refused = ServerUnavailableError("refused", "UNAVAILABLE")
    policy = RetryPolicy(attempts=3, deadline_s=10.0)
    now = time.monotonic()
    assert policy.next_wait(refused, 1, now) is not None
    assert policy.next_wait(refused, 3, now) is None
    assert (
        RetryPolicy(attempts=3, deadline_s=0.0, initial_backoff_s=0.0).next_wait(refused, 1, now - 1) is None
    )
    assert RetryPolicy.off().next_wait(refused, 1, now) is None
    assert policy.next_wait(InvalidRequestError("bad", "INVALID_ARG"), 1, now) is None


@pytest.mark.parametrize(
    "bad", [{"attempts": 0}, {"attempts": True}, {"deadline_s": -1.0}, {"max_backoff_s": float("inf")}]
)
def test_policy_is_checked(bad: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)


def _options(policy: RetryPolicy) -> ClientOptions:
    return ClientOptions.create("127.0.0.1:1", "grpc", "blip2", 5.0, 5.0, 4, policy)


def _flaky(failures: list[Exception]):
    calls = []

    def send(*args):
        calls.append(time.monotonic())
        if failures:
            raise failures.pop(0)
        return "answer"

    return send, calls


CALL = Call("blip2", [], [], read=lambda result: result)


def test_transport_retries_refusals_then_answers() -> None:
    transport = Transport(_options(RetryPolicy(attempts=4, initial_backoff_s=0.01, max_backoff_s=0.02)))
    try:
        transport._send, calls = _flaky([ServerUnavailableError("full", "UNAVAILABLE"), UNLOADING])
        assert transport.infer(CALL) == "answer"
        assert len(calls) == 3
        transport._send, calls = _flaky([InvalidRequestError("bad", "INVALID_ARG")])
        with pytest.raises(InvalidRequestError):
            transport.infer(CALL)
        assert len(calls) == 1
        refusals = [ServerUnavailableError("full", "UNAVAILABLE") for _ in range(9)]
        transport._send, calls = _flaky(refusals)
        with pytest.raises(ServerUnavailableError):
            transport.infer(CALL)
        assert len(calls) == 4
    finally:
        transport.close()


def test_retries_off() -> None:
    transport = Transport(_options(RetryPolicy.off()))
    try:
        transport._send, calls = _flaky([ServerUnavailableError("full", "UNAVAILABLE")])
        with pytest.raises(ServerUnavailableError):
            transport.infer(CALL)
        assert len(calls) == 1
    finally:
        transport.close()


def test_async_transport_retries() -> None:
    transport = AsyncTransport(_options(RetryPolicy(attempts=3, initial_backoff_s=0.01)))
    failures = [ServerUnavailableError("full", "UNAVAILABLE")]
    calls = []

    async def send(connection, call):
        calls.append(call)
        if failures:
            raise failures.pop(0)
        return "answer"

    async def run() -> str:
        transport._connected = lambda: object()
        transport._send = send
        try:
            return await transport.infer(CALL)
        finally:
            await transport.close()

    assert asyncio.run(run()) == "answer"
    assert len(calls) == 2
