"""The GPU inference bench in one command: a model served by ``transformers serve`` on the GPU,
called directly and through agentq, at worker concurrency 1, 16, 64 and 256.

    python3 bench/gpu/run.py                   # the device machine: cuda, random-weight 1B
    python3 bench/gpu/run.py --help            # the options (bench/gpu/compare.py's)

Where agentq's dependencies are not importable (the device machine's python3 has torch and
transformers but no Celery), it first installs the wheels that bench/gpu/prepare.sh put in
bench/gpu/wheels: agentq's into one folder, transformers serve's ``[serving]`` extra into
another (each is on the path of its own processes only), once per machine. Then it runs
bench.gpu.compare from this checkout. Standard library only, so it runs before the install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = Path(os.environ.get("BENCH_WHEELS") or REPO / "bench" / "gpu" / "wheels")
SITES = Path(os.environ.get("BENCH_SITES") or "/tmp/agentq-gpu-bench")


def install(requirements: str, target: Path) -> Path:
    """Install the wheels that ``requirements`` (a list in WHEELS) names into ``target``,
    unless that exact list is installed there already."""
    listing = WHEELS / requirements
    stamp = hashlib.sha256(listing.read_bytes()).hexdigest()
    marker = target / ".agentq-installed"
    if marker.is_file() and marker.read_text() == stamp:
        return target
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
            "--no-index", "--no-deps", "--no-compile", "--upgrade",
            "--find-links", str(WHEELS), "--target", str(target), "-r", str(listing),
        ],
        check=True,
    )  # fmt: skip
    marker.write_text(stamp)
    return target


def main() -> int:
    args = sys.argv[1:]
    path = [str(REPO)]
    if importlib.util.find_spec("celery") is None:
        if not (WHEELS / "agentq.txt").is_file():
            print(
                f"agentq's dependencies are not importable and {WHEELS} holds no wheels: run "
                "bench/gpu/prepare.sh where PyPI is reachable and carry bench/gpu/wheels",
                file=sys.stderr,
            )
            return 2
        print(f"installing the wheels of {WHEELS} into {SITES}", flush=True)
        path.append(str(install("agentq.txt", SITES / "agentq")))
        args += ["--serve-pythonpath", str(install("serve.txt", SITES / "serve"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "bench.gpu.compare", *args]
    return subprocess.run(command, env=env, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
