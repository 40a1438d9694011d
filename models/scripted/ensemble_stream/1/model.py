"""Scripted stand-in for an LLM behind the TensorRT-LLM ``ensemble`` interface (decoupled).

Same replies as the unary ``ensemble`` model, sent one token per response and then a
flags-only FINAL; with the optional ``stream`` input false, one response with the whole reply.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

# Both models' files are named model.py and the stub imports each as "model", so a sys.path
# import would find this file itself: load the sibling's logic by path under its own name.
_SHARED = Path(__file__).resolve().parents[2] / "ensemble" / "1" / "model.py"
_spec = importlib.util.spec_from_file_location("agentq_scripted_ensemble", _SHARED)
assert _spec is not None and _spec.loader is not None
scripted = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = scripted  # dataclasses resolve their module through sys.modules
_spec.loader.exec_module(scripted)


def _wants_stream(request: Any) -> bool:
    flags = scripted.input_rows(request, "stream")
    # Absent means stream (this model exists to stream); all rows false means one response.
    return flags is None or bool(flags.any())


class _Stream:
    """One request's tokens being sent, one row per decode step; a request its client
    cancelled stops at the next step, its other tokens never made."""

    def __init__(self, request: Any, sender: Any, rows: list[Any], observed: Any) -> None:
        self.request, self.sender, self.rows, self.observed = request, sender, rows, observed
        self.sent = 0
        self.ended = False
        self.next_check = 0.0

    def send(self, i: int) -> None:
        """Send row ``i`` (then the FINAL flag after the last row) unless the stream ended."""
        if self.ended or i >= len(self.rows):
            return
        if self._cancelled():
            self.observed.cancelled()
            self._end()
            return
        self.sender.send(pb_utils.InferenceResponse(output_tensors=[self.rows[i]]))
        self.sent += 1
        if i == len(self.rows) - 1:
            self._end()

    def _cancelled(self) -> bool:
        # Each look is a message to the server: at most one per check interval per stream.
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + scripted.CANCEL_CHECK_S
        return bool(self.request.is_cancelled())

    def _end(self) -> None:
        self.ended = True
        self.observed.tokens(self.sent)  # once per stream: each metric update is a message
        self.sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class TritonPythonModel:
    """Decoupled scripted model: responses go through each request's sender."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.delay_ms = scripted.default_delay(args)
        inflight = scripted.scheduling(args) == scripted.INFLIGHT
        self.timeline = scripted.Timeline() if inflight else None
        self.observed = scripted.Observed(args)

    def finalize(self) -> None:
        if self.timeline is not None:
            self.timeline.close()

    def execute(self, requests: list[Any]) -> None:
        batch = [(r, scripted.replies_for(r, self.delay_ms)) for r in requests]
        if self.timeline is not None:
            # Each call on its own clock: its first token after its delay, then one per pace.
            for request, replies in batch:
                delay_s = scripted.longest_delay_s(replies)
                self.timeline.after(delay_s, lambda q=request, r=replies: self._begin(q, r))
            return None
        # Dynamic batching hands over every request that queued meanwhile; they start together
        # (cancelled ones while they wait are not started).
        delay_s = scripted.longest_delay_s([reply for _, replies in batch for reply in replies])
        cancelled = scripted.wait_unless_cancelled(requests, delay_s)
        streams = []
        for (request, replies), gone in zip(batch, cancelled, strict=True):
            if gone:
                self.observed.cancelled()
                request.get_response_sender().send(
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                )
            elif (started := self._start(request, replies)) is not None:
                streams.append(started)
        # Tokens leave step by step across the batch, as an LLM decodes its batch together;
        # [pace:MS] is the time one such step takes.
        pace_ms = max((pace for _, pace in streams), default=0)
        for i in range(max((len(s.rows) for s, _ in streams), default=0)):
            if all(stream.ended for stream, _ in streams):
                break  # every one cancelled: the instance is free for the next batch
            if i and pace_ms:
                time.sleep(pace_ms / 1000)
            for stream, _ in streams:
                stream.send(i)
        return None

    def _begin(self, request: Any, replies: list[Any]) -> None:
        """In-flight scheduling: start one call's stream, its tokens put on the timeline."""
        started = self._start(request, replies)
        if started is None or self.timeline is None:
            return
        stream, pace_ms = started
        start = time.monotonic()
        for i in range(len(stream.rows)):
            self.timeline.at(start + i * pace_ms / 1000, lambda i=i: stream.send(i))

    def _start(self, request: Any, replies: list[Any]) -> tuple[_Stream, int] | None:
        """Answer at once (an error, or ``stream`` false), or return what to stream."""
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        errors = [r.error for r in replies if r.error is not None]
        if errors:
            error = pb_utils.TritonError(errors[0])
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=final)
            return None
        if not _wants_stream(request):
            tensor = scripted.text_tensor([r.text for r in replies])
            sender.send(pb_utils.InferenceResponse(output_tensors=[tensor]), flags=final)
            return None
        pieces = [r.pieces for r in replies]
        steps = max((len(p) for p in pieces), default=0)
        if steps == 0:
            sender.send(flags=final)
            return None
        # A response carries one row per batch entry: rows whose reply is done send "".
        rows = [
            scripted.text_tensor([p[i] if i < len(p) else "" for p in pieces]) for i in range(steps)
        ]
        return _Stream(request, sender, rows, self.observed), max(r.pace_ms for r in replies)
