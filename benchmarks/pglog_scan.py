"""logscan throughput: MB/s and peak memory on a generated PostgreSQL log (default 1 GB).

Generates a stderr-format log (Debian's log_line_prefix '%m [%p] %q%u@%d ') into a
temporary directory and deletes it afterwards. The mix is deliberately unkind:
about 45 % of entries are ORM statements with $n parameters and a sqlcommenter
comment (as stackwatch-instrumented apps log them), 35 % carry literal values that
make every text unique (simple-protocol clients), some are multi-line, the rest is
DETAIL / checkpoint noise and a little garbage.

Interleaved rounds, each run in a fresh process so that peak RSS is its own: a bare
line loop over the same file (the floor: reading and splitting lines) and the
logscan scanner. MB/s is given by wall clock and by CPU time of the process (the
machine is shared: CPU time is the "one core" figure).
Usage: python benchmarks/pglog_scan.py [--size-mb 1024] [--rounds 3] [--dir /tmp]
"""

# ruff: noqa: S608  (the SQL here is log text to scan, never executed)

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "%m [%p] %q%u@%d "
TEMPLATES = [
    "SELECT stocks.id, stocks.code, stocks.name FROM stocks WHERE stocks.id = $1",
    "SELECT prices.close, prices.volume FROM prices "
    "WHERE prices.stock_id = $1 AND prices.day >= $2 ORDER BY prices.day",
    "SELECT signals.id, signals.kind FROM signals WHERE signals.stock_id = $1 LIMIT $2",
    "UPDATE portfolios SET updated_at = now() WHERE portfolios.id = $1",
    "INSERT INTO prices (stock_id, day, close, volume) VALUES ($1, $2, $3, $4)",
    "SELECT count(*) FROM trades WHERE trades.account_id = $1 AND trades.created_at > $2",
]


def _literal_statement(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        code = f"{rng.randrange(100000):06d}"
        return f"SELECT * FROM stocks WHERE code = '{code}' AND market = 'KOSPI'"
    if kind == 1:
        ids = ", ".join(str(rng.randrange(10**6)) for _ in range(rng.randrange(2, 12)))
        return f"SELECT id, close FROM prices WHERE stock_id IN ({ids}) ORDER BY day DESC LIMIT 100"
    if kind == 2:
        day = f"2026-11-{rng.randrange(1, 28):02d}"
        return (
            f"DELETE FROM sessions WHERE expires_at < '{day}' AND user_id = {rng.randrange(10**7)}"
        )
    stock = rng.randrange(5000)
    return (
        f"SELECT avg(close) FROM prices WHERE stock_id = {stock} "
        "AND day BETWEEN '2026-01-01' AND '2026-06-30'"
    )


def _comment(rng: random.Random) -> str:
    trace = f"{rng.getrandbits(128):032x}"
    span = f"{rng.getrandbits(64):016x}"
    request = f"{rng.getrandbits(128):032x}"
    route = "%2Fstocks%2F%7Bcode%7D"
    return f" /*request_id='{request}',route='{route}',traceparent='00-{trace}-{span}-01'*/"


def _entries(rng: random.Random) -> list[str]:
    """About 2,000 log lines."""
    lines = []
    for _ in range(2000):
        day = 20 + rng.randrange(7)
        clock = f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
        ts = f"2026-11-{day:02d} {clock}.{rng.randrange(1000):03d} UTC"
        pid = rng.randrange(1000, 99999)
        head = f"{ts} [{pid}] app@krx "
        duration = f"duration: {rng.lognormvariate(4.8, 0.8):.3f} ms"
        roll = rng.random()
        if roll < 0.45:
            statement = rng.choice(TEMPLATES) + _comment(rng)
            lines.append(f"{head}LOG:  {duration}  execute <unnamed>: {statement}\n")
            lines.append(f"{head}DETAIL:  parameters: $1 = '{rng.randrange(10**6)}'\n")
        elif roll < 0.80:
            lines.append(f"{head}LOG:  {duration}  statement: {_literal_statement(rng)}\n")
        elif roll < 0.85:
            lines.append(
                f"{head}LOG:  {duration}  statement: SELECT s.code, p.close\n"
                "\tFROM stocks s JOIN prices p ON p.stock_id = s.id\n"
                f"\tWHERE p.day = '2026-11-{day:02d}'\n"
            )
        elif roll < 0.999:
            buffers = rng.randrange(9999)
            lines.append(f"{ts} [{pid}] LOG:  checkpoint complete: wrote {buffers} buffers\n")
        else:
            lines.append("\x00\x01 truncated garbage line \xff\n")
    return lines


def generate(path: Path, size_mb: int, seed: int = 7) -> None:
    """Write a log of about ``size_mb`` MB."""
    rng = random.Random(seed)
    target = size_mb * 1024 * 1024
    written = 0
    with path.open("w", buffering=4 * 1024 * 1024) as out:
        while written < target:
            text = "".join(_entries(rng))
            out.write(text)
            written += len(text)


_BARE = """
import json, resource, sys, time
wall, cpu, size = time.perf_counter(), time.process_time(), 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        size += len(line)
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

_SCAN = """
import json, resource, sys, time
from pathlib import Path
from stackwatch.pglog import scan_logs
wall, cpu = time.perf_counter(), time.process_time()
report = scan_logs([Path(sys.argv[1])], line_prefix=sys.argv[2])
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "durations": report.durations, "malformed": report.malformed_lines,
                  "groups": report.groups,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _measure(code: str, *args: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="stackwatch-logscan-", dir=args.dir))
    log = workdir / "postgresql.log"
    try:
        started = time.perf_counter()
        generate(log, args.size_mb)
        size_mb = log.stat().st_size / 1024 / 1024
        print(f"generated {size_mb:.0f} MB in {time.perf_counter() - started:.0f} s: {log}")
        runs: dict[str, list[dict[str, float]]] = {"bare line loop": [], "logscan": []}
        for _ in range(args.rounds):
            runs["bare line loop"].append(_measure(_BARE, str(log)))
            runs["logscan"].append(_measure(_SCAN, str(log), PREFIX))

        def median_mbps(name: str, clock: str) -> float:
            return statistics.median(size_mb / run[clock] for run in runs[name])

        print(f"\n{args.rounds} interleaved rounds, one process each (single-threaded)")
        header = f"{'variant':<16}{'MB/s wall':>11}{'MB/s CPU':>10}{'ratio':>7}{'peak RSS MB':>13}"
        print(header)
        for name in runs:
            wall, cpu = median_mbps(name, "wall"), median_mbps(name, "cpu")
            ratio = cpu / median_mbps("bare line loop", "cpu")
            rss = max(run["rss_kb"] for run in runs[name]) / 1024
            print(f"{name:<16}{wall:>11.1f}{cpu:>10.1f}{ratio:>7.2f}{rss:>13.1f}")
        last = runs["logscan"][-1]
        print(
            f"\nlogscan: {last['durations']:,.0f} durations, {last['groups']:,.0f} statement "
            f"groups, {last['malformed']:,.0f} malformed lines"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
