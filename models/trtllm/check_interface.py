#!/usr/bin/env python3
"""Check a filled TensorRT-LLM model repository before Triton loads it.

1. Every ``${placeholder}`` left by fill_template.py must sit in a ``string_value`` (the backend
   reads those as unset); one left in a ``data_type``, ``max_batch_size`` or ``count`` makes the
   model fail to load with a protobuf parse error.
2. Each ensemble (``ensemble``, ``ensemble_stream``) must have exactly the inputs and outputs of
   the reference, the interface agentq's client speaks (models/scripted/ensemble/config.pbtxt):
   same names, data types, dims and optional flags.

Standard library only: it runs in the Triton image (python 3.12) and in agentq's tests.
    check_interface.py REFERENCE_CONFIG REPOSITORY_DIR
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ENSEMBLES = ("ensemble", "ensemble_stream")

_COMMENT = re.compile(r"#[^\n]*")
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
_FIELD = re.compile(r"\b(name|data_type|optional)\s*:\s*(\"[^\"]*\"|\w+)")
_DIMS = re.compile(r"\bdims\s*:\s*\[([^\]]*)\]")

Tensor = tuple[str, tuple[int, ...], bool]  # data type, dims, optional


def _strip_comments(text: str) -> str:
    # Tensor and parameter names hold no '#', so a '#' always starts a comment.
    return _COMMENT.sub("", text)


def _block(text: str, key: str) -> str:
    """The bracketed list after a top-level ``key [`` (empty when the config has none)."""
    match = re.search(rf"(?m)^\s*{key}\s*\[", text)
    if match is None:
        return ""
    depth, start = 0, match.end() - 1
    for i in range(start, len(text)):
        depth += {"[": 1, "]": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i]
    raise ValueError(f"unbalanced brackets in the {key} list")


def _entries(block: str) -> list[str]:
    """The ``{ ... }`` entries of a tensor list, nested braces (reshape) included."""
    entries, depth, start = [], 0, 0
    for i, char in enumerate(block):
        if char == "{":
            depth += 1
            if depth == 1:
                start = i + 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                entries.append(block[start:i])
    return entries


def tensors(config_text: str, key: str) -> dict[str, Tensor]:
    """Tensor name -> (data type, dims, optional) of the ``input`` or ``output`` list."""
    found: dict[str, Tensor] = {}
    for entry in _entries(_block(_strip_comments(config_text), key)):
        entry = re.sub(r"\breshape\s*:\s*\{[^}]*\}", "", entry)  # its shape is not the dims
        fields = {k: v.strip('"') for k, v in _FIELD.findall(entry)}
        dims_match = _DIMS.search(entry)
        dims = (
            tuple(int(d) for d in dims_match.group(1).split(",") if d.strip()) if dims_match else ()
        )
        spec = (fields.get("data_type", ""), dims, fields.get("optional") == "true")
        name = fields["name"]
        if name in found and found[name] != spec:
            raise ValueError(f"{key} {name!r} is declared twice, differently")
        found[name] = spec
    return found


def interface_differences(reference: str, candidate: str) -> list[str]:
    """How ``candidate``'s inputs and outputs differ from ``reference``'s (empty: identical)."""
    problems = []
    for key in ("input", "output"):
        want, have = tensors(reference, key), tensors(candidate, key)
        for name in sorted(want.keys() - have.keys()):
            problems.append(f"{key} {name!r} is missing")
        for name in sorted(have.keys() - want.keys()):
            problems.append(f"{key} {name!r} is not in the client's interface")
        for name in sorted(want.keys() & have.keys()):
            if want[name] != have[name]:
                problems.append(f"{key} {name!r} is {have[name]}, the client expects {want[name]}")
    return problems


def misplaced_placeholders(config_text: str) -> list[str]:
    """Placeholders outside ``string_value`` fields (each one breaks the model's loading)."""
    problems = []
    for number, line in enumerate(_strip_comments(config_text).splitlines(), start=1):
        if "string_value" in line:
            continue
        problems += [
            f"line {number}: ${{{name}}} is not filled" for name in _PLACEHOLDER.findall(line)
        ]
    return problems


def check_repository(reference: Path, repository: Path) -> list[str]:
    """Every problem of a filled repository, as ``model: problem`` lines."""
    problems = []
    configs = sorted(repository.glob("*/config.pbtxt"))
    if not configs:
        return [f"{repository}: no model configs"]
    for config in configs:
        model, text = config.parent.name, config.read_text()
        problems += [f"{model}: {p}" for p in misplaced_placeholders(text)]
        if model in ENSEMBLES:
            problems += [
                f"{model}: {p}" for p in interface_differences(reference.read_text(), text)
            ]
    if not any((repository / name).is_dir() for name in ENSEMBLES):
        problems.append(f"{repository}: neither {' nor '.join(ENSEMBLES)} is there")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    problems = check_repository(Path(argv[0]), Path(argv[1]))
    for problem in problems:
        print(f"check_interface: {problem}", file=sys.stderr)
    if problems:
        print(
            "check_interface: the model repository does not serve agentq's interface; pin a "
            "Triton release whose tensorrtllm_backend matches models/scripted, or update both",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
