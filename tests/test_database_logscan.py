"""``stackwatch db logscan`` on generated logs of each format (garbage included) and a real one."""

# ruff: noqa: E501  (log lines are data: they stay one line each, as PostgreSQL writes them)

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from stackwatch import pglog
from stackwatch.cli import app
from stackwatch.pglog import scan_logs

runner = CliRunner()

STDERR_LOG = """\
2026-11-27 09:00:00.100 UTC [101] LOG:  duration: 150.500 ms  statement: SELECT * FROM stocks WHERE code = '005930'
2026-11-27 09:00:01.100 UTC [101] LOG:  duration: 250.000 ms  statement: SELECT * FROM stocks WHERE code = '000660'
2026-11-27 09:00:02.100 UTC [102] LOG:  duration: 120.000 ms  execute <unnamed>: SELECT * FROM stocks WHERE code = $1 /*request_id='r1',route='%2Fstocks'*/
2026-11-27 09:00:02.101 UTC [102] DETAIL:  parameters: $1 = '035420'
2026-11-27 09:00:03.000 UTC [103] LOG:  duration: 900.000 ms  statement: SELECT s.code,
\t       p.close
\tFROM stocks s JOIN prices p ON p.stock_id = s.id
\tWHERE p.stock_id IN (1, 2, 3)
2026-11-27 09:00:04.000 UTC [104] LOG:  duration: 500.000 ms  parse <unnamed>: SELECT 1
2026-11-27 09:00:04.500 UTC [104] LOG:  duration: 500.000 ms  bind <unnamed>: SELECT 1
this line is garbage \x01\x02
2026-11-27 09:00:05.000 UTC [99] LOG:  checkpoint starting: time
2026-11-28 10:00:00.000 UTC [105] LOG:  duration: 40.000 ms  statement: SELECT * FROM prices WHERE stock_id IN (7, 8)

2026-11-28 10:00:01.000 UTC [105] ERROR:  relation "nope" does not exist at character 15
2026-11-28 10:00:01.000 UTC [105] STATEMENT:  SELECT * FROM nope
2026-11-28 10:00:02.000 UTC [105] LOG:  duration: 30.000 ms  statement: SELECT * FROM prices WHERE stock_id IN (9)
\x00\x00\x00 half-written line
"""


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


def _by_statement(report: pglog.LogScanReport) -> dict[str, pglog.StatementSummary]:
    return {entry.statement: entry for entry in report.statements}


def test_stderr_log_is_grouped_by_normalised_statement_per_day(tmp_path: Path) -> None:
    report = scan_logs([_write(tmp_path / "postgresql.log", STDERR_LOG)])

    groups = _by_statement(report)
    stocks = groups["SELECT * FROM stocks WHERE code = ?"]
    assert stocks.count == 3
    assert stocks.total_ms == pytest.approx(520.5)
    assert stocks.max_ms == 250.0
    join = groups[
        "SELECT s.code, p.close FROM stocks s JOIN prices p ON p.stock_id = s.id WHERE p.stock_id IN (...)"
    ]
    assert join.count == 1
    assert groups["SELECT * FROM prices WHERE stock_id IN (...)"].count == 2
    assert report.durations == 6  # parse and bind phases are not statements
    assert report.malformed_lines == 2
    assert [(d.day, d.statements, d.slow) for d in report.days] == [
        ("2026-11-27", 4, 4),
        ("2026-11-28", 2, 0),
    ]
    assert all(day.gate_ok for day in report.days)


def test_custom_log_line_prefix(tmp_path: Path) -> None:
    prefix = "%t:%r:%u@%d:[%p]: "
    log = (
        "2026-11-27 09:00:00 UTC:10.0.0.5(5432):app@krx:[77]: LOG:  duration: 101.0 ms  "
        "statement: UPDATE portfolios SET cash = 10 WHERE id = 3\n"
        "2026-11-27 09:00:01 UTC:[local]:app@krx:[77]: LOG:  duration: 99.0 ms  "
        "statement: UPDATE portfolios SET cash = 20 WHERE id = 4\n"
        "2026-11-27 09:00:02 UTC [77] LOG:  duration: 5.0 ms  statement: SELECT 1\n"
    )
    report = scan_logs([_write(tmp_path / "custom.log", log)], line_prefix=prefix)
    (entry,) = report.statements
    assert entry.statement == "UPDATE portfolios SET cash = ? WHERE id = ?"
    assert entry.count == 2
    assert report.malformed_lines == 1  # the default-prefix line does not match this prefix
    assert report.days[0].slow == 1


def test_background_process_lines_without_the_q_part_are_well_formed(tmp_path: Path) -> None:
    log = (
        "2026-11-27 09:00:00.000 UTC [1] LOG:  checkpoint complete\n"
        "2026-11-27 09:00:01.000 UTC [2] app@krx LOG:  duration: 300.0 ms  statement: SELECT 2\n"
    )
    report = scan_logs([_write(tmp_path / "q.log", log)], line_prefix="%m [%p] %q%u@%d ")
    assert report.malformed_lines == 0
    assert report.durations == 1


def test_statements_differing_in_digits_of_names_stay_apart(tmp_path: Path) -> None:
    # Statements that differ only in their digits share one normalisation (the scanner's
    # shape cache) unless digits survive it, as in table names: those are told apart.
    statements = [
        "SELECT * FROM t1 WHERE id = 1",
        "SELECT * FROM t2 WHERE id = 2",
        "SELECT * FROM t1 WHERE id = 7",
        "SELECT * FROM prices WHERE day = '2026-11-27' AND stock_id = 10042",
        "SELECT * FROM prices WHERE day = '2026-11-28' AND stock_id = 73311",
    ]
    log = "".join(
        f"2026-11-27 09:00:00.000 UTC [1] LOG:  duration: 1.0 ms  statement: {statement}\n"
        for statement in statements
    )
    report = scan_logs([_write(tmp_path / "digits.log", log)])
    assert {entry.statement: entry.count for entry in report.statements} == {
        "SELECT * FROM t1 WHERE id = ?": 2,
        "SELECT * FROM t2 WHERE id = ?": 1,
        "SELECT * FROM prices WHERE day = ? AND stock_id = ?": 2,
    }


def test_log_line_prefix_without_a_timestamp_counts_under_an_unknown_day(tmp_path: Path) -> None:
    log = "[7] LOG:  duration: 150.0 ms  statement: SELECT 1\n"
    report = scan_logs([_write(tmp_path / "nots.log", log)], line_prefix="[%p] ")
    assert [(d.day, d.statements, d.slow) for d in report.days] == [("unknown", 1, 1)]
    assert report.malformed_lines == 0


def _csv_line(timestamp: str, message: str) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(
        [timestamp, "app", "krx", "77", "127.0.0.1:5000", "abc.1", "1", "SELECT",
         "2026-11-27 08:00:00 UTC", "3/4", "0", "LOG", "00000", message, "", "", "", "", "", "",
         "", "", "psql", "client backend", "", "0"]
    )  # fmt: skip
    return out.getvalue()


def test_csvlog_with_multiline_messages_and_garbage(tmp_path: Path) -> None:
    text = (
        _csv_line(
            "2026-11-27 09:00:00.000 UTC",
            "duration: 200.0 ms  statement: SELECT *\nFROM t WHERE id = 1",
        )
        + 'garbage,"unterminated\n'
        + _csv_line(
            "2026-11-27 09:00:01.000 UTC",
            "duration: 300.0 ms  statement: SELECT * FROM t WHERE id = 2",
        )
        + _csv_line("2026-11-27 09:00:02.000 UTC", "connection authorized: user=app")
        + "not,a,log\n"
    )
    report = scan_logs([_write(tmp_path / "postgresql.csv", text)])
    (entry,) = report.statements
    assert entry.statement == "SELECT * FROM t WHERE id = ?"
    assert entry.count == 2
    assert report.malformed_lines >= 1


def test_jsonlog_with_garbage_lines(tmp_path: Path) -> None:
    def record(ts: str, message: str) -> str:
        return json.dumps({"timestamp": ts, "user": "app", "dbname": "krx", "pid": 7,
                           "error_severity": "LOG", "message": message}) + "\n"  # fmt: skip

    text = (
        record(
            "2026-11-27 09:00:00.000 UTC",
            "duration: 110.0 ms  execute <unnamed>: SELECT * FROM t WHERE id = $1",
        )
        + "{not json\n"
        + '["a", "list"]\n'
        + record(
            "2026-11-28 09:00:00.000 UTC",
            "duration: 130.0 ms  execute <unnamed>: SELECT * FROM t WHERE id = $1",
        )
        + record("2026-11-28 09:00:01.000 UTC", "checkpoint complete")
    )
    report = scan_logs([_write(tmp_path / "postgresql.json", text)])
    (entry,) = report.statements
    assert entry.count == 2
    assert report.malformed_lines == 2
    assert [day.day for day in report.days] == ["2026-11-27", "2026-11-28"]


def test_gzip_log_is_read_transparently(tmp_path: Path) -> None:
    path = tmp_path / "postgresql.log.1.gz"
    with gzip.open(path, "wt") as out:
        out.write(STDERR_LOG)
    assert scan_logs([path]).durations == 6


def test_daily_gate_fails_at_ten_slow_statements(tmp_path: Path) -> None:
    lines = [
        f"2026-11-27 09:00:{n:02d}.000 UTC [1] LOG:  duration: 100.0 ms  statement: SELECT {n}\n"
        for n in range(10)
    ] + [
        f"2026-11-28 09:00:{n:02d}.000 UTC [1] LOG:  duration: 150.0 ms  statement: SELECT {n}\n"
        for n in range(9)
    ]
    report = scan_logs([_write(tmp_path / "gate.log", "".join(lines))])
    assert [(d.day, d.slow, d.gate_ok) for d in report.days] == [
        ("2026-11-27", 10, False),
        ("2026-11-28", 9, True),
    ]
    result = runner.invoke(app, ["db", "logscan", str(tmp_path / "gate.log"), "--fail-on-gate"])
    assert result.exit_code == 1


def test_p95_estimate_is_within_five_percent(tmp_path: Path) -> None:
    lines = [
        f"2026-11-27 09:00:00.000 UTC [1] LOG:  duration: {ms}.0 ms  statement: SELECT {ms}\n"
        for ms in range(1, 1001)
    ]
    (entry,) = scan_logs([_write(tmp_path / "p95.log", "".join(lines))]).statements
    assert entry.count == 1000
    assert entry.p95_ms == pytest.approx(950, rel=0.05)
    assert entry.max_ms == 1000


def test_statement_groups_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pglog, "MAX_GROUPS", 3)
    lines = [
        f"2026-11-27 09:00:00.000 UTC [1] LOG:  duration: 1.0 ms  statement: SELECT * FROM t{n}\n"
        for n in range(10)
    ]
    report = scan_logs([_write(tmp_path / "many.log", "".join(lines))])
    assert report.groups == 4
    assert report.entries_in_overflow_group == 7
    assert report.durations == 10


def test_entries_spanning_read_blocks_are_not_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pglog, "BLOCK_BYTES", 64)
    report = scan_logs([_write(tmp_path / "blocks.log", STDERR_LOG * 3)])
    assert report.durations == 18
    assert report.malformed_lines == 6
    assert _by_statement(report)["SELECT * FROM stocks WHERE code = ?"].count == 9


def test_unreadable_file_is_reported_not_raised(tmp_path: Path) -> None:
    broken = tmp_path / "broken.log.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not really gzip")
    report = scan_logs([broken, _write(tmp_path / "ok.log", STDERR_LOG)])
    assert report.durations == 6
    assert len(report.errors) == 1


def test_cli_logscan_json_and_usage_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "postgresql.log", STDERR_LOG)
    result = runner.invoke(app, ["db", "logscan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["durations"] == 6
    missing = runner.invoke(app, ["db", "logscan", str(tmp_path / "nope.log")])
    assert missing.exit_code == 2
    assert "no such file" in missing.output
    bad_format = runner.invoke(app, ["db", "logscan", str(path), "--format", "xml"])
    assert bad_format.exit_code == 2


@pytest.mark.integration
def test_real_server_log_shows_our_slow_query(pg_url: str) -> None:
    """The running PostgreSQL's own stderr log (Debian layout), after a 120 ms statement."""
    with psycopg.connect(pg_url, autocommit=True) as connection:
        threshold = connection.execute("SHOW log_min_duration_statement").fetchone()
        prefix = connection.execute("SHOW log_line_prefix").fetchone()
        version = connection.execute("SHOW server_version_num").fetchone()
        assert threshold is not None
        assert threshold[0] == "100ms", "run `stackwatch db setup` on this server first"
        marker = f"m{uuid.uuid4().hex[:10]}"
        connection.execute(f"SELECT pg_sleep(0.12), '{marker}' AS {marker}")
    assert prefix is not None
    assert version is not None
    logs = glob.glob(f"/var/log/postgresql/postgresql-{int(version[0]) // 10000}-*.log")
    assert logs, "no server log under /var/log/postgresql"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        report = scan_logs([Path(log) for log in logs], line_prefix=prefix[0], top=100_000)
        mine = [s for s in report.statements if marker in s.statement]
        if mine:
            break
        time.sleep(0.2)
    assert [s.statement for s in mine] == [f"SELECT pg_sleep(?), ? AS {marker}"]
    assert mine[0].max_ms >= 120
