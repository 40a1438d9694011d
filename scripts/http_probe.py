#!/usr/bin/env python3
"""Container health probe: exit 0 when URL answers 2xx, else 1 with one line saying why.

Standard library only, because the slim and Triton images have no curl:
    http_probe.py http://127.0.0.1:9540/livez             # one try (HEALTHCHECK)
    http_probe.py --wait 600 http://triton:8000/v2/health/ready   # poll until ready or deadline
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request


def probe(url: str, timeout_s: float) -> str | None:
    """None when ``url`` answers 2xx, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per try")
    parser.add_argument("--wait", type=float, default=0.0, help="keep trying this many seconds")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between tries")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.wait
    while True:
        why = probe(args.url, args.timeout)
        if why is None:
            return 0
        if time.monotonic() + args.interval > deadline:
            print(f"{args.url}: {why}", file=sys.stderr)
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
