"""The vision gate's batching rules (plain asyncio; the served path is covered by the in-flight tests)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from blip2_triton.runtime.llm.vision_gate import VisionGate


class Engine:
    """An engine's gate hooks, recording what the gate asked. ``step_s``: a step is under way
    when ``hold`` comes, and ends that long after."""

    def __init__(self, free: int, step_s: float = 0.0) -> None:
        self.free = free
        self.is_idle = True
        self.held = False
        self.step_ends = 0.0
        self.step_s = step_s
        self.events: list[str] = []

    def free_slots(self) -> int:
        return self.free

    def idle(self) -> bool:
        return self.is_idle

    def hold(self, max_s: float) -> None:
        self.held = True
        self.step_ends = time.monotonic() + self.step_s
        self.events.append("hold")

    def paused(self) -> bool:
        return time.monotonic() >= self.step_ends

    def release(self) -> None:
        self.held = False
        self.events.append("release")


class Vision:
    """A vision call that records each image it saw, whether the engine was held and paused then,
    and the size of each request."""

    def __init__(self, engine: Engine, fail_on: float | None = None, delay_s: float = 0.01) -> None:
        self.engine = engine
        self.delay_s = delay_s
        self.calls: list[float] = []
        self.held_during: list[bool] = []
        self.paused_during: list[bool] = []
        self.requests: list[int] = []
        self.fail_on = fail_on

    async def __call__(self, pixels: np.ndarray) -> np.ndarray:
        assert pixels.shape[1:] == (3, 2, 2)
        values = [float(v) for v in pixels[:, 0, 0, 0]]
        self.calls += values
        self.requests.append(len(values))
        self.held_during.append(self.engine.held)
        self.paused_during.append(self.engine.paused())
        await asyncio.sleep(self.delay_s)
        if self.fail_on in values:
            raise RuntimeError(f"vision failed on {self.fail_on}")
        return np.stack([np.full((4, 8), v, dtype=np.float32) for v in values])


def _image(value: float) -> np.ndarray:
    return np.full((3, 2, 2), value, dtype=np.float32)


async def _request(gate: VisionGate, value: float, prepare_s: float) -> np.ndarray:
    gate.expect()  # accepted: preprocessing takes ``prepare_s``
    try:
        await asyncio.sleep(prepare_s)
    finally:
        gate.prepared()
    return await gate.encode(_image(value))


def test_a_lone_image_goes_at_once_and_holds_the_engine_meanwhile():
    async def main():
        engine = Engine(free=4)
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5)
        result = await gate.encode(_image(1.0))
        await asyncio.sleep(0)
        return engine, vision, gate, result

    engine, vision, gate, result = asyncio.run(main())
    assert result.shape == (4, 8) and float(result[0, 0]) == 1.0
    assert (gate.batches, gate.images) == (1, 1)
    assert vision.held_during == [True] and engine.events == ["hold", "release"]


def test_images_prepared_together_go_in_one_batch_each_with_its_own_answer():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5)
        results = await asyncio.gather(*(_request(gate, float(v), 0.01 * v) for v in range(1, 6)))
        return gate, results

    gate, results = asyncio.run(main())
    assert [float(r[0, 0]) for r in results] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert (gate.batches, gate.images) == (1, 5)


def test_a_batch_is_no_larger_than_the_free_slots():
    async def main():
        engine = Engine(free=2)
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5)
        await asyncio.gather(*(_request(gate, float(v), 0) for v in range(1, 6)))
        return gate

    gate = asyncio.run(main())
    assert (gate.batches, gate.images) == (3, 5)


def test_per_image_a_failed_image_fails_only_its_own_caller():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine, fail_on=2.0)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5, per_image=True)
        return await asyncio.gather(*(_request(gate, float(v), 0) for v in (1, 2, 3)), return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert float(first[0, 0]) == 1.0 and float(third[0, 0]) == 3.0
    assert isinstance(second, RuntimeError) and "2.0" in str(second)


def test_no_batch_waits_longer_than_max_prepare_wait_for_slow_preparation():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine)
        gate = VisionGate(
            vision, engine, max_batch=8, max_wait_s=0.02, max_prepare_wait_s=0.02, busy_prepare_wait_s=0.02
        )
        slow = asyncio.ensure_future(_request(gate, 2.0, 0.5))  # still preparing meanwhile
        await asyncio.sleep(0.01)
        first = await gate.encode(_image(1.0))
        assert not slow.done()
        await slow
        return gate, first

    gate, first = asyncio.run(main())
    assert float(first[0, 0]) == 1.0 and (gate.batches, gate.images) == (2, 2)


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        VisionGate(Vision(Engine(1)), Engine(1), max_batch=0)


def test_images_arriving_within_the_linger_go_together_and_expected_ones_are_waited_for():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5, linger_s=0.03)
        first = asyncio.ensure_future(gate.encode(_image(1.0)))
        await asyncio.sleep(0.01)
        gate.expect()  # accepted elsewhere (another thread in the server), not preprocessed yet
        second = asyncio.ensure_future(gate.encode(_image(2.0)))
        await asyncio.sleep(0.1)
        assert not first.done()  # the expected image holds the batch
        gate.prepared()
        return gate, await first, await second

    gate, first, second = asyncio.run(main())
    assert (float(first[0, 0]), float(second[0, 0])) == (1.0, 2.0)
    assert (gate.batches, gate.images) == (1, 2)


def test_a_busy_engine_lets_images_gather_for_max_wait():
    async def main():
        engine = Engine(free=8)
        engine.is_idle = False  # sequences are decoding: waiting costs the engine nothing
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=0.15, linger_s=0.001)
        first = asyncio.ensure_future(gate.encode(_image(1.0)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(gate.encode(_image(2.0)))
        await asyncio.gather(first, second)
        return gate

    gate = asyncio.run(main())
    assert (gate.batches, gate.images) == (1, 2)


def test_a_caller_whose_client_left_gives_its_place_up_while_it_waits_for_a_slot():
    from blip2_triton.runtime.errors import ClientGoneError

    async def main():
        engine = Engine(free=0)  # every slot busy
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5)
        left = {"value": False}
        waiting = asyncio.ensure_future(gate.encode(_image(1.0), lambda: left["value"]))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        left["value"] = True
        with pytest.raises(ClientGoneError):
            await asyncio.wait_for(waiting, 1.0)
        return gate, vision

    gate, vision = asyncio.run(main())
    assert vision.calls == [] and gate.batches == 0


def test_a_batch_goes_as_one_request_and_a_failure_fails_all_of_it():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5)
        results = await asyncio.gather(*(_request(gate, float(v), 0.001 * v) for v in range(1, 5)))
        failing = Vision(engine, fail_on=2.0)
        gate2 = VisionGate(failing, engine, max_batch=8, max_wait_s=5)
        errors = await asyncio.gather(*(_request(gate2, float(v), 0) for v in (1, 2)), return_exceptions=True)
        return vision, results, errors

    vision, results, errors = asyncio.run(main())
    assert vision.requests == [4] and [float(r[0, 0]) for r in results] == [1.0, 2.0, 3.0, 4.0]
    assert all(isinstance(e, RuntimeError) for e in errors)


def test_per_image_sends_one_request_per_image():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5, per_image=True)
        results = await asyncio.gather(*(_request(gate, float(v), 0.001 * v) for v in range(1, 4)))
        return gate, vision, results

    gate, vision, results = asyncio.run(main())
    assert vision.requests == [1, 1, 1] and (gate.batches, gate.images) == (1, 3)
    assert [float(r[0, 0]) for r in results] == [1.0, 2.0, 3.0]


def test_an_idle_engine_waits_past_max_wait_for_images_being_preprocessed():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=0.01, max_prepare_wait_s=2.0)
        first = asyncio.ensure_future(_request(gate, 1.0, 0))
        slow = asyncio.ensure_future(_request(gate, 2.0, 0.2))  # preprocessed 20 max_waits later
        await asyncio.gather(first, slow)
        return gate

    gate = asyncio.run(main())
    assert (gate.batches, gate.images) == (1, 2)


def test_vision_runs_only_once_the_step_under_way_has_ended():
    async def main():
        engine = Engine(free=8, step_s=0.1)
        vision = Vision(engine)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5)
        started = time.monotonic()
        await gate.encode(_image(1.0))
        return vision, time.monotonic() - started

    vision, took = asyncio.run(main())
    assert vision.paused_during == [True] and vision.held_during == [True]
    assert took >= 0.1


def test_a_busy_engine_waits_for_images_being_preprocessed_only_up_to_busy_prepare_wait():
    async def main():
        engine = Engine(free=8)
        engine.is_idle = False
        vision = Vision(engine)
        gate = VisionGate(
            vision, engine, max_batch=8, max_wait_s=0.01, max_prepare_wait_s=5, busy_prepare_wait_s=0.1
        )
        first = asyncio.ensure_future(_request(gate, 1.0, 0))
        soon = asyncio.ensure_future(_request(gate, 2.0, 0.05))  # within busy_prepare_wait: joins
        late = asyncio.ensure_future(_request(gate, 3.0, 0.4))  # past it: the next batch
        await asyncio.gather(first, soon, late)
        return vision

    vision = asyncio.run(main())
    assert vision.requests == [2, 1] and vision.calls == [1.0, 2.0, 3.0]


async def _arriving(gate: VisionGate, value: float, after_s: float) -> np.ndarray:
    """A request the gate does not know of until it arrives, ``after_s`` from now."""
    await asyncio.sleep(after_s)
    return await gate.encode(_image(value))


def test_with_chunk_rows_images_arriving_while_the_batch_is_encoded_join_it():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine, delay_s=0.1)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5, chunk_rows=2)
        results = await asyncio.gather(
            _arriving(gate, 1.0, 0),
            _arriving(gate, 2.0, 0),
            _arriving(gate, 3.0, 0.05),
            _arriving(gate, 4.0, 0.12),
        )
        return engine, vision, gate, results

    engine, vision, gate, results = asyncio.run(main())
    assert [float(r[0, 0]) for r in results] == [1.0, 2.0, 3.0, 4.0]
    assert vision.requests == [2, 1, 1] and vision.held_during == [True, True, True]
    assert engine.events == ["hold", "release"]  # one batch: the engine admits all four together
    assert (gate.batches, gate.images, gate.late_joiners) == (1, 4, 2)


def test_late_joiners_fill_only_the_room_the_batch_was_sent_with():
    async def main():
        engine = Engine(free=3)
        vision = Vision(engine, delay_s=0.1)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5, chunk_rows=2)
        late = [_arriving(gate, float(v), 0.05) for v in (3, 4, 5)]
        await asyncio.gather(_arriving(gate, 1.0, 0), _arriving(gate, 2.0, 0), *late)
        return engine, vision, gate

    engine, vision, gate = asyncio.run(main())
    assert vision.requests[:2] == [2, 1] and sorted(vision.calls) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert engine.events == ["hold", "release", "hold", "release"] and gate.late_joiners == 1


def test_without_chunk_rows_an_image_arriving_during_the_batch_waits_for_the_next():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine, delay_s=0.1)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5)
        await asyncio.gather(_arriving(gate, 1.0, 0), _arriving(gate, 2.0, 0), _arriving(gate, 3.0, 0.05))
        return engine, vision

    engine, vision = asyncio.run(main())
    assert vision.requests == [2, 1] and engine.events == ["hold", "release", "hold", "release"]


def test_a_batch_sent_while_the_engine_decodes_takes_no_late_joiners():
    async def main():
        engine = Engine(free=8)
        engine.is_idle = False
        vision = Vision(engine, delay_s=0.1)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=0.01, busy_prepare_wait_s=0, chunk_rows=2)
        await asyncio.gather(_arriving(gate, 1.0, 0), _arriving(gate, 2.0, 0), _arriving(gate, 3.0, 0.05))
        return engine, vision, gate

    engine, vision, gate = asyncio.run(main())
    assert vision.requests == [2, 1] and engine.events == ["hold", "release", "hold", "release"]
    assert gate.late_joiners == 0


def test_an_idle_engine_starts_a_full_chunk_at_once_and_the_rest_of_the_burst_joins():
    async def main():
        engine = Engine(free=8)
        vision = Vision(engine, delay_s=0.1)
        gate = VisionGate(vision, engine, max_batch=8, max_wait_s=5, max_prepare_wait_s=5, chunk_rows=2)
        # two images ready at once, a third still being preprocessed for 0.05 s: without chunks the
        # gate would wait for it; here the chunk of two goes at once and the third joins the batch
        await asyncio.gather(_request(gate, 1.0, 0), _request(gate, 2.0, 0), _request(gate, 3.0, 0.05))
        return engine, vision, gate

    engine, vision, gate = asyncio.run(main())
    assert vision.requests == [2, 1] and engine.events == ["hold", "release"]
    assert gate.late_joiners == 1  # it was not waited for: it joined the batch under way
