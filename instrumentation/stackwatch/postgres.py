"""PostgreSQL reports behind ``stackwatch db``: setup, top statements, indexes, EXPLAIN.

Everything reads the server's own statistics (pg_stat_statements, pg_stat_user_*,
pg_index) over one psycopg connection and returns plain dataclasses; the CLI only
renders them. Nothing here changes the database except ``setup_database`` (which
exists to), and the index and EXPLAIN checks run inside transactions that are
always rolled back, under a statement timeout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from stackwatch.sqltext import parse_sqlcomment

__all__ = [
    "DatabaseReportError",
    "ExplainFinding",
    "ExplainResult",
    "IndexReport",
    "IndexSuggestion",
    "RedundantIndex",
    "SeqScanTable",
    "SetupReport",
    "StatementStats",
    "TopReport",
    "UnusedIndex",
    "connect",
    "explain_statement",
    "explain_top",
    "index_report",
    "load_snapshot",
    "save_snapshot",
    "setup_database",
    "top_statements",
]

TopOrder = Literal["total", "mean", "calls"]

# A suggested index is reported when the planner's cost drops at least this much.
SUGGESTION_MIN_GAIN = 0.5
MISESTIMATE_FACTOR = 10.0


class DatabaseReportError(Exception):
    """A report cannot run; the message says what to do next."""


def connect(database_url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit psycopg connection from a libpq or SQLAlchemy-style URL."""
    url = re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", database_url)
    url = re.sub(r"^postgres://", "postgresql://", url)
    try:
        return psycopg.connect(url, autocommit=True, application_name="stackwatch-db")
    except psycopg.Error as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise DatabaseReportError(f"cannot connect to the database: {first_line}") from None


Connection = psycopg.Connection[tuple[Any, ...]]


def _scalar(conn: Connection, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


# --- setup -----------------------------------------------------------------------


@dataclass
class SetupReport:
    """What ``setup_database`` changed and whether the server still needs a restart."""

    actions: list[str]
    restart_needed: bool
    pg_stat_statements_ready: bool
    log_min_duration_statement_ms: int


def _library_list(value: str | None) -> list[str]:
    return [item.strip().strip("'\"") for item in (value or "").split(",") if item.strip()]


def setup_database(conn: Connection, slow_query_ms: float = 100.0) -> SetupReport:
    """Enable pg_stat_statements and the slow-statement log; idempotent.

    Uses ALTER SYSTEM (superuser only). ``shared_preload_libraries`` takes effect only
    after a server restart, which this never does by itself: the report says so.
    """
    if not _scalar(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        raise DatabaseReportError(
            "db setup needs a superuser (it runs ALTER SYSTEM); connect as one, "
            "or ask a DBA to add pg_stat_statements to shared_preload_libraries"
        )
    actions: list[str] = []
    running = _library_list(_scalar(conn, "SHOW shared_preload_libraries"))
    configured_value = _scalar(
        conn,
        "SELECT setting FROM pg_file_settings WHERE name = 'shared_preload_libraries' "
        "ORDER BY seqno DESC LIMIT 1",
    )
    configured = running if configured_value is None else _library_list(configured_value)
    if "pg_stat_statements" not in configured:
        wanted = ",".join([*configured, "pg_stat_statements"])
        conn.execute(
            sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {}").format(sql.Literal(wanted))
        )
        actions.append(f"shared_preload_libraries = '{wanted}' (ALTER SYSTEM)")
    if not _scalar(conn, "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"):
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        actions.append("CREATE EXTENSION pg_stat_statements")
    wanted_ms = round(slow_query_ms)
    current_ms = int(
        _scalar(conn, "SELECT setting FROM pg_settings WHERE name = 'log_min_duration_statement'")
    )
    if current_ms != wanted_ms:
        conn.execute(
            sql.SQL("ALTER SYSTEM SET log_min_duration_statement = {}").format(
                sql.Literal(f"{wanted_ms}ms")
            )
        )
        actions.append(f"log_min_duration_statement = {wanted_ms}ms (ALTER SYSTEM)")
    if actions:
        conn.execute("SELECT pg_reload_conf()")
    restart_needed = "pg_stat_statements" not in running
    return SetupReport(
        actions=actions,
        restart_needed=restart_needed,
        pg_stat_statements_ready=not restart_needed,
        log_min_duration_statement_ms=wanted_ms,
    )


# --- top -------------------------------------------------------------------------


@dataclass
class StatementStats:
    """One pg_stat_statements entry of this database (or its delta since a snapshot)."""

    queryid: int
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    share: float
    route: str | None
    request_id: str | None


@dataclass
class TopReport:
    """The top statements of one database, with the window they cover."""

    database: str
    since: str | None
    stats_reset: str | None
    reset_since_snapshot: bool
    total_ms: float
    statements: list[StatementStats]


_STATEMENTS_QUERY = """
SELECT s.queryid, min(s.query), sum(s.calls)::bigint,
       sum(s.total_exec_time + s.total_plan_time)::float8, sum(s.rows)::bigint
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database() AND s.queryid IS NOT NULL
  AND s.query NOT ILIKE '%%pg_stat_statements%%'
GROUP BY s.queryid
"""


def _require_pg_stat_statements(conn: Connection) -> None:
    if not _scalar(conn, "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"):
        raise DatabaseReportError(
            "pg_stat_statements is not installed in this database: run `stackwatch db setup`"
        )
    try:
        conn.execute("SELECT 1 FROM pg_stat_statements LIMIT 1")
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise DatabaseReportError(
            "pg_stat_statements is not loaded: run `stackwatch db setup`, then restart "
            "PostgreSQL (pg_ctlcluster <version> main restart)"
        ) from None


def _stats_reset(conn: Connection) -> str | None:
    value = _scalar(conn, "SELECT stats_reset FROM pg_stat_statements_info")
    return value.isoformat() if value is not None else None


def take_snapshot(conn: Connection) -> dict[str, Any]:
    """The current counters of this database's statements, to diff against later."""
    _require_pg_stat_statements(conn)
    rows = conn.execute(_STATEMENTS_QUERY).fetchall()
    return {
        "taken_at": datetime.now(UTC).isoformat(),
        "database": _scalar(conn, "SELECT current_database()"),
        "stats_reset": _stats_reset(conn),
        "statements": {str(row[0]): [row[2], row[3], row[4]] for row in rows},
    }


def save_snapshot(conn: Connection, path: Path) -> dict[str, Any]:
    """Write a snapshot to ``path`` (JSON) for a later ``top_statements(since=...)``."""
    snapshot = take_snapshot(conn)
    path.write_text(json.dumps(snapshot))
    return snapshot


def load_snapshot(path: Path) -> dict[str, Any]:
    """Read a snapshot written by ``save_snapshot``."""
    try:
        snapshot = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatabaseReportError(f"cannot read snapshot {path}: {error}") from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("statements"), dict):
        raise DatabaseReportError(f"{path} is not a snapshot written by `stackwatch db top --save`")
    return snapshot


def top_statements(
    conn: Connection,
    *,
    limit: int = 10,
    order: TopOrder = "total",
    since: dict[str, Any] | None = None,
) -> TopReport:
    """This database's statements by total time, mean time or calls.

    With ``since`` (a snapshot), counters are deltas since that snapshot, so nobody
    has to call ``pg_stat_statements_reset()`` to see "what ran since". If the
    statistics were reset after the snapshot, counters since the reset are shown.
    """
    _require_pg_stat_statements(conn)
    stats_reset = _stats_reset(conn)
    reset = since is not None and since.get("stats_reset") != stats_reset
    before: dict[str, list[float]] = {} if since is None or reset else since["statements"]
    entries: list[tuple[int, str, int, float, int]] = []
    for queryid, query, calls, total_ms, rows in conn.execute(_STATEMENTS_QUERY).fetchall():
        previous = before.get(str(queryid))
        if previous is not None and calls >= previous[0]:
            calls, total_ms, rows = (
                calls - int(previous[0]),
                total_ms - previous[1],
                rows - int(previous[2]),
            )
        if calls > 0:
            entries.append((queryid, query, calls, total_ms, rows))
    grand_total = sum(entry[3] for entry in entries) or 1.0
    sort_key = {
        "total": lambda e: e[3],
        "mean": lambda e: e[3] / e[2],
        "calls": lambda e: e[2],
    }[order]
    entries.sort(key=sort_key, reverse=True)
    statements = []
    for queryid, query, calls, total_ms, rows in entries[:limit]:
        comment = parse_sqlcomment(query)
        statements.append(
            StatementStats(
                queryid=queryid,
                query=query,
                calls=calls,
                total_ms=round(total_ms, 3),
                mean_ms=round(total_ms / calls, 3),
                rows=rows,
                share=round(total_ms / grand_total, 4),
                route=comment.get("route"),
                request_id=comment.get("request_id"),
            )
        )
    return TopReport(
        database=str(_scalar(conn, "SELECT current_database()")),
        since=None if since is None else str(since.get("taken_at")),
        stats_reset=stats_reset,
        reset_since_snapshot=reset,
        total_ms=round(sum(entry[3] for entry in entries), 3),
        statements=statements,
    )


# --- indexes ---------------------------------------------------------------------


@dataclass
class UnusedIndex:
    """An index never scanned since statistics were reset, and not enforcing a constraint."""

    table: str
    index: str
    size_bytes: int
    definition: str


@dataclass
class RedundantIndex:
    """An index whose columns equal, or are a leading prefix of, another index's."""

    table: str
    index: str
    covered_by: str
    reason: Literal["duplicate", "prefix"]
    size_bytes: int


@dataclass
class SeqScanTable:
    """A table read more often by sequential scans than through its indexes."""

    table: str
    seq_scan: int
    idx_scan: int
    live_rows: int
    seq_rows_read: int
    size_bytes: int


@dataclass
class IndexSuggestion:
    """A candidate index that made the planner's cost drop, checked and rolled back."""

    table: str
    columns: list[str]
    definition: str
    query: str
    cost_before: float
    cost_after: float


@dataclass
class IndexReport:
    """Everything ``stackwatch db indexes`` reports."""

    unused: list[UnusedIndex]
    redundant: list[RedundantIndex]
    seq_scan_tables: list[SeqScanTable]
    suggestions: list[IndexSuggestion]
    suggestions_checked: int
    notes: list[str] = field(default_factory=list)


_UNUSED_INDEXES = """
SELECT s.schemaname || '.' || s.relname, s.schemaname || '.' || s.indexrelname,
       pg_relation_size(s.indexrelid), pg_get_indexdef(s.indexrelid)
FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid)
ORDER BY pg_relation_size(s.indexrelid) DESC, 2
"""

_ALL_INDEXES = """
SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text, i.indkey::text,
       i.indclass::text, i.indisunique OR i.indisprimary, am.amname,
       i.indpred IS NOT NULL OR i.indexprs IS NOT NULL, pg_relation_size(i.indexrelid)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_am am ON am.oid = c.relam
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
ORDER BY 1, 2
"""

_SEQ_SCAN_TABLES = """
SELECT schemaname || '.' || relname, seq_scan, coalesce(idx_scan, 0), n_live_tup,
       seq_tup_read, pg_total_relation_size(relid)
FROM pg_stat_user_tables
WHERE seq_scan > coalesce(idx_scan, 0) AND n_live_tup >= %(min_rows)s
ORDER BY seq_tup_read DESC
"""


def _redundant_indexes(conn: Connection) -> list[RedundantIndex]:
    by_table: dict[str, list[tuple[str, list[str], list[str], bool, str, bool, int]]] = {}
    for table, index, keys, classes, unique, method, partial, size in conn.execute(_ALL_INDEXES):
        by_table.setdefault(table, []).append(
            (index, keys.split(), classes.split(), unique, method, partial, size)
        )
    found: list[RedundantIndex] = []
    for table, indexes in by_table.items():
        for index, keys, classes, unique, method, partial, size in indexes:
            if unique or partial:
                continue  # a unique or partial index means something the wider one doesn't
            for other, other_keys, other_classes, _, other_method, other_partial, _ in indexes:
                if other == index or other_partial or other_method != method:
                    continue
                same = keys == other_keys and classes == other_classes
                prefix = (
                    method == "btree"
                    and len(keys) < len(other_keys)
                    and other_keys[: len(keys)] == keys
                    and other_classes[: len(classes)] == classes
                )
                # Of two identical non-unique indexes report one only (the later name).
                if same and not unique and (other, index) < (index, other):
                    found.append(RedundantIndex(table, index, other, "duplicate", size))
                    break
                if prefix:
                    found.append(RedundantIndex(table, index, other, "prefix", size))
                    break
    return found


_PLACEHOLDER = r"\$\d+(?:::[\w\s]+?(?:\[\])?)?"
_COLUMN = r'(?:"?\w+"?\.)?"?(\w+)"?'
_CONDITION_FORWARD = re.compile(
    rf"^{_COLUMN}\s*(=|<=|>=|<|>|<>|!=|LIKE|ILIKE)\s*{_PLACEHOLDER}$", re.IGNORECASE
)
_CONDITION_REVERSED = re.compile(rf"^{_PLACEHOLDER}\s*(=|<=|>=|<|>)\s*{_COLUMN}$", re.IGNORECASE)
_CONDITION_IN = re.compile(rf"^{_COLUMN}\s+IN\s*\(.*\)$|^{_COLUMN}\s*=\s*ANY\s*\(.*\)$", re.I)
_SINGLE_TABLE_SELECT = re.compile(
    r"^SELECT\s.+?\sFROM\s+(?P<table>[\w.\"]+)(?:\s+(?:AS\s+)?(?!WHERE\b)\w+)?"
    r"\s+WHERE\s+(?P<where>.+?)"
    r"(?:\s+ORDER\s+BY\s+(?P<order>[\w.\"]+)(?:\s+(?:ASC|DESC))?)?"
    r"(?:\s+LIMIT\s+\S+)?(?:\s+OFFSET\s+\S+)?\s*;?$",
    re.IGNORECASE | re.DOTALL,
)


def _strip_comments(query: str) -> str:
    return " ".join(re.sub(r"/\*.*?\*/|--[^\n]*", " ", query, flags=re.DOTALL).split())


def candidate_index(query: str) -> tuple[str, list[str]] | None:
    """The table and columns of an index that could serve a simple single-table query.

    Understands ``SELECT ... FROM t WHERE a = $1 AND b > $2 [ORDER BY c] [LIMIT n]``:
    equality columns first, then one range or ORDER BY column (PgHero's approach).
    Anything with a join, OR, a sub-select or a function on a column returns None.
    """
    match = _SINGLE_TABLE_SELECT.match(_strip_comments(query))
    if match is None:
        return None
    where = match.group("where")
    if re.search(r"\b(OR|JOIN|SELECT|EXISTS)\b|,\s*\w+\s+(?:AS\s+)?\w+\s*WHERE", where, re.I):
        return None
    equality: list[str] = []
    ranges: list[str] = []
    for condition in re.split(r"\s+AND\s+", where, flags=re.IGNORECASE):
        condition = condition.strip().strip("()")
        forward = _CONDITION_FORWARD.match(condition)
        reversed_ = _CONDITION_REVERSED.match(condition)
        in_list = _CONDITION_IN.match(condition)
        if forward:
            column, operator = forward.group(1), forward.group(2)
        elif reversed_:
            column, operator = reversed_.group(2), reversed_.group(1)
        elif in_list:
            column, operator = in_list.group(1) or in_list.group(2), "="
        else:
            return None
        target = equality if operator == "=" else ranges
        if column not in equality and column not in ranges:
            target.append(column)
    columns = equality + ranges[:1]
    order = match.group("order")
    if order and not ranges:
        order_column = order.split(".")[-1].strip('"')
        if order_column not in columns:
            columns.append(order_column)
    if not columns:
        return None
    return match.group("table").strip('"'), columns[:3]


def _parameter_count(query: str) -> int:
    numbers = [int(n) for n in re.findall(r"\$(\d+)", query)]
    return max(numbers, default=0)


def _generic_plan(conn: Connection, query: str) -> dict[str, Any]:
    """EXPLAIN (FORMAT JSON) of a parameterised query, planned without parameter values."""
    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    conn.execute(sql.SQL("PREPARE stackwatch_candidate AS {}").format(sql.SQL(query)))
    arguments = ", ".join(["NULL"] * _parameter_count(query))
    execute = "EXECUTE stackwatch_candidate" + (f"({arguments})" if arguments else "")
    row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(sql.SQL(execute))).fetchone()
    conn.execute("DEALLOCATE stackwatch_candidate")
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def _is_user_table(conn: Connection, table: str) -> bool:
    """A table (not a view or a system catalog) that an index could be created on."""
    return bool(
        _scalar(
            conn,
            """
            SELECT c.relkind IN ('r', 'p', 'm')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = to_regclass(%s)
            """,
            (table,),
        )
    )


def _has_leading_index(conn: Connection, table: str, columns: list[str]) -> bool:
    rows = conn.execute(
        """
        SELECT array_agg(a.attname ORDER BY k.ord)
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = to_regclass(%s)
        GROUP BY i.indexrelid
        """,
        (table,),
    ).fetchall()
    return any(list(row[0][: len(columns)]) == columns for row in rows)


@contextmanager
def _rolled_back(conn: Connection, timeout_ms: int, read_only: bool = False) -> Iterator[None]:
    """A transaction that is always rolled back, with statement and lock timeouts."""
    conn.execute("BEGIN READ ONLY" if read_only else "BEGIN")
    try:
        conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(timeout_ms)))
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(timeout_ms)))
        yield
    finally:
        conn.execute("ROLLBACK")
        # Prepared statements outlive a rollback; drop any a failed check left behind.
        conn.execute("DEALLOCATE ALL")


def _check_suggestion(
    conn: Connection, query: str, table: str, columns: list[str], timeout_ms: int
) -> IndexSuggestion | None:
    with _rolled_back(conn, timeout_ms):
        before = float(_generic_plan(conn, query)["Total Cost"])
        identifiers = sql.SQL(", ").join(sql.Identifier(column) for column in columns)
        target = sql.Identifier(*table.split("."))
        conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(target, identifiers))
        after = float(_generic_plan(conn, query)["Total Cost"])
    if after > before * (1.0 - SUGGESTION_MIN_GAIN):
        return None
    definition = f"CREATE INDEX CONCURRENTLY ON {table} ({', '.join(columns)})"
    return IndexSuggestion(table, columns, definition, query, round(before, 2), round(after, 2))


def _suggestions(
    conn: Connection, slowest: int, timeout_ms: int, notes: list[str]
) -> tuple[list[IndexSuggestion], int]:
    try:
        _require_pg_stat_statements(conn)
    except DatabaseReportError as error:
        notes.append(f"no index suggestions: {error}")
        return [], 0
    rows = conn.execute(
        _STATEMENTS_QUERY + " ORDER BY sum(s.total_exec_time) / sum(s.calls) DESC LIMIT %(n)s",
        {"n": slowest * 5},
    ).fetchall()
    suggestions: list[IndexSuggestion] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    checked = 0
    for row in rows:
        query = row[1]
        candidate = candidate_index(query)
        if candidate is None or checked >= slowest:
            continue
        table, columns = candidate
        if (
            (table, tuple(columns)) in seen
            or not _is_user_table(conn, table)
            or _has_leading_index(conn, table, columns)
        ):
            continue
        seen.add((table, tuple(columns)))
        checked += 1
        try:
            suggestion = _check_suggestion(conn, query, table, columns, timeout_ms)
        except psycopg.Error as error:
            notes.append(f"could not check an index on {table} ({', '.join(columns)}): {error}")
            continue
        if suggestion is not None:
            suggestions.append(suggestion)
    return suggestions, checked


def index_report(
    conn: Connection, *, min_rows: int = 1000, slowest: int = 10, timeout_ms: int = 10_000
) -> IndexReport:
    """Unused, duplicate and prefix-redundant indexes, seq-scan tables, checked suggestions."""
    unused = [UnusedIndex(*row) for row in conn.execute(_UNUSED_INDEXES)]
    seq_tables = [
        SeqScanTable(*row) for row in conn.execute(_SEQ_SCAN_TABLES, {"min_rows": min_rows})
    ]
    notes: list[str] = []
    suggestions, checked = _suggestions(conn, slowest, timeout_ms, notes)
    return IndexReport(unused, _redundant_indexes(conn), seq_tables, suggestions, checked, notes)


# --- explain ---------------------------------------------------------------------


@dataclass
class ExplainFinding:
    """Something in a plan worth a look."""

    kind: Literal["seq_scan_large_table", "row_misestimate", "sort_spill", "hash_spill"]
    node: str
    detail: str


@dataclass
class ExplainResult:
    """One EXPLAIN, with its findings; ``analyzed`` is False for a generic (estimated) plan."""

    query: str
    analyzed: bool
    execution_ms: float | None
    total_cost: float
    findings: list[ExplainFinding]
    plan: dict[str, Any]


_DATA_MODIFYING = re.compile(
    r"\b(INSERT|UPDATE|DELETE|MERGE|INTO|COPY|TRUNCATE|CREATE|DROP|ALTER|GRANT|CALL)\b",
    re.IGNORECASE,
)
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")


def require_select(statement: str) -> str:
    """``statement`` without comments and trailing ';' if it is a single read-only SELECT.

    Raises:
        DatabaseReportError: for anything else (the statement is never run).
    """
    text = _strip_comments(statement).rstrip("; ")
    bare = _STRING_LITERAL.sub("''", text)
    first = bare.split(None, 1)[0].upper() if bare else ""
    if ";" in bare:
        raise DatabaseReportError("db explain takes one statement; this text holds several")
    if first not in ("SELECT", "WITH", "VALUES", "TABLE") or _DATA_MODIFYING.search(bare):
        raise DatabaseReportError(
            "db explain runs SELECT statements only (EXPLAIN ANALYZE executes the statement)"
        )
    return text


def _relation_rows(conn: Connection, relation: str, schema: str | None) -> float:
    name = f"{schema}.{relation}" if schema else relation
    value = _scalar(conn, "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (name,))
    return float(value or 0.0)


def _walk(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _walk(child)


def plan_findings(
    conn: Connection, plan: dict[str, Any], large_table_rows: int = 10_000
) -> list[ExplainFinding]:
    """Seq scans on large tables, row estimates off by 10x or more, sorts and hashes on disk."""
    findings: list[ExplainFinding] = []
    for node in _walk(plan):
        node_type = str(node.get("Node Type"))
        relation = node.get("Relation Name")
        if node_type == "Seq Scan" and relation:
            rows = _relation_rows(conn, relation, node.get("Schema"))
            if rows >= large_table_rows:
                findings.append(
                    ExplainFinding(
                        "seq_scan_large_table",
                        f"Seq Scan on {relation}",
                        f"reads the whole table (~{rows:,.0f} rows)",
                    )
                )
        if "Actual Rows" in node and node.get("Actual Loops", 0):
            estimated = float(node.get("Plan Rows", 0))
            actual = float(node["Actual Rows"])
            high, low = max(estimated, actual), max(min(estimated, actual), 1.0)
            if high >= 10 and high / low >= MISESTIMATE_FACTOR:
                findings.append(
                    ExplainFinding(
                        "row_misestimate",
                        node_type + (f" on {relation}" if relation else ""),
                        f"estimated {estimated:,.0f} rows, got {actual:,.0f} "
                        f"({high / low:,.0f}x): run ANALYZE or add extended statistics",
                    )
                )
        if node.get("Sort Space Type") == "Disk":
            findings.append(
                ExplainFinding(
                    "sort_spill",
                    node_type,
                    f"sort spilled {node.get('Sort Space Used', '?')} kB to disk "
                    f"({node.get('Sort Method')}): raise work_mem or sort less",
                )
            )
        if int(node.get("Hash Batches", 1) or 1) > 1:
            findings.append(
                ExplainFinding(
                    "hash_spill",
                    node_type,
                    f"hash used {node['Hash Batches']} batches (spilled to disk): raise work_mem",
                )
            )
    return findings


def explain_statement(
    conn: Connection, statement: str, *, timeout_ms: int = 5000, large_table_rows: int = 10_000
) -> ExplainResult:
    """EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) a SELECT in a rolled-back read-only transaction.

    A statement with ``$n`` parameters (as pg_stat_statements stores it) cannot be
    executed; it gets its generic plan, estimated only (``analyzed=False``).
    """
    text = require_select(statement)
    with _rolled_back(conn, timeout_ms, read_only=True):
        if _parameter_count(text):
            plan = _generic_plan(conn, text)
            return ExplainResult(
                text,
                False,
                None,
                float(plan["Total Cost"]),
                plan_findings(conn, plan, large_table_rows),
                plan,
            )
        try:
            row = conn.execute(
                sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}").format(sql.SQL(text))
            ).fetchone()
        except psycopg.errors.QueryCanceled:
            raise DatabaseReportError(
                f"the statement ran longer than {timeout_ms} ms and was cancelled "
                "(raise --timeout-ms to wait longer)"
            ) from None
        assert row is not None
        document = row[0][0]
        plan = document["Plan"]
        return ExplainResult(
            text,
            True,
            float(document.get("Execution Time", 0.0)),
            float(plan["Total Cost"]),
            plan_findings(conn, plan, large_table_rows),
            plan,
        )


def explain_top(
    conn: Connection, count: int, *, timeout_ms: int = 5000, large_table_rows: int = 10_000
) -> list[ExplainResult]:
    """EXPLAIN the ``count`` SELECTs of this database with the highest total time."""
    report = top_statements(conn, limit=count * 4, order="total")
    results: list[ExplainResult] = []
    for statement in report.statements:
        try:
            require_select(statement.query)
        except DatabaseReportError:
            continue
        results.append(
            explain_statement(
                conn, statement.query, timeout_ms=timeout_ms, large_table_rows=large_table_rows
            )
        )
        if len(results) == count:
            break
    return results


def as_json(value: Any) -> Any:
    """A report dataclass (or list of them) as JSON-ready data."""
    if isinstance(value, list):
        return [as_json(item) for item in value]
    return asdict(value)
