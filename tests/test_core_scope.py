"""The unit of work: statement counts, N+1 marks and closers, without any service."""

from __future__ import annotations

from stackwatch.scope import (
    WorkScope,
    current_scope,
    register_scope_closer,
    unregister_scope_closer,
    work_scope,
)


def test_a_scope_without_statements_reads_as_empty() -> None:
    scope = WorkScope("http", "/items/{item_id}")
    assert (scope.queries, dict(scope.statements), dict(scope.examples)) == (0, {}, {})
    assert set(scope.reported) == set()


def test_statements_are_counted_and_their_first_text_kept() -> None:
    scope = WorkScope("celery", "demo.scan")
    counts = [
        scope.count_statement("SELECT * FROM t WHERE id = ?", f"SELECT * FROM t WHERE id = {n}")
        for n in range(3)
    ]
    assert counts == [1, 2, 3]
    assert scope.count_statement("SELECT 1", "SELECT 1") == 1
    assert dict(scope.statements) == {"SELECT * FROM t WHERE id = ?": 3, "SELECT 1": 1}
    assert scope.examples["SELECT * FROM t WHERE id = ?"] == "SELECT * FROM t WHERE id = 0"
    scope.report("SELECT * FROM t WHERE id = ?")
    scope.report("SELECT * FROM t WHERE id = ?")
    assert set(scope.reported) == {"SELECT * FROM t WHERE id = ?"}
    # Scopes share nothing.
    assert dict(WorkScope("http", "/x").statements) == {}


def test_closers_run_once_per_scope_and_registering_twice_is_harmless() -> None:
    closed: list[tuple[str, int]] = []

    def closer(scope: WorkScope) -> None:
        closed.append((scope.name, scope.queries))

    def failing(scope: WorkScope) -> None:
        raise RuntimeError("a broken closer is logged, never raised")

    register_scope_closer(closer)
    register_scope_closer(closer)
    register_scope_closer(failing)
    try:
        with work_scope("http", "/a") as scope:
            assert current_scope() is scope
            scope.queries = 2
        assert current_scope() is None
    finally:
        unregister_scope_closer(closer)
        unregister_scope_closer(failing)
    with work_scope("http", "/b"):
        pass
    assert closed == [("/a", 2)]
