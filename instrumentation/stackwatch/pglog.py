"""``stackwatch db logscan``: the slow-statement summary of PostgreSQL server logs.

Reads stderr logs (any ``log_line_prefix``), csvlog and jsonlog, plain or gzip,
block by block in constant memory: one block, a bounded number of statement
groups, each holding a sparse log-scale histogram for its p95, and two byte-bounded
caches that spare repeated statements the normaliser. Lines that
match no format are counted, never fatal, so a half-written or rotated file still
gives a report. Statements are grouped by the same normaliser the SQLAlchemy
instrumentation uses (``stackwatch.sqltext``).
"""

from __future__ import annotations

import csv
import gzip
import math
import operator
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import orjson

from stackwatch import slo
from stackwatch.sqltext import normalize_statement, normalize_uncached

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

# log_line_prefix escapes, as regular expressions over bytes. Optional parts are written
# "(?:X|)", not "(?:X)?": the same match, but Python's engine runs an alternation without
# the bookkeeping of a repeat, which is most of the cost of a line (about 15 % less).
_PREFIX_ESCAPES: dict[str, str] = {
    "m": r"(?P<day>\d\d\d\d-\d\d-\d\d) \d\d:\d\d:\d\d\.\d+(?: [A-Za-z0-9+:-]+|)",
    "t": r"(?P<day>\d\d\d\d-\d\d-\d\d) \d\d:\d\d:\d\d(?: [A-Za-z0-9+:-]+|)",
    "n": r"\d+(?:\.\d+)?",
    "p": r"\d+",
    "l": r"\d+",
    "c": r"[0-9a-f]+\.[0-9a-f]+",
    "s": r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [A-Za-z0-9+:-]+|)",
    "v": r"[^ ]*",
    "x": r"\d+",
    "e": r"[0-9A-Z]{5}",
    "Q": r"-?\d+",
    "a": r"[^\n]*?",  # application_name may hold spaces
    "%": "%",
}
# User, database, host and the rest: one token without spaces. Greedy, not lazy: which
# lines match is the same either way, and the engine backs off to the next literal
# quickly, where a lazy token retries the rest of the pattern after every byte.
_FREE_FORM = r"\S*"
_PREFIX_TOKEN = re.compile(r"%(-?\d+)?([A-Za-z%])|(.)", re.DOTALL)
_LEVEL = rb"[A-Z]+[0-9]?:  "
# After the level, optionally: a duration with its statement; parse and bind phases are
# not counted (log_min_duration_statement logs them separately from their execute).
_DURATION_ENTRY = (
    rb"(?:duration: (?P<ms>\d+(?:\.\d+|)) ms  (?:statement|execute[^:\n]*): "
    rb"(?P<statement>[^\n]*)(?P<continued>\n\t[^\n]*(?:\n\t[^\n]*)*|)|)"
)
_DURATION_MESSAGE = re.compile(
    rb"duration: (?P<ms>\d+(?:\.\d+)?) ms  (?:statement|execute[^:]*): (?P<statement>.*)",
    re.DOTALL,
)
BLOCK_BYTES = 4 * 1024 * 1024
# A single entry longer than this (a huge multi-line statement) is cut, keeping memory bounded.
MAX_CARRY_BYTES = 64 * 1024 * 1024
# Per cached statement, besides its bytes: a dictionary slot and the bytes object's header.
_CACHE_OVERHEAD_BYTES = 200
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_ASCII_DIGIT = re.compile("[0-9]")
_DURATION_FIELD = operator.itemgetter(1)
_MALFORMED_FIELD = operator.itemgetter(4)


def prefix_source(log_line_prefix: str) -> bytes:
    """A regular expression (source, bytes) for the ``log_line_prefix`` part of a line.

    Escapes with free-form values (user, database, host) match one token without
    spaces up to the next literal; ``%q`` makes the rest of the prefix optional, as
    PostgreSQL omits it for background processes. The only capturing group is the
    date of the first timestamp escape (``day``).
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
        parts = [*parts[:optional_from], "(?:" + "".join(parts[optional_from:]) + "|)"]
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


class _StatementCache(dict[bytes, _Group]):
    """Statement bytes -> group, emptied when its keys pass a byte budget (statements can
    be 64 kB each): constant memory without an LRU's bookkeeping on every hit."""

    def __init__(self, budget_bytes: int) -> None:
        super().__init__()
        self.budget_bytes = budget_bytes
        self._left = budget_bytes

    def remember(self, statement: bytes, group: _Group) -> None:
        self._left -= len(statement) + _CACHE_OVERHEAD_BYTES
        if self._left < 0:
            self.clear()
            self._left = self.budget_bytes
        self[statement] = group


class LogScanner:
    """Accumulates duration entries from any number of files; ``report()`` summarises."""

    def __init__(self, slow_threshold_ms: float = 100.0, line_prefix: str = DEFAULT_LINE_PREFIX):
        self.slow_threshold_ms = slow_threshold_ms
        prefix = prefix_source(line_prefix)
        if b"(?P<day>" not in prefix:
            prefix = b"()" + prefix  # keeps the fields of every match at (day, ms, statement)
        # One pattern, one pass over the block, one row per line: a continuation (tab)
        # or blank line; a well-formed line, with the entry's fields on duration lines
        # (the entry takes its continuation lines along); or a malformed line, whose
        # first byte is the last field. Rows that are not entries cost no Python. It
        # starts with a literal newline (each block is scanned with one in front), so the
        # regex engine jumps from line start to line start in C instead of trying every byte.
        self._line = re.compile(
            b"\n(?:(?=[\t\n])|" + prefix + _LEVEL + _DURATION_ENTRY + b"|([^\n]))"
        )
        self._groups: dict[str, _Group] = {}
        # Raw statement bytes -> group (a repeated statement costs one dict hit), and
        # shape -> group (see _statement_group).
        self._keys = _StatementCache(8 * 1024 * 1024)
        self._shapes = _StatementCache(4 * 1024 * 1024)
        self._days: dict[bytes, list[int]] = {}
        self.files: list[str] = []
        self.errors: list[str] = []
        self.bytes_read = 0
        self.lines = 0
        self.malformed = 0

    # --- accumulation ---

    def add(self, day: str, ms: float, statement: str) -> None:
        """Record one statement duration logged on ``day`` (YYYY-MM-DD)."""
        self._add(day.encode(), ms, self._group(normalize_statement(statement)))

    def _add(self, day: bytes, ms: float, group: _Group) -> None:
        group.add(ms)
        counts = self._days.get(day)
        if counts is None:
            counts = self._days[day] = [0, 0]
        counts[0] += 1
        if ms >= self.slow_threshold_ms:
            counts[1] += 1

    def _statement_group(self, statement: bytes) -> _Group:
        """The group of raw log bytes (a miss in the raw cache): normalise once per shape.

        Two caches, each bounded in bytes and emptied when full (the groups stay):
        raw bytes -> group, so a statement that repeats is never decoded or normalised
        again; and shape -> group, the shape being the bytes with every ASCII digit
        read as 0. The normaliser never looks at a digit's value, only at where digits
        are, so statements of one shape normalise alike except for digits that survive
        normalisation (``users_1``): a shape is remembered only when its normal form
        has none. ``... WHERE id = 1042`` and ``... WHERE id = 7311`` then cost one
        normalisation, though their raw texts never repeat.
        """
        if len(statement) > MAX_STATEMENT_BYTES:
            return self._group(_normal_form(statement[:MAX_STATEMENT_BYTES]))
        shape = statement.translate(_DIGITS_AS_ZERO)
        group = self._shapes.get(shape)
        if group is None:
            key = _normal_form(statement)
            group = self._group(key)
            if _ASCII_DIGIT.search(key) is None:
                self._shapes.remember(shape, group)
        self._keys.remember(statement, group)
        return group

    def _group(self, key: str) -> _Group:
        group = self._groups.get(key)
        if group is None:
            if len(self._groups) >= MAX_GROUPS:
                key = OTHER_STATEMENTS
                group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group()
        return group

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
        # ``data`` always starts with the newline that ends the previous line (or a
        # made-up one), so the block is scanned in place, without copying its lines.
        carry = b"\n"
        for block in blocks:
            data = carry + block
            cut = _entry_boundary(data)
            if cut > 1:
                self._scan_block(data, cut)
                carry = data[cut - 1 :]
            elif len(data) < MAX_CARRY_BYTES:
                carry = data
            else:  # one entry larger than any statement worth reading: cut it here
                self._scan_block(data + b"\n", len(data) + 1)
                carry = b"\n"
        if len(carry) > 1:
            data = carry if carry.endswith(b"\n") else carry + b"\n"
            self._scan_block(data, len(data))

    def _scan_block(self, data: bytes, end: int) -> None:
        """Scan the lines of ``data[1:end]``.

        ``data`` starts with a newline (the end of the line before), and no entry
        crosses ``end``.
        """
        rows = self._line.findall(data, 0, end)
        self.lines += len(rows)
        self.malformed += len(rows) - operator.countOf(map(_MALFORMED_FIELD, rows), b"")
        # The hot loop of a multi-GB scan: names bound locally, the group update inlined.
        cached_group, days = self._keys.get, self._days
        slow_ms, log, scale = self.slow_threshold_ms, math.log, _BUCKET_SCALE
        for day, ms_text, statement, continued, _ in filter(_DURATION_FIELD, rows):
            if continued:
                statement += continued
                self.lines += continued.count(b"\n")
            if statement.endswith(b"*/"):
                # Our own trailing sqlcommenter comment makes every text unique: cut it
                # before the cache lookup so repeated statements stay cache hits.
                statement = statement[: statement.rfind(b"/*")]
            group = cached_group(statement)
            if group is None:
                group = self._statement_group(statement)
            ms = float(ms_text)
            group.count += 1
            group.total_ms += ms
            if ms > group.max_ms:
                group.max_ms = ms
            bucket = int(log(ms) * scale) if ms >= 1.0 else _SUB_MS_BUCKET
            buckets = group.buckets
            buckets[bucket] = buckets.get(bucket, 0) + 1
            counts = days.get(day)
            if counts is None:
                counts = days[day] = [0, 0]
            counts[0] += 1
            if ms >= slow_ms:
                counts[1] += 1

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
            self._message(rows[0][0][:10].encode(), rows[0][13])

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
            self._message(str(record.get("timestamp", ""))[:10].encode(), record["message"])

    def _message(self, day: bytes, message: str) -> None:
        if not message.startswith("duration: "):
            return
        duration = _DURATION_MESSAGE.match(message.encode("utf-8", "replace"))
        if duration is None:
            return
        statement = duration.group("statement")
        self._add(day, float(duration.group("ms")), self._statement_group(statement))

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
            DaySummary(
                day.decode("utf-8", "replace") or "unknown",
                total,
                slow,
                not _SLOW_GATE.breached(slow),
            )
            for day, (total, slow) in sorted(self._days.items())
        ]
        overflow = self._groups.get(OTHER_STATEMENTS)
        return LogScanReport(
            files=self.files,
            bytes_read=self.bytes_read,
            lines=self.lines,
            malformed_lines=self.malformed,
            durations=sum(group.count for group in self._groups.values()),
            slow_threshold_ms=self.slow_threshold_ms,
            gate_slow_per_day=_SLOW_GATE.threshold,
            statements=statements,
            days=days,
            groups=len(self._groups),
            entries_in_overflow_group=overflow.count if overflow is not None else 0,
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


def _normal_form(statement: bytes) -> str:
    """The normalised text of raw log bytes (continuation lines lose their tab)."""
    return normalize_uncached(statement.replace(b"\n\t", b"\n").decode("utf-8", "replace"))


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
