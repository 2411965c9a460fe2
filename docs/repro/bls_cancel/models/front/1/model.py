"""One decoupled Python model, two roles (worker/1/model.py is a link to this file).

Every request is answered from its own background thread (``execute()`` returns at once), which
streams the pieces of a source to the request's response sender, then the FINAL flag:

- ``source=local`` (the worker, or the front with no BLS): ``pieces`` strings ``interval_s`` apart;
- ``source=exec`` / ``async_exec``: the responses of a decoupled BLS call to ``worker``.

A stream is stopped by its client's cancel (``sender.is_cancelled()``) or, for the worker, by a
control request (PROMPT "stop" with the same request id, sent by a front with ``stop_worker``).
Who ends a stopped stream is ``final_from``: the streaming thread itself, before its next piece
("stream"), or the thread that saw the stop at once ("other": a watcher thread polling
``is_cancelled()`` every 10 ms, or the thread running the control request), while the streaming
thread may be in the middle of a send. How it ends is ``after_cancel``; the front's BLS iterator is
then read to its end or dropped (``read_to_end``), and a finished iterator held a while longer
(``keep_iterators_s``). With ``send_lock`` every send of a stream holds the stream's lock and none
follows its end; ``poll_after_end_s`` adds a thread asking ``is_cancelled()`` past the stream's end.
Every loop is bounded in count or time. Each parameter is explained in the config.pbtxt files.
"""

import asyncio
import collections
import json
import threading
import time
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def text_response(text):
    return pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", np.array([text.encode()], dtype=np.object_))])


class Stream:
    """One request being answered."""

    def __init__(self, sender):
        self.sender = sender
        self.stop_requested = False  # a control request asked to stop
        self.ended = False  # the end (or nothing, for after_cancel=nothing) was decided
        self.lock = threading.Lock()  # send_lock=true: held around every send and the end


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.source = params.get("source", "local")
        self.read_to_end = params.get("read_to_end", "false") == "true"
        self.after_cancel = params.get("after_cancel", "final")
        self.final_from = params.get("final_from", "stream")
        self.stop_worker = params.get("stop_worker", "false") == "true"
        self.send_lock = params.get("send_lock", "false") == "true"
        self.keep_iterators_s = float(params.get("keep_iterators_s", "0"))
        self.poll_after_end_s = float(params.get("poll_after_end_s", "0"))
        self.kept = collections.deque()  # (time, finished BLS iterator) held for keep_iterators_s
        self.pieces = int(params.get("pieces", "200"))
        self.interval_s = float(params.get("interval_s", "0.005"))
        self.streams = {}  # request id -> Stream, for control requests
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "cancelled": 0, "stops": 0, "send_errors": 0}
        pb_utils.Logger.log_info(f"{self.name}: {params}")

    def execute(self, requests):
        for request in requests:
            if pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy()[0] == b"stop":
                self.control(request)
                continue
            self.count("requests")
            threading.Thread(target=self.serve, args=(request,), daemon=True).start()
        return None

    def count(self, key):
        with self.lock:
            self.counts[key] += 1
            return self.counts[key]

    def send(self, sender, response=None, flags=0):
        try:
            sender.send(response, flags=flags)
        except Exception as exc:  # a send refused by the server: count it, log the first few
            if self.count("send_errors") <= 5:
                pb_utils.Logger.log_warn(f"{self.name} send: {type(exc).__name__}: {exc}")

    # -- the end of a stream ---------------------------------------------------------------------

    def send_piece(self, stream, text):
        """One piece; with send_lock, never concurrently with another send of the stream nor after its end."""
        if not self.send_lock:
            self.send(stream.sender, text_response(text))
            return
        with stream.lock:
            if not stream.ended:
                self.send(stream.sender, text_response(text))

    def end(self, stream, stopped):
        """Send the end of ``stream`` once (FINAL, or what ``after_cancel`` says for a stopped one)."""
        if self.send_lock:
            with stream.lock:
                self._end(stream, stopped)
        else:
            self._end(stream, stopped)

    def _end(self, stream, stopped):
        with self.lock:
            if stream.ended:
                return
            stream.ended = True
        if not stopped or self.after_cancel in ("final", "send"):
            self.send(stream.sender, flags=FINAL)
        elif self.after_cancel == "error":
            error = pb_utils.TritonError("cancelled", pb_utils.TritonError.CANCELLED)
            self.send(stream.sender, pb_utils.InferenceResponse(error=error), flags=FINAL)
        # after_cancel == "nothing": no FINAL; the sender is dropped with the request.

    def control(self, request):
        """PROMPT "stop": stop the stream with this request id; answer with the FINAL flag."""
        with self.lock:
            stream = self.streams.get(request.request_id())
        if stream is not None:
            self.count("stops")
            stream.stop_requested = True
            if self.final_from == "other":
                self.end(stream, stopped=True)
        request.get_response_sender().send(flags=FINAL)

    def watch(self, stream, seconds):
        """final_from=other: end the stream as soon as its client cancelled (bounded in time)."""
        deadline = time.monotonic() + seconds
        while not stream.ended and time.monotonic() < deadline:
            if self.send_lock:  # no is_cancelled() after the stream's end either
                with stream.lock:
                    cancelled = not stream.ended and stream.sender.is_cancelled()
            else:
                cancelled = stream.sender.is_cancelled()
            if cancelled:
                self.end(stream, stopped=True)
                return
            time.sleep(0.01)

    def poll_after_end(self, stream):
        """poll_after_end_s > 0: ask is_cancelled() every 10 ms, on until that long after the stream's end."""
        ended_at = None
        for _ in range(6000):  # at most 60 s
            if stream.ended and ended_at is None:
                ended_at = time.monotonic()
            if ended_at is not None and time.monotonic() - ended_at > self.poll_after_end_s:
                return
            stream.sender.is_cancelled()
            time.sleep(0.01)

    # -- sources ---------------------------------------------------------------------------------

    def local_pieces(self):
        for i in range(self.pieces):
            time.sleep(self.interval_s)
            yield f"piece {i} "

    def bls(self, prompt, request_id):
        """A decoupled BLS call to the worker: its response iterator."""
        request = pb_utils.InferenceRequest(
            model_name="worker",
            requested_output_names=["TEXT"],
            request_id=request_id,
            inputs=[pb_utils.Tensor("PROMPT", np.array([prompt], dtype=np.object_))],
        )
        if self.source == "async_exec":

            async def call():
                return await request.async_exec(decoupled=True)

            return asyncio.run(call())
        return request.exec(decoupled=True)

    def bls_pieces(self, request_id):
        responses = self.bls(b"hello", request_id)
        for response in responses:  # ends after the worker's FINAL response
            if response.has_error():
                raise RuntimeError(response.error().message())
            tensor = pb_utils.get_output_tensor_by_name(response, "TEXT")
            if tensor is not None:
                yield tensor.as_numpy()[0].decode()
        if self.keep_iterators_s > 0:
            self.keep(responses)

    def keep(self, responses):
        """Hold a finished BLS iterator for keep_iterators_s, then let it go from this (Python) thread.

        Read to its end, an iterator is also erased from the stub's own map by the stub's message
        thread, without the GIL: whoever drops the last reference frees it and every response it
        kept (numpy arrays included). Held here, that last reference is Python's.
        """
        now = time.monotonic()
        with self.lock:
            self.kept.append((now, responses))
            old = []
            while self.kept and now - self.kept[0][0] > self.keep_iterators_s:
                old.append(self.kept.popleft())
        del old  # freed here, with the GIL

    def stopped(self, stream, bls_id):
        """The streaming thread saw the stop: end the stream, then stop the worker if asked to."""
        self.count("cancelled")
        self.end(stream, stopped=True)
        if self.source != "local" and self.stop_worker:
            for _ in self.bls(b"stop", bls_id):  # the control request, read to its end
                pass

    # -- one request -----------------------------------------------------------------------------

    def serve(self, request):
        stream = Stream(request.get_response_sender())
        request_id = request.request_id() or uuid.uuid4().hex
        with self.lock:
            self.streams[request_id] = stream
        bls_id = uuid.uuid4().hex  # the worker's request id, for a control request
        pieces = self.local_pieces() if self.source == "local" else self.bls_pieces(bls_id)
        if self.poll_after_end_s > 0:
            threading.Thread(target=self.poll_after_end, args=(stream,), daemon=True).start()
        if self.final_from == "other" and self.after_cancel != "send":
            watcher = threading.Thread(target=self.watch, args=(stream, 60.0), daemon=True)
            watcher.start()
        stopped = False
        try:
            for text in pieces:
                if not stopped:
                    if stream.ended:  # another thread ended the stream
                        stopped = True
                    elif self.final_from == "stream" and self.after_cancel != "send":
                        stopped = stream.stop_requested or stream.sender.is_cancelled()
                    if stopped:
                        self.stopped(stream, bls_id)
                if stopped:
                    if self.read_to_end:
                        continue  # drain the BLS iterator, forward nothing
                    break  # the generator (and the BLS iterator in it) is dropped here
                self.send_piece(stream, text)
            pieces.close()
            self.end(stream, stopped)
        except Exception as exc:
            pb_utils.Logger.log_warn(f"{self.name} serve: {type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                self.streams.pop(request_id, None)

    def finalize(self):
        pb_utils.Logger.log_info(f"{self.name} counts: {self.counts}")
