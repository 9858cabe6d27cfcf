"""``stackwatch db`` setup / top / indexes / explain on real PostgreSQL tables (own database)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

import stackwatch
from stackwatch import postgres
from stackwatch.cli import app
from stackwatch.scope import work_scope
from stackwatch.settings import load_settings
from tests.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.integration

BIG_ROWS = 50_000


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a fresh database with pg_stat_statements and table `big`.

    `big` has 50,000 rows: account_id (500 values, no index), a and b (20 values,
    always equal: the planner multiplies their selectivities and underestimates),
    an unused index on note and a prefix-redundant index on created_at.
    """
    with postgres.connect(pg_url) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        connection.execute(
            """
            CREATE TABLE big (
                id serial PRIMARY KEY, account_id int NOT NULL, a int NOT NULL, b int NOT NULL,
                created_at timestamptz NOT NULL, note text NOT NULL
            )
            """
        )
        connection.execute(
            """
            INSERT INTO big (account_id, a, b, created_at, note)
            SELECT n %% 500, n %% 20, n %% 20, now() - n * interval '1 minute', md5(n::text)
            FROM generate_series(1, %s) AS n
            """,
            (BIG_ROWS,),
        )
        connection.execute("CREATE INDEX big_note_unused ON big (note)")
        connection.execute("CREATE INDEX big_created ON big (created_at)")
        connection.execute("CREATE INDEX big_created_note ON big (created_at, note)")
        connection.execute("ANALYZE big")
        yield connection


def _run_lookups(pg_url: str, times: int) -> None:
    """The same parameterised lookup `times` times, then flush the statistics."""
    with psycopg.connect(pg_url, autocommit=True) as connection:
        for account in range(times):
            connection.execute("SELECT id, note FROM big WHERE account_id = %s", (account,))
        connection.execute("SELECT pg_stat_force_next_flush()")


def _lookup(report: postgres.TopReport) -> postgres.StatementStats:
    (entry,) = [s for s in report.statements if "FROM big WHERE account_id" in s.query]
    return entry


def test_setup_is_idempotent_and_needs_no_restart_once_loaded(conn: psycopg.Connection) -> None:
    first = postgres.setup_database(conn, slow_query_ms=100)
    second = postgres.setup_database(conn, slow_query_ms=100)
    assert second.actions == []
    assert not second.restart_needed
    assert second.pg_stat_statements_ready
    assert first.log_min_duration_statement_ms == 100


def test_setup_refuses_a_non_superuser_with_a_hint(pg_url: str) -> None:
    role = f"sw_plain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        url = pg_url.replace("postgres@", f"{role}@", 1)
        with (
            postgres.connect(url) as connection,
            pytest.raises(postgres.DatabaseReportError, match="needs a superuser"),
        ):
            postgres.setup_database(connection)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')


def test_top_lists_this_database_only_with_route_and_request_id_from_the_comment(
    conn: psycopg.Connection, pg_url: str
) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings())
    try:
        with work_scope("http", "/accounts/{account_id}"), engine.connect() as connection:
            for account in range(7):
                connection.execute(
                    text("SELECT id, note FROM big WHERE account_id = :account"),
                    {"account": account},
                )
    finally:
        stackwatch.uninstrument_sqlalchemy(engine)
        engine.dispose()
    _run_lookups(pg_url, 0)

    report = postgres.top_statements(conn, limit=50)
    entry = _lookup(report)
    assert entry.calls == 7
    assert entry.route == "/accounts/{account_id}"
    assert entry.rows > 0
    assert 0 < entry.share <= 1
    assert report.database == conn.info.dbname
    assert all("sw_test" not in s.query or conn.info.dbname in s.query for s in report.statements)


def test_top_since_a_snapshot_shows_deltas_without_resetting(
    conn: psycopg.Connection, pg_url: str, tmp_path: Path
) -> None:
    _run_lookups(pg_url, 5)
    snapshot_file = tmp_path / "before.json"
    postgres.save_snapshot(conn, snapshot_file)
    _run_lookups(pg_url, 3)

    since = postgres.top_statements(conn, limit=50, since=postgres.load_snapshot(snapshot_file))
    assert _lookup(since).calls == 3
    assert not since.reset_since_snapshot
    assert _lookup(postgres.top_statements(conn, limit=50)).calls == 8


def test_top_orders_by_mean_time(conn: psycopg.Connection, pg_url: str) -> None:
    _run_lookups(pg_url, 3)
    conn.execute("SELECT pg_sleep(0.05)")
    conn.execute("SELECT pg_stat_force_next_flush()")
    by_mean = postgres.top_statements(conn, limit=50, order="mean").statements
    means = [entry.mean_ms for entry in by_mean]
    assert means == sorted(means, reverse=True)
    queries = [entry.query for entry in by_mean]
    sleep = next(i for i, query in enumerate(queries) if "pg_sleep" in query)
    lookup = next(i for i, query in enumerate(queries) if "account_id = $1" in query)
    assert sleep < lookup
    by_calls = postgres.top_statements(conn, limit=50, order="calls").statements
    assert "account_id = $1" in by_calls[0].query


def test_indexes_report_unused_redundant_seq_scans_and_a_checked_suggestion(
    conn: psycopg.Connection, pg_url: str
) -> None:
    _run_lookups(pg_url, 30)

    report = postgres.index_report(conn, min_rows=1000, slowest=10)

    unused = {index.index for index in report.unused}
    assert "public.big_note_unused" in unused
    assert "public.big_pkey" not in unused
    assert [(r.index, r.covered_by, r.reason) for r in report.redundant] == [
        ("big_created", "big_created_note", "prefix")
    ]
    assert "public.big" in {table.table for table in report.seq_scan_tables}
    (suggestion,) = [s for s in report.suggestions if s.columns == ["account_id"]]
    assert suggestion.table == "big"
    assert suggestion.cost_after < suggestion.cost_before / 2
    assert suggestion.definition == "CREATE INDEX CONCURRENTLY ON big (account_id)"
    remaining = conn.execute(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'big' AND indexdef LIKE '%(account_id)%'"
    ).fetchone()
    assert remaining == (0,)


def test_exact_duplicate_indexes_are_reported_once(conn: psycopg.Connection) -> None:
    conn.execute("CREATE INDEX big_account_1 ON big (account_id)")
    conn.execute("CREATE INDEX big_account_2 ON big (account_id)")
    duplicates = [
        r for r in postgres.index_report(conn, slowest=0).redundant if "account" in r.index
    ]
    assert [(r.index, r.covered_by, r.reason) for r in duplicates] == [
        ("big_account_2", "big_account_1", "duplicate")
    ]


@pytest.mark.parametrize(
    ("query", "table", "columns"),
    [
        ("SELECT * FROM big WHERE account_id = $1", "big", ["account_id"]),
        (
            "SELECT id FROM big AS b WHERE b.a = $1 AND b.created_at > $2",
            "big",
            ["a", "created_at"],
        ),
        (
            "SELECT * FROM big WHERE a = $1 ORDER BY created_at DESC LIMIT $2",
            "big",
            ["a", "created_at"],
        ),
        (
            "SELECT * FROM big WHERE $1::INTEGER = big.account_id /*route='x'*/",
            "big",
            ["account_id"],
        ),
        ("SELECT * FROM big JOIN other ON other.id = big.id WHERE big.a = $1", None, None),
        ("SELECT * FROM big WHERE a = $1 OR b = $2", None, None),
        ("SELECT * FROM big WHERE lower(note) = $1", None, None),
    ],
)
def test_candidate_index_understands_simple_single_table_shapes_only(
    query: str, table: str | None, columns: list[str] | None
) -> None:
    expected = None if table is None else (table, columns)
    assert postgres.candidate_index(query) == expected


def test_explain_flags_seq_scan_misestimate_and_disk_sort(conn: psycopg.Connection) -> None:
    conn.execute("SET work_mem = '64kB'")
    result = postgres.explain_statement(
        conn, "SELECT * FROM big WHERE a = 1 AND b = 1 ORDER BY note"
    )
    assert result.analyzed
    assert result.execution_ms is not None
    assert result.execution_ms > 0
    kinds = {finding.kind for finding in result.findings}
    assert {"seq_scan_large_table", "row_misestimate", "sort_spill"} <= kinds


def test_explain_of_a_small_indexed_lookup_flags_nothing(conn: psycopg.Connection) -> None:
    result = postgres.explain_statement(conn, "SELECT * FROM big WHERE id = 42")
    assert result.findings == []


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM big",
        "UPDATE big SET note = 'x'",
        "SELECT 1; DROP TABLE big",
        "WITH gone AS (DELETE FROM big RETURNING id) SELECT count(*) FROM gone",
        "SELECT * INTO big_copy FROM big",
        "/* SELECT */ TRUNCATE big",
    ],
)
def test_explain_refuses_anything_but_a_select_and_the_table_survives(
    conn: psycopg.Connection, statement: str
) -> None:
    with pytest.raises(postgres.DatabaseReportError):
        postgres.explain_statement(conn, statement)
    assert conn.execute("SELECT count(*) FROM big").fetchone() == (BIG_ROWS,)


def test_explain_runs_read_only_so_side_effects_are_refused(conn: psycopg.Connection) -> None:
    conn.execute("CREATE SEQUENCE counter")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        postgres.explain_statement(conn, "SELECT nextval('counter')")
    assert conn.execute("SELECT last_value, is_called FROM counter").fetchone() == (1, False)


def test_explain_gives_up_at_the_statement_timeout(conn: psycopg.Connection) -> None:
    with pytest.raises(postgres.DatabaseReportError, match="cancelled"):
        postgres.explain_statement(conn, "SELECT pg_sleep(2)", timeout_ms=200)
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_explain_top_uses_a_generic_plan_for_parameterised_statements(
    conn: psycopg.Connection, pg_url: str
) -> None:
    _run_lookups(pg_url, 20)
    results = postgres.explain_top(conn, 5)
    (lookup,) = [r for r in results if "account_id" in r.query]
    assert not lookup.analyzed
    assert {finding.kind for finding in lookup.findings} == {"seq_scan_large_table"}


runner = CliRunner()


def test_cli_top_prints_json(conn: psycopg.Connection, pg_url: str) -> None:
    _run_lookups(pg_url, 4)
    result = runner.invoke(app, ["db", "top", "--json", "--database-url", pg_url, "-n", "50"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert any("account_id" in s["query"] and s["calls"] == 4 for s in document["statements"])


def test_cli_explain_renders_a_table(conn: psycopg.Connection, pg_url: str) -> None:
    result = runner.invoke(
        app, ["db", "explain", "SELECT count(*) FROM big", "--database-url", pg_url]
    )
    assert result.exit_code == 0, result.output
    assert "seq_scan_large_table" in result.output


def test_cli_explain_refuses_a_delete_with_a_usage_error(pg_url: str) -> None:
    result = runner.invoke(app, ["db", "explain", "DELETE FROM big", "--database-url", pg_url])
    assert result.exit_code == 2
    assert "SELECT statements only" in result.output
    assert "Traceback" not in result.output


def test_cli_explain_needs_a_statement_or_top(pg_url: str) -> None:
    result = runner.invoke(app, ["db", "explain", "--database-url", pg_url])
    assert result.exit_code == 2
    assert "Usage" in result.output


def test_cli_without_a_database_url_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("STACKWATCH_DATABASE_URL", raising=False)
    result = runner.invoke(app, ["db", "top"])
    assert result.exit_code == 2
    assert "--database-url" in result.output


def test_cli_reports_an_unreachable_database_in_one_line(free_port_url: str) -> None:
    result = runner.invoke(app, ["db", "indexes", "--database-url", free_port_url])
    assert result.exit_code == 1
    assert "cannot connect to the database" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def free_port_url() -> str:
    from tests.conftest import free_port

    return f"postgresql://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=2"


def test_no_index_is_suggested_on_views_or_system_catalogs(conn: psycopg.Connection) -> None:
    for _ in range(3):
        conn.execute("SELECT setting FROM pg_settings WHERE name = %s", ("work_mem",))
    conn.execute("SELECT pg_stat_force_next_flush()")
    report = postgres.index_report(conn, slowest=10)
    assert report.notes == []
    assert all(suggestion.table == "big" for suggestion in report.suggestions)
