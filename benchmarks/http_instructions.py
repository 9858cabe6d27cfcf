"""Instructions per request of the HTTP benchmark's variants, counted by callgrind.

Requests per second move by several per cent between runs on a shared 2-core
machine; instruction counts do not (the same code, inputs and environment give the
same count whatever else the machine does). This drives the app of
``http_overhead.py`` in process, as uvicorn would (a raw ASGI scope, one task per
request, the lifespan run first), under ``valgrind --tool=callgrind``, twice per
variant: once with N requests and once with 5N. The difference over 4N is one
request's cost, start-up and warm-up excluded. Use it to see what a change to the
request path costs before confirming with ``http_overhead.py`` (which also counts
uvicorn's HTTP parsing, the kernel and the caches). Counts vary by about 1 % between
runs: trace ids are random, so the sampled share and the hash layout differ.

    uv run python benchmarks/http_instructions.py --variants bare stackwatch stackwatch-10pct

``--requests`` sets N (default 500); two valgrind runs go at once (one per core).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import http_overhead  # the benchmark app and its environment, beside this script

WARM_UP_REQUESTS = 1000


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/42",
        "raw_path": b"/items/42",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


async def _drive(app: Any, requests: int) -> None:
    """Run the app's lifespan start-up, then ``requests`` requests one task each."""
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        started.set()

    lifespan = asyncio.create_task(
        app(
            {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
            startup.get,
            lifespan_send,
        )
    )
    await started.wait()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    for _ in range(WARM_UP_REQUESTS + requests):
        await asyncio.create_task(app(_scope(), receive, send))
    await startup.put({"type": "lifespan.shutdown"})
    await lifespan


def _serve_in_process(variant: str, requests: int) -> None:
    """The child: build the variant's app and drive it (its log lines go to /dev/null)."""
    os.environ["HTTP_OVERHEAD_VARIANT"] = variant
    app = http_overhead.build_app()
    asyncio.run(_drive(app, requests))


def _instructions(variant: str, requests: int) -> int:
    """Instructions callgrind counted for a whole child run."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        variant,
        str(requests),
    ]
    result = subprocess.run(
        command,
        env=http_overhead.clean_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"callgrind run of {variant} failed:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["bare", "stackwatch", "stackwatch-10pct"])
    parser.add_argument("--requests", type=int, default=500, help="N: runs of N and 5N requests")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _serve_in_process(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install -y valgrind")

    runs = [(variant, n) for variant in args.variants for n in (args.requests, 5 * args.requests)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        counts = dict(zip(runs, pool.map(lambda run: _instructions(*run), runs), strict=True))
    per_request = {
        variant: (counts[variant, 5 * args.requests] - counts[variant, args.requests])
        / (4 * args.requests)
        for variant in args.variants
    }
    bare = per_request.get("bare")
    print(f"\ninstructions per request (callgrind, {4 * args.requests} requests counted)\n")
    print(f"{'variant':<18}{'instructions':>14}{'over bare':>11}{'bare / variant':>16}")
    for variant, count in per_request.items():
        over = f"{count - bare:>11,.0f}" if bare else f"{'-':>11}"
        ratio = f"{bare / count:>16.3f}" if bare else f"{'-':>16}"
        print(f"{variant:<18}{count:>14,.0f}{over}{ratio}")


if __name__ == "__main__":
    main()
