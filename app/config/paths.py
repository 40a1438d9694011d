"""Where the package and, in a checkout, the repository are."""

from __future__ import annotations

from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = APP_DIR.parent


def shipped_path(path: str | Path) -> Path:
    """``path`` as given when absolute; a relative one under the checkout when it is there,
    else in the installed package (``models/...`` ships as ``app/_models/...``)."""
    path = Path(path)
    if path.is_absolute() or (REPO_ROOT / path).exists():
        return path if path.is_absolute() else REPO_ROOT / path
    if path.parts and path.parts[0] == "models":
        return APP_DIR / "_models" / Path(*path.parts[1:])
    return path
