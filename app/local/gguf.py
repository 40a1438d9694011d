"""The metadata of a GGUF model file (llama.cpp's format), read without llama.cpp.

llama-cpp-python exposes a model's scalar metadata only; a tokenizer needs the arrays too
(``tokenizer.ggml.tokens``, ``.merges``, ``.token_type``). The format (GGUF v2/v3, little
endian): magic ``GGUF``, version, tensor count, key-value count, then each key-value pair;
the tensors that follow are not read.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from app.errors import ConfigurationError

_MAGIC = b"GGUF"
# Value type -> struct format of a scalar (8: string, 9: array are read apart).
_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.scalar("<Q")
        raw = self.data[self.pos : self.pos + size]
        self.pos += size
        return raw.decode("utf-8", "replace")

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item in _SCALARS:  # one unpack for the whole array
                fmt = "<" + str(count) + _SCALARS[item][1]
                values = list(struct.unpack_from(fmt, self.data, self.pos))
                self.pos += struct.calcsize(fmt)
                return values
            return [self.value(item) for _ in range(count)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown value type {kind}")
        return self.scalar(_SCALARS[kind])


def read_metadata(path: Path) -> dict[str, Any]:
    """Every key-value pair of the GGUF file at ``path`` (arrays as lists).

    Raises ConfigurationError when the file is missing or not GGUF.
    """
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != _MAGIC:
                raise ConfigurationError(f"{path} is not a GGUF file")
            reader = _Reader(data)
            reader.pos = 4
            version = reader.scalar("<I")
            if version < 2:
                raise ConfigurationError(f"{path} is GGUF version {version}; 2 or later is read")
            reader.scalar("<Q")  # tensor count
            count = reader.scalar("<Q")
            metadata: dict[str, Any] = {}
            for _ in range(count):
                key = reader.string()
                metadata[key] = reader.value(reader.scalar("<I"))
            return metadata
    except (OSError, ValueError, struct.error) as exc:
        raise ConfigurationError(f"cannot read the GGUF metadata of {path}: {exc}") from exc
