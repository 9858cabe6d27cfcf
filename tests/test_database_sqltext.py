"""The shared statement normaliser and the sqlcommenter writer/parser (no network)."""

from __future__ import annotations

import pytest

from stackwatch.sqltext import (
    MAX_NORMALIZED_CHARS,
    normalize_statement,
    parse_sqlcomment,
    sqlcomment,
    statement_operation,
    statement_shape,
)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SELECT * FROM users WHERE id = 1", "SELECT * FROM users WHERE id = 2"),
        ("SELECT * FROM users WHERE id = %(id_1)s", "SELECT * FROM users WHERE id = $1"),
        ("SELECT * FROM users WHERE id = :id", "SELECT * FROM users WHERE id = %s"),
        ("SELECT * FROM t WHERE name = 'a'", "SELECT * FROM t WHERE name = 'O''Brien'"),
        ("SELECT * FROM t WHERE id IN (1, 2)", "SELECT * FROM t WHERE id IN (3, 4, 5)"),
        ("SELECT * FROM t WHERE id IN ($1)", "SELECT * FROM t WHERE id IN ($1, $2)"),
        (
            "SELECT * FROM t WHERE t.x IN (%(p_1)s::INTEGER, %(p_2)s::INTEGER)",
            "SELECT * FROM t WHERE t.x IN (%(p_1)s::INTEGER)",
        ),
        ("SELECT 1 /*request_id='a',route='%2Fx'*/", "SELECT 2"),
        ("SELECT  a,\n\tb FROM t -- note", "SELECT a, b FROM t"),
        ("INSERT INTO t (a) VALUES (1), (2)", "INSERT INTO t (a) VALUES (3), (4), (5)"),
        ("SELECT * FROM t WHERE id = ANY(ARRAY[1, 2])", "SELECT * FROM t WHERE id = ANY(ARRAY[3])"),
    ],
)
def test_statements_differing_only_in_values_normalise_the_same(first: str, second: str) -> None:
    assert normalize_statement(first) == normalize_statement(second)


def test_identifiers_with_digits_and_casts_are_kept() -> None:
    shape = statement_shape("SELECT users_1.id, x::text, a[1:2] FROM users AS users_1 LIMIT 10")
    assert shape.normalized == "SELECT users_1.id, x::text, a[?:?] FROM users AS users_1 LIMIT ?"


def test_only_lists_of_several_values_count_as_a_batch() -> None:
    assert statement_shape("SELECT * FROM t WHERE id IN (%(a)s, %(b)s)").batched
    assert statement_shape("INSERT INTO t (a) VALUES (%(a0)s), (%(a1)s)").batched
    assert not statement_shape("SELECT * FROM t WHERE id IN (%(a)s)").batched
    assert not statement_shape("SELECT * FROM t WHERE id = %(a)s").batched


def test_operation_is_a_bounded_label_value() -> None:
    assert statement_shape("  select 1").operation == "SELECT"
    assert statement_shape("WITH x AS (SELECT 1) SELECT * FROM x").operation == "WITH"
    assert statement_operation("FROBNICATE everything") == "OTHER"
    assert statement_operation("") == "OTHER"


def test_huge_statements_are_truncated() -> None:
    statement = "SELECT " + ", ".join(f"column_{n}" for n in range(2000)) + " FROM t"
    assert len(normalize_statement(statement)) == MAX_NORMALIZED_CHARS + 3


@pytest.mark.parametrize(
    "value",
    ["x'*/; DROP TABLE users; --", "line\nbreak", "percent %s %(x)s %%", "ünïcødé", "a,b=c"],
)
def test_any_value_round_trips_through_the_comment_and_cannot_close_it(value: str) -> None:
    comment = sqlcomment({"request_id": value, "route": "/r"}, double_percent=False)
    assert comment.startswith("/*")
    assert comment.endswith("*/")
    assert comment.count("*/") == 1
    assert "'" not in comment.replace("='", "").replace("',", "").removesuffix("'*/")
    assert "\n" not in comment
    assert parse_sqlcomment(f"SELECT 1 {comment}") == {"request_id": value, "route": "/r"}


def test_comment_keys_are_sorted_and_none_values_left_out() -> None:
    comment = sqlcomment(
        {"traceparent": "00-a-b-01", "route": None, "db": "x"}, double_percent=False
    )
    assert comment == "/*db='x',traceparent='00-a-b-01'*/"
    assert sqlcomment({"route": None}, double_percent=False) == ""


def test_percent_is_doubled_for_percent_paramstyle_drivers() -> None:
    assert sqlcomment({"route": "/a b"}, double_percent=True) == "/*route='%%2Fa%%20b'*/"


def test_statement_without_trailing_comment_parses_to_nothing() -> None:
    assert parse_sqlcomment("SELECT 1") == {}
    assert parse_sqlcomment("SELECT /* inline */ 1") == {}
