"""Token counts with a model's own tokenizer, and the estimate where a model has none.

Where a server reports its counts (OpenAI ``usage``), those stand; otherwise a backend
counts the exact text sent and received with the model's ``tokenizer.json``
(``tokenizers.Tokenizer``), named per backend kind in settings (``triton.tokenizers``,
``openai.tokenizers``). A model without one is counted by an estimate, whitespace-separated
words, labelled ``estimate`` in the metrics and traces and logged once per backend and model.

Counts are made without the tokenizer's special tokens added (no BOS/EOS): the text sent is
already the whole prompt, chat template markup included, and its special tokens written in
the text are counted as the tokens they are.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from app.config.paths import shipped_path
from app.errors import ConfigurationError
from app.inference.chat import ChatRequest, Counted, count_tokens

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from app.config import Settings

__all__ = ["TokenCounter", "counters", "load_tokenizer", "tokenizer_file"]

log = logging.getLogger(__name__)

_loaded: dict[Path, Tokenizer] = {}
_load_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()
_warn_lock = threading.Lock()


def tokenizer_file(path: Path | str) -> Path:
    """The ``tokenizer.json`` that ``path`` names: the file itself, or the one in a folder."""
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


def load_tokenizer(path: Path | str) -> Tokenizer:
    """The tokenizer at ``path`` (a ``tokenizer.json`` or its folder), loaded once per process.

    Raises ConfigurationError when the file is missing or not a tokenizer.
    """
    file = tokenizer_file(path).resolve()
    tokenizer = _loaded.get(file)
    if tokenizer is not None:
        return tokenizer
    with _load_lock:
        tokenizer = _loaded.get(file)
        if tokenizer is None:
            from tokenizers import Tokenizer  # only workers whose models name a tokenizer

            try:
                tokenizer = Tokenizer.from_file(str(file))
            except Exception as exc:  # tokenizers raises its own Exception for a bad file
                raise ConfigurationError(
                    f"cannot load the tokenizer {file}: {exc}; point the model's entry of "
                    "triton.tokenizers / openai.tokenizers at a folder holding tokenizer.json"
                ) from exc
            _loaded[file] = tokenizer
    return tokenizer


def _warn_estimate(kind: str, model: str, why: str) -> None:
    key = (kind, model)
    if key in _warned:
        return
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "token counts of model %r on backend %s are estimates (whitespace-separated words): %s",
        model,
        kind,
        why,
    )


class TokenCounter:
    """Counts tokens of one backend kind's models: with the model's tokenizer when
    ``tokenizers`` names one (model -> ``tokenizer.json`` or its folder), else an estimate.

    Tokenizers load on first use and are shared by every counter of the process; counting is
    safe from many threads.
    """

    def __init__(
        self, kind: str, tokenizers: Mapping[str, Path | str], default_model: str | None = None
    ) -> None:
        self.kind = kind
        self.default_model = default_model
        self._paths = {model: shipped_path(path) for model, path in tokenizers.items()}
        # Found once per model: the path lookup stats the file system.
        self._tokenizers: dict[str, Tokenizer] = {}
        self._broken: set[str] = set()

    def model_of(self, request: ChatRequest) -> str:
        """The model serving ``request``: its own, else the backend's default."""
        return request.model or self.default_model or ""

    def tokenizer(self, model: str) -> Tokenizer | None:
        """``model``'s tokenizer, or None when none is set for it or it does not load (then
        its counts are estimates, and the log says why once)."""
        tokenizer = self._tokenizers.get(model)
        if tokenizer is not None:
            return tokenizer
        path = self._paths.get(model)
        if path is None or model in self._broken:
            return None
        try:
            tokenizer = self._tokenizers[model] = load_tokenizer(path)
        except ConfigurationError as exc:
            self._broken.add(model)  # tried once per counter, not on every call
            _warn_estimate(self.kind, model, str(exc))
            return None
        return tokenizer

    def count(self, model: str, *texts: str) -> tuple[int, Counted]:
        """The tokens of ``texts`` together and how they were counted (``tokenizer`` or
        ``estimate``, the latter logged once per backend and model)."""
        tokenizer = self.tokenizer(model)
        if tokenizer is None:
            self._estimated(model)
            return sum(count_tokens(text) for text in texts), "estimate"
        total = 0
        for text in texts:
            if text:
                total += len(tokenizer.encode(text, add_special_tokens=False).ids)
        return total, "tokenizer"

    def _estimated(self, model: str) -> None:
        """Say (once per backend and model) that ``model``'s counts are estimates."""
        _warn_estimate(
            self.kind,
            model,
            f"the server reports none and {self.kind}.tokenizers names no tokenizer for it",
        )

    def request_tokens(self, request: ChatRequest) -> tuple[int, Counted]:
        """The conversation's tokens before the call (the budget's check): each turn's text and
        tool calls counted with the model's tokenizer, without the template's markup."""
        model = self.model_of(request)
        if self.tokenizer(model) is None:  # said once the call's own counts are estimates
            return request.estimated_tokens(), "estimate"
        texts = []
        for message in request.messages:
            texts.append(message.content)
            texts += [f"{call.name} {json.dumps(call.args)}" for call in message.tool_calls]
        return self.count(model, *texts)


def counters(settings: Settings) -> dict[str, TokenCounter]:
    """A counter per backend kind, from the settings' tokenizers (echo: estimates, silent)."""
    return {
        "triton": TokenCounter("triton", settings.triton.tokenizers, settings.triton.model),
        "openai": TokenCounter("openai", settings.openai.tokenizers, settings.openai.model),
    }
