"""``stackwatch db logscan``: the slow-statement summary of PostgreSQL server logs.

Reads stderr logs (any ``log_line_prefix``), csvlog and jsonlog, plain or gzip,
line by line in constant memory: one pending entry, a bounded number of statement
groups, each holding a fixed-size log-scale histogram for its p95. Lines that
match no format are counted, never fatal, so a half-written or rotated file still
gives a report. Statements are grouped by the same normaliser the SQLAlchemy
instrumentation uses (``stackwatch.sqltext``).
"""

from __future__ import annotations

import csv
import gzip
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import orjson

from stackwatch import slo
from stackwatch.sqltext import normalize_uncached, statement_shape

__all__ = ["DEFAULT_LINE_PREFIX", "LogScanReport", "LogScanner", "scan_logs"]

LogFormat = Literal["auto", "stderr", "csvlog", "jsonlog"]

DEFAULT_LINE_PREFIX = "%m [%p] "
MAX_GROUPS = 5000
MAX_STATEMENT_BYTES = 64 * 1024
OTHER_STATEMENTS = "<other statements: group limit reached>"
# Log-scale histogram buckets 4 % wide: p95 within 4 % at a few hundred ints per group.
_BUCKET_SCALE = 1.0 / math.log(1.04)
_SUB_MS_BUCKET = -1  # durations under 1 ms share one bucket: p95 reads "under 1 ms" there
_SLOW_GATE = slo.gate_by_key("slow_queries")

# log_line_prefix escapes, as regular expressions over bytes.
_PREFIX_ESCAPES: dict[str, str] = {
    "m": r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+(?: [A-Za-z0-9+:-]+)?)",
    "t": r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [A-Za-z0-9+:-]+)?)",
    "n": r"(?P<epoch>\d+(?:\.\d+)?)",
    "p": r"\d+",
    "l": r"\d+",
    "c": r"[0-9a-f]+\.[0-9a-f]+",
    "s": r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [A-Za-z0-9+:-]+)?",
    "v": r"[^ ]*",
    "x": r"\d+",
    "e": r"[0-9A-Z]{5}",
    "Q": r"-?\d+",
    "a": r"[^\n]*?",  # application_name may hold spaces
    "%": "%",
}
# User, database, host and the rest: one token without spaces.
_FREE_FORM = r"\S*?"
_PREFIX_TOKEN = re.compile(r"%(-?\d+)?([A-Za-z%])|(.)", re.DOTALL)
_LEVEL = rb"[A-Z]+[0-9]?:  "
# After the level: a duration with its statement; parse and bind phases are not counted
# (log_min_duration_statement logs them separately from the execute they belong to).
_DURATION_ENTRY = (
    rb"duration: (?P<ms>\d+(?:\.\d+)?) ms  (?:statement|execute[^:\n]*): "
    rb"(?P<statement>[^\n]*(?:\n\t[^\n]*)*)"
)
_DURATION_MESSAGE = re.compile(
    rb"duration: (?P<ms>\d+(?:\.\d+)?) ms  (?:statement|execute[^:]*): (?P<statement>.*)",
    re.DOTALL,
)
BLOCK_BYTES = 4 * 1024 * 1024
# A single entry longer than this (a huge multi-line statement) is cut, keeping memory bounded.
MAX_CARRY_BYTES = 64 * 1024 * 1024
_KEY_CACHE_SIZE = 8192


def prefix_source(log_line_prefix: str) -> bytes:
    """A regular expression (source, bytes) for the ``log_line_prefix`` part of a line.

    Escapes with free-form values (user, database, host) match one token lazily up
    to the next literal; ``%q`` makes the rest of the prefix optional, as
    PostgreSQL omits it for background processes.
    """
    parts: list[str] = []
    optional_from: int | None = None
    named: set[str] = set()
    for token in _PREFIX_TOKEN.finditer(log_line_prefix):
        padding, escape, literal = token.groups()
        if literal is not None:
            parts.append(re.escape(literal))
        elif escape == "q":
            optional_from = len(parts)
        else:
            pattern = _PREFIX_ESCAPES.get(escape, _FREE_FORM)
            for name in re.findall(r"\?P<(\w+)>", pattern):
                if name in named:  # a second timestamp escape: match it, name it once
                    pattern = pattern.replace(f"?P<{name}>", "?:")
                named.add(name)
            parts.append(pattern + (" *" if padding else ""))
    if optional_from is not None:
        parts = [*parts[:optional_from], "(?:" + "".join(parts[optional_from:]) + ")?"]
    return "".join(parts).encode()


@dataclass
class StatementSummary:
    """Durations of one normalised statement."""

    statement: str
    count: int
    total_ms: float
    mean_ms: float
    p95_ms: float
    max_ms: float


@dataclass
class DaySummary:
    """One day of the log against the gate (fewer than 10 slow statements a day)."""

    day: str
    statements: int
    slow: int
    gate_ok: bool


@dataclass
class LogScanReport:
    """What ``scan_logs`` found."""

    files: list[str]
    bytes_read: int
    lines: int
    malformed_lines: int
    durations: int
    slow_threshold_ms: float
    gate_slow_per_day: float
    statements: list[StatementSummary]
    days: list[DaySummary]
    groups: int
    entries_in_overflow_group: int = 0
    errors: list[str] = field(default_factory=list)


class _Group:
    """Count, total, max and a sparse log-scale histogram of one statement's durations."""

    __slots__ = ("buckets", "count", "max_ms", "total_ms")

    def __init__(self) -> None:
        self.count = 0
        self.total_ms = 0.0
        self.max_ms = 0.0
        self.buckets: dict[int, int] = {}

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms
        bucket = int(math.log(ms) * _BUCKET_SCALE) if ms >= 1.0 else _SUB_MS_BUCKET
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1

    def quantile(self, q: float) -> float:
        rank = q * self.count
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                upper = 1.0 if bucket == _SUB_MS_BUCKET else math.exp((bucket + 1) / _BUCKET_SCALE)
                return min(upper, self.max_ms)
        return self.max_ms


class LogScanner:
    """Accumulates duration entries from any number of files; ``report()`` summarises."""

    def __init__(self, slow_threshold_ms: float = 100.0, line_prefix: str = DEFAULT_LINE_PREFIX):
        self.slow_threshold_ms = slow_threshold_ms
        prefix = prefix_source(line_prefix)
        # Both patterns start with a literal newline (each block is scanned with one
        # prepended) so the regex engine jumps from line start to line start in C
        # instead of trying every byte; continuation lines start with a tab.
        self._line_head = re.compile(b"\n" + prefix + _LEVEL)
        self._entry = re.compile(b"\n" + prefix + _LEVEL + _DURATION_ENTRY)
        self._has_timestamp = "ts" in self._entry.groupindex
        self._groups: dict[str, _Group] = {}
        self._keys: dict[bytes, str] = {}
        self._days: dict[bytes, list[int]] = {}
        self.files: list[str] = []
        self.errors: list[str] = []
        self.bytes_read = 0
        self.lines = 0
        self.malformed = 0
        self.durations = 0
        self.overflow = 0

    # --- accumulation ---

    def add(self, day: str, ms: float, statement: str) -> None:
        """Record one statement duration logged on ``day`` (YYYY-MM-DD)."""
        self._add_key(day, ms, statement_shape(statement).normalized)

    def _add_raw(self, day: str, ms: float, statement: bytes) -> None:
        self._add_key(day, ms, self._key(statement))

    def _key(self, statement: bytes) -> str:
        """The normalised statement for raw log bytes, through a bounded bytes-keyed cache."""
        key = self._keys.get(statement)
        if key is None:
            if len(self._keys) >= _KEY_CACHE_SIZE:
                self._keys.clear()
            text = statement.replace(b"\n\t", b"\n").decode("utf-8", "replace")
            key = self._keys[statement] = normalize_uncached(text)
        return key

    def _group(self, key: str) -> _Group:
        group = self._groups.get(key)
        if group is None:
            if len(self._groups) >= MAX_GROUPS:
                self.overflow += 1
                key = OTHER_STATEMENTS
                group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group()
        return group

    def _add_key(self, day: str, ms: float, key: str) -> None:
        self.durations += 1
        self._group(key).add(ms)
        day_key = day.encode()
        counts = self._days.get(day_key)
        if counts is None:
            counts = self._days[day_key] = [0, 0]
        counts[0] += 1
        if ms >= self.slow_threshold_ms:
            counts[1] += 1

    def scan_file(self, path: Path, log_format: LogFormat = "auto") -> None:
        """Scan one file (gzip detected by content); an unreadable file is noted, not raised."""
        self.files.append(str(path))
        try:
            with _open_binary(path) as stream:
                first = stream.read(BLOCK_BYTES)
                chosen = _detect_format(path, first) if log_format == "auto" else log_format
                blocks = _blocks(first, stream)
                if chosen == "csvlog":
                    self._scan_csv(_lines(blocks))
                elif chosen == "jsonlog":
                    self._scan_json(_lines(blocks))
                else:
                    self._scan_stderr(blocks)
                self.bytes_read += blocks.bytes_read
        except (OSError, EOFError, gzip.BadGzipFile) as error:
            self.errors.append(f"{path}: {error}")

    def _scan_stderr(self, blocks: Iterable[bytes]) -> None:
        carry = b""
        for block in blocks:
            data = carry + block
            cut = _entry_boundary(data)
            if cut <= 0 and len(data) < MAX_CARRY_BYTES:
                carry = data
                continue
            cut = cut if cut > 0 else len(data)
            self._scan_block(data[:cut])
            carry = data[cut:]
        if carry:
            self._scan_block(carry if carry.endswith(b"\n") else carry + b"\n")

    def _scan_block(self, block: bytes) -> None:
        """Scan whole lines; ``block`` ends with a newline and no entry continues past it."""
        data = b"\n" + block
        lines = block.count(b"\n")
        continuations = data.count(b"\n\t")
        blanks = data.count(b"\n\n")
        well_formed = len(self._line_head.findall(data))
        self.lines += lines
        self.malformed += lines - continuations - blanks - well_formed
        # The hot loop of a multi-GB scan: names bound locally, the group update inlined.
        keys, groups, days = self._keys, self._groups, self._days
        slow_ms, log, scale = self.slow_threshold_ms, math.log, _BUCKET_SCALE
        fields = ("ts", "ms", "statement") if self._has_timestamp else ("ms", "ms", "statement")
        entries = 0
        for match in self._entry.finditer(data):
            entries += 1
            timestamp, ms_text, statement = match.group(*fields)
            ms = float(ms_text)
            if statement.endswith(b"*/"):
                # Our own trailing sqlcommenter comment makes every text unique: cut it
                # before the cache lookup so repeated statements stay cache hits.
                statement = statement[: statement.rfind(b"/*")]
            elif len(statement) > MAX_STATEMENT_BYTES:
                statement = statement[:MAX_STATEMENT_BYTES]
            key = keys.get(statement)
            if key is None:
                key = self._key(statement)
            group = groups.get(key)
            if group is None:
                group = self._group(key)
            group.count += 1
            group.total_ms += ms
            if ms > group.max_ms:
                group.max_ms = ms
            bucket = int(log(ms) * scale) if ms >= 1.0 else _SUB_MS_BUCKET
            group.buckets[bucket] = group.buckets.get(bucket, 0) + 1
            day = timestamp[:10] if self._has_timestamp else b"unknown"
            counts = days.get(day)
            if counts is None:
                counts = days[day] = [0, 0]
            counts[0] += 1
            if ms >= slow_ms:
                counts[1] += 1
        self.durations += entries

    def _scan_csv(self, lines: Iterable[bytes]) -> None:
        # Every csvlog record starts with its timestamp; grouping lines into records
        # first keeps one stray quote from swallowing the rest of the file.
        for record in _csv_records(lines):
            try:
                rows = list(csv.reader(line.decode("utf-8", "replace") for line in record))
            except csv.Error:
                rows = []
            self.lines += len(record)
            if not rows or len(rows[0]) < 14 or not _looks_like_timestamp(rows[0][0]):
                self.malformed += len(record)
                continue
            self.malformed += len(rows) - 1
            self._message(rows[0][0][:10], rows[0][13])

    def _scan_json(self, lines: Iterable[bytes]) -> None:
        for raw in lines:
            self.lines += 1
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.malformed += 1
                continue
            if not isinstance(record, dict) or not isinstance(record.get("message"), str):
                self.malformed += 1
                continue
            self._message(str(record.get("timestamp", ""))[:10] or "unknown", record["message"])

    def _message(self, day: str, message: str) -> None:
        if not message.startswith("duration: "):
            return
        duration = _DURATION_MESSAGE.match(message.encode("utf-8", "replace"))
        if duration is None:
            return
        statement = duration.group("statement")[:MAX_STATEMENT_BYTES]
        self._add_raw(day, float(duration.group("ms")), statement)

    # --- result ---

    def report(self, top: int = 20) -> LogScanReport:
        """The ``top`` statements by total time, every day against the gate."""
        ranked = sorted(self._groups.items(), key=lambda item: item[1].total_ms, reverse=True)
        statements = [
            StatementSummary(
                statement=key,
                count=group.count,
                total_ms=round(group.total_ms, 3),
                mean_ms=round(group.total_ms / group.count, 3),
                p95_ms=round(group.quantile(0.95), 3),
                max_ms=round(group.max_ms, 3),
            )
            for key, group in ranked[:top]
        ]
        days = [
            DaySummary(day.decode("utf-8", "replace"), total, slow, not _SLOW_GATE.breached(slow))
            for day, (total, slow) in sorted(self._days.items())
        ]
        return LogScanReport(
            files=self.files,
            bytes_read=self.bytes_read,
            lines=self.lines,
            malformed_lines=self.malformed,
            durations=self.durations,
            slow_threshold_ms=self.slow_threshold_ms,
            gate_slow_per_day=_SLOW_GATE.threshold,
            statements=statements,
            days=days,
            groups=len(self._groups),
            entries_in_overflow_group=self.overflow,
            errors=self.errors,
        )


def scan_logs(
    paths: Iterable[Path],
    *,
    log_format: LogFormat = "auto",
    line_prefix: str = DEFAULT_LINE_PREFIX,
    slow_threshold_ms: float = 100.0,
    top: int = 20,
) -> LogScanReport:
    """Scan PostgreSQL log files and summarise their ``duration:`` entries."""
    scanner = LogScanner(slow_threshold_ms=slow_threshold_ms, line_prefix=line_prefix)
    for path in paths:
        scanner.scan_file(path, log_format)
    return scanner.report(top)


_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d")


def _looks_like_timestamp(value: str) -> bool:
    return _TIMESTAMP.match(value) is not None


def _open_binary(path: Path) -> IO[bytes]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


class _Blocks:
    """The blocks of a stream (the first one already read), counting bytes as they pass."""

    def __init__(self, first: bytes, stream: IO[bytes]) -> None:
        self._first = first
        self._stream = stream
        self.bytes_read = 0

    def __iter__(self) -> Iterator[bytes]:
        block = self._first
        while block:
            self.bytes_read += len(block)
            yield block
            block = self._stream.read(BLOCK_BYTES)


def _blocks(first: bytes, stream: IO[bytes]) -> _Blocks:
    return _Blocks(first, stream)


def _lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines with their newline, from blocks cut anywhere."""
    carry = b""
    for block in blocks:
        lines = (carry + block).splitlines(keepends=True)
        carry = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        yield from lines
    if carry:
        yield carry


_CSV_RECORD_START = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _csv_records(lines: Iterable[bytes]) -> Iterator[list[bytes]]:
    """csvlog lines grouped into records: a timestamped line and the lines it continues into."""
    record: list[bytes] = []
    size = 0
    for line in lines:
        starts = _CSV_RECORD_START.match(line) is not None
        if record and (starts or size > MAX_STATEMENT_BYTES):
            yield record
            record, size = [], 0
        record.append(line)
        size += len(line)
    if record:
        yield record


def _entry_boundary(data: bytes) -> int:
    """Index just past the last newline that starts a new entry (not a tab continuation)."""
    position = data.rfind(b"\n")
    while position >= 0:
        if position + 1 < len(data) and data[position + 1] != 0x09:
            return position + 1
        position = data.rfind(b"\n", 0, position)
    return 0


def _detect_format(path: Path, first_block: bytes) -> LogFormat:
    name = path.name.removesuffix(".gz")
    if name.endswith(".csv"):
        return "csvlog"
    if name.endswith(".json"):
        return "jsonlog"
    if first_block.lstrip().startswith(b"{"):
        return "jsonlog"
    return "stderr"
