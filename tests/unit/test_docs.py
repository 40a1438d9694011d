"""The README, the changelog and docs/ name only files, folders and modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

# `app/tasks/runner.py`, `keda/base`, models/scripted ... (placeholders with <> or * skipped)
_PATH = re.compile(
    r"(?<![\w/.:-])((?:app|tests|models|bench|keda|monitoring|scripts|docs|\.ci)/[\w./-]*)"
)
_ROOT_FILE = re.compile(r"`((?:[\w-]+\.Dockerfile)|docker-compose\.yml|\.env\.example|uv\.lock)`")
_MODULE = re.compile(r"(?<![\w/.])(app(?:\.\w+)+)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _defines(source: Path, name: str) -> bool:
    """Whether ``source`` defines or imports ``name`` at top level."""
    text = source.read_text(encoding="utf-8")
    pattern = rf"^(?:def|class) {name}\b|^{name}\b|^from .* import .*\b{name}\b"
    return re.search(pattern, text, re.M) is not None


def _module_exists(dotted: str) -> bool:
    """``app.x.y`` is a module, or a top-level name (function, class, constant) of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        for source in (base.with_suffix(".py"), base / "__init__.py"):
            if source.is_file():
                rest = parts[cut:]
                return not rest or (len(rest) == 1 and _defines(source, rest[0]))
    return False


@pytest.mark.parametrize("doc", DOCS, ids=_ids)
def test_every_named_path_exists(doc: Path):
    text = doc.read_text(encoding="utf-8")
    named = {m.rstrip(".") for m in _PATH.findall(text)} | set(_ROOT_FILE.findall(text))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == [], f"{_ids(doc)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids)
def test_every_named_module_exists(doc: Path):
    text = doc.read_text(encoding="utf-8")
    missing = sorted({m for m in _MODULE.findall(text) if not _module_exists(m)})
    assert missing == [], f"{_ids(doc)} names modules or names that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids)
def test_every_relative_link_resolves(doc: Path):
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "#")):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve()
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            if anchor not in slugs:
                broken.append(target)
    assert broken == [], f"{_ids(doc)} has broken links: {broken}"


def test_the_readme_keeps_its_two_commands_first():
    # .ci/run runs the test command; a newcomer copies both from the top of the README.
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    commands = [line for line in lines[:12] if line.startswith("./scripts/setup.sh")]
    assert [c.split("#")[0].strip() for c in commands] == [
        "./scripts/setup.sh && .venv/bin/agentq demo",
        "./scripts/setup.sh --llm && .venv/bin/pytest",
    ]
    assert "./scripts/setup.sh --llm && .venv/bin/pytest" in (ROOT / ".ci" / "run").read_text()
