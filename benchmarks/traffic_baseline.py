"""System S, the server a user writes first: transformers in one process, a queue, batched ``generate``.

A feeder thread puts each request on a queue at its scheduled time (open loop, as the served
system's sender). The worker takes the first waiting request, gathers more for at most
``GATHER_S`` after it (up to ``MAX_BATCH``; a backlog fills the batch at once), and runs one
``Blip2Processor`` + ``Blip2ForConditionalGeneration.generate`` over the batch with
``min_new_tokens`` = ``max_new_tokens`` = the batch's longest request. Each request's answer is
then cut to its own length, and it is done when the batch's ``generate`` returns: what a first-cut
server does. Its time to first token is when the batch's first new token comes (a streamer).
Latencies count from the scheduled arrival.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from pathlib import Path

from bench_inprocess import FirstTokenClock
from traffic_plan import Arrival, encoded_image
from traffic_stats import Outcome, RateRun

MAX_BATCH = 16
GATHER_S = 0.050


class FirstCutServer:
    """S: the checkpoint loaded with transformers, serving a queue in batches."""

    name = "S"

    def __init__(self, checkpoint: Path, max_batch: int = MAX_BATCH, gather_s: float = GATHER_S) -> None:
        import torch
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        self._torch = torch
        self.processor = Blip2Processor.from_pretrained(checkpoint)
        self.model = Blip2ForConditionalGeneration.from_pretrained(checkpoint).eval()
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.batch_sizes: list[int] = []

    def _generate(self, images: list[bytes], tokens: list[int]) -> tuple[list[str], float]:
        """Texts cut to each request's length, and when the batch's first new token came."""
        from PIL import Image

        pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
        inputs = self.processor(images=pictures, return_tensors="pt")
        longest = max(tokens)
        clock = FirstTokenClock()
        with self._torch.inference_mode():
            sequences = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                min_new_tokens=longest,
                max_new_tokens=longest,
                streamer=clock,
            )
        done = time.perf_counter()
        new = sequences[:, sequences.shape[1] - longest :]
        texts = [
            self.processor.tokenizer.decode(row[:n], skip_special_tokens=True)
            for row, n in zip(new, tokens, strict=True)
        ]
        return texts, clock.first_token_at or done

    def _serve(self, batch: list[tuple[Arrival, bytes, float]]) -> list[Outcome]:
        self.batch_sizes.append(len(batch))
        _, first_token = self._generate([b[1] for b in batch], [b[0].tokens for b in batch])
        done = time.perf_counter()
        return [
            Outcome(arrival, done - scheduled, first_token - scheduled) for arrival, _, scheduled in batch
        ]

    def one_at_a_time(self, schedule: list[Arrival]) -> list[Outcome]:
        """Each request alone, in a batch of one (the unloaded latencies; warm-up)."""
        outcomes = []
        for arrival in schedule:
            image = encoded_image(arrival.image_seed)
            outcomes += self._serve([(arrival, image, time.perf_counter())])
        return outcomes

    def open_loop(self, rate: float, schedule: list[Arrival]) -> RateRun:
        """The schedule fed by a thread at its times; batches served until every request is done."""
        images = [encoded_image(a.image_seed) for a in schedule]
        waiting: queue.Queue[tuple[Arrival, bytes, float]] = queue.Queue()
        start = time.perf_counter() + 0.2

        def feed() -> None:
            for arrival, image in zip(schedule, images, strict=True):
                scheduled = start + arrival.at_s
                time.sleep(max(0.0, scheduled - time.perf_counter()))
                waiting.put((arrival, image, scheduled))

        feeder = threading.Thread(target=feed, name="traffic-feeder", daemon=True)
        feeder.start()
        self.batch_sizes = []
        outcomes: list[Outcome] = []
        while len(outcomes) < len(schedule):
            batch = [waiting.get()]
            deadline = time.perf_counter() + self.gather_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(waiting.get(timeout=max(0.0, deadline - time.perf_counter())))
                except queue.Empty:
                    break
            outcomes += self._serve(batch)
        feeder.join()
        span = time.perf_counter() - start
        mean = sum(self.batch_sizes) / len(self.batch_sizes)
        run = RateRun(self.name, rate, sorted(outcomes, key=lambda o: o.arrival.at_s), span)
        run.notes.append(f"{len(self.batch_sizes)} batches, {mean:.1f} requests on average")
        return run

    def close(self) -> None:
        del self.model
