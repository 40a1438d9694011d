"""The tests mirror app/: each room of app/ has its unit tests in a folder of the same name, and
no test module imports another (shared fakes and helpers live in tests/fixtures/)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_test_module_imports_another() -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in TESTS.rglob("*.py")
        for module in _imported_modules(path)
        if module.startswith("tests.") and not module.startswith("tests.fixtures")
    }
    assert not offenders, "import shared code from tests/fixtures/ instead: " + "; ".join(
        sorted(offenders)
    )


def test_every_room_of_app_has_its_unit_test_folder() -> None:
    rooms = {p.name for p in (ROOT / "app").iterdir() if (p / "__init__.py").exists()}
    rooms.discard("__pycache__")
    missing = sorted(r for r in rooms if not (TESTS / "unit" / r).is_dir())
    assert not missing, f"app/ rooms without tests/unit/<room>/: {missing}"
