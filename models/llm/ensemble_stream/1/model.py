"""A real LLM behind the TensorRT-LLM ``ensemble`` interface (decoupled): the unary model's
generation (models/llm/ensemble), sent one response per decoded piece, then a flags-only
FINAL; with the optional ``stream`` input false, one response with the whole reply.

Rows of a request are streamed one after another; with several rows each response carries
``batch_index``. A request the client cancelled stops at its next piece.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# Both models' files are named model.py and the stub imports each as "model", so a sys.path
# import would find this file itself: load the sibling's logic by path under its own name.
_SHARED = Path(__file__).resolve().parents[2] / "ensemble" / "1" / "model.py"
_spec = importlib.util.spec_from_file_location("agentq_llm_ensemble", _SHARED)
assert _spec is not None and _spec.loader is not None
llm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = llm  # dataclasses resolve their module through sys.modules
_spec.loader.exec_module(llm)


def _outputs(text: str, row: int, rows: int) -> list[Any]:
    tensors = [llm.text_tensor([text])]
    if rows > 1:
        tensors.append(pb_utils.Tensor("batch_index", np.array([[row]], dtype=np.int32)))
    return tensors


class TritonPythonModel:
    """Decoupled: responses go through each request's sender."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.engine = llm.load_engine(args)

    def execute(self, requests: list[Any]) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._stream(request, sender)
            except Exception as exc:  # the stub must answer every request and stay up
                sender.send(llm.error_response(exc), flags=final)
            else:
                sender.send(flags=final)

    def _stream(self, request: Any, sender: Any) -> None:
        rows = llm.request_rows(request)
        flags = rows["stream"]
        # Absent means stream (this model exists to stream); all rows false means one response.
        streaming = flags is None or bool(flags.any())
        generations = llm.generations(rows)  # every row checked before the first response
        for row, generation in enumerate(generations):
            pieces = self.engine.pieces(generation)
            if not streaming:
                text = "".join(pieces)
                sender.send(pb_utils.InferenceResponse(_outputs(text, row, len(generations))))
                continue
            for piece in pieces:
                if request.is_cancelled():
                    pieces.close()
                    return
                sender.send(pb_utils.InferenceResponse(_outputs(piece, row, len(generations))))
