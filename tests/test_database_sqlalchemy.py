"""instrument_sqlalchemy on real PostgreSQL: N+1, slow queries, SQL comments, spans, undo."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import structlog
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, StatusCode, TraceFlags
from prometheus_client import REGISTRY
from sqlalchemy import Engine, ForeignKey, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

import stackwatch
import stackwatch.sqlalchemy as sw_sqlalchemy
from stackwatch.leafspans import LeafSpan
from stackwatch.requestid import bind_request_id, reset_request_id
from stackwatch.scope import work_scope
from stackwatch.settings import load_settings
from stackwatch.sqltext import parse_sqlcomment
from stackwatch.traces import ParentBasedTraceIdRatio, PresetTraceIdGenerator
from tests.support.sent_sql import record_sent, watch_sent

pytestmark = pytest.mark.integration


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list[Book]] = relationship(back_populates="author", lazy="select")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def _sqlalchemy_url(pg_url: str, driver: str) -> str:
    return pg_url.replace("postgresql://", f"postgresql+{driver}://", 1)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """A psycopg engine on a fresh database holding 8 authors with 2 books each."""
    engine = create_engine(_sqlalchemy_url(pg_url, "psycopg"))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        for index in range(8):
            author = Author(name=f"author {index}")
            author.books = [Book(title=f"book {index}.{n}") for n in range(2)]
            session.add(author)
        session.commit()
    yield engine
    sw_sqlalchemy.uninstrument_sqlalchemy(engine)
    engine.dispose()


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Log events of stackwatch.sqlalchemy during the test."""
    with structlog.testing.capture_logs() as captured:
        monkeypatch.setattr(sw_sqlalchemy, "_log", structlog.get_logger("stackwatch.sqlalchemy"))
        yield captured


@pytest.fixture
def sent_statements(engine: Engine) -> list[str]:
    """Every statement text exactly as handed to the driver, comments included."""
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings())
    return record_sent(engine)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextlib.contextmanager
def _request(request: str, route: str, parent: Context | None = None) -> Iterator[Span]:
    """What the HTTP layer gives a request: its id bound, its span current, its unit of work."""
    token = bind_request_id(request)
    try:
        with (
            trace.get_tracer("test").start_as_current_span(f"GET {route}", context=parent) as span,
            work_scope("http", route),
        ):
            yield span
    finally:
        reset_request_id(token)


def _unsampled_parent(number: int) -> Context:
    """A remote caller's context whose trace is not sampled (its own trace id per number)."""
    unsampled = SpanContext(0xABC + number, 0xDEF, is_remote=True, trace_flags=TraceFlags(0))
    return trace.set_span_in_context(NonRecordingSpan(unsampled))


def _load_books_lazily(engine: Engine) -> int:
    with Session(engine) as session:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        return sum(len(author.books) for author in authors)


def test_lazy_loading_relationship_is_reported_as_n_plus_one(
    engine: Engine, logs: list[dict[str, Any]], spans: InMemorySpanExporter
) -> None:
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(nplusone_threshold=5))
    before = _sample("db_n_plus_one_total", path="/authors")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("GET /authors"), work_scope("http", "/authors"):
        assert _load_books_lazily(engine) == 16

    assert _sample("db_n_plus_one_total", path="/authors") == before + 1
    (warning,) = [entry for entry in logs if entry["event"] == "N+1 query"]
    assert warning["log_level"] == "warning"
    assert warning["count"] == 8
    assert warning["path"] == "/authors"
    assert "FROM books" in warning["statement"]
    assert "= books.author_id" in warning["statement"]
    assert "%(param_1)s" in warning["example"]
    (request_span,) = [s for s in spans.get_finished_spans() if s.name == "GET /authors"]
    (n_plus_one,) = [e for e in request_span.events if e.name == "db.n_plus_one"]
    assert n_plus_one.attributes is not None
    assert n_plus_one.attributes["stackwatch.path"] == "/authors"


def test_selectinload_batch_is_not_reported_as_n_plus_one(
    engine: Engine, logs: list[dict[str, Any]]
) -> None:
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(nplusone_threshold=2))
    before = _sample("db_n_plus_one_total", path="/authors/eager")
    with work_scope("http", "/authors/eager") as scope, Session(engine) as session:
        eager = select(Author).options(selectinload(Author.books))
        first = session.scalars(eager.where(Author.id <= 4)).all()
        rest = session.scalars(eager.where(Author.id > 4)).all()  # a second batch of books
        assert sum(len(author.books) for author in [*first, *rest]) == 16

    assert scope.queries == 4
    assert _sample("db_n_plus_one_total", path="/authors/eager") == before
    assert not [entry for entry in logs if entry["event"] == "N+1 query"]


def test_literal_values_normalise_to_one_repeated_statement(engine: Engine) -> None:
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(nplusone_threshold=3))
    with work_scope("celery", "tasks.refresh") as scope, engine.connect() as connection:
        for author_id in (1, 2, 3):
            connection.exec_driver_sql(f"SELECT name FROM authors WHERE id = {author_id}")
    assert scope.reported == {"SELECT name FROM authors WHERE id = ?"}


def test_nplusone_raise_mode_fails_at_the_statement_crossing_the_threshold(
    engine: Engine,
) -> None:
    settings = load_settings(nplusone="raise", nplusone_threshold=3)
    stackwatch.instrument_sqlalchemy(engine, settings=settings)
    with (
        work_scope("http", "/authors"),
        pytest.raises(stackwatch.NPlusOneError, match="ran 3 times in '/authors'") as raised,
    ):
        _load_books_lazily(engine)
    assert "= books.author_id" in raised.value.statement


def test_queries_outside_a_request_are_not_counted_as_n_plus_one(engine: Engine) -> None:
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(nplusone="raise"))
    assert _load_books_lazily(engine) == 16


def test_queries_per_request_histogram_counts_each_statement(engine: Engine) -> None:
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings())
    before = _sample("db_queries_per_request_count", path="/count")
    before_sum = _sample("db_queries_per_request_sum", path="/count")
    with work_scope("http", "/count"), engine.connect() as connection:
        for _ in range(3):
            connection.execute(text("SELECT 1"))
    assert _sample("db_queries_per_request_count", path="/count") == before + 1
    assert _sample("db_queries_per_request_sum", path="/count") == before_sum + 3


def test_slow_query_is_logged_with_request_id_and_trace_id_but_no_parameters(
    engine: Engine, logs: list[dict[str, Any]], spans: InMemorySpanExporter
) -> None:
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(slow_query_ms=100))
    before = _sample("db_slow_queries_total", operation="SELECT")
    with _request("req-slow-1", "/slow"), engine.connect() as connection:
        connection.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": 0.15})
        connection.execute(text("SELECT 1"))

    (slow,) = [entry for entry in logs if entry["event"] == "slow query"]
    assert slow["log_level"] == "warning"
    assert slow["statement"] == "SELECT pg_sleep(?)"
    assert slow["duration_ms"] >= 150
    assert slow["request_id"] == "req-slow-1"
    assert slow["path"] == "/slow"
    assert "parameters" not in slow
    (db_span,) = [s for s in spans.get_finished_spans() if "pg_sleep" in str(s.attributes)]
    assert slow["trace_id"] == format(db_span.context.trace_id, "032x")
    assert slow["span_id"] == format(db_span.context.span_id, "016x")
    assert _sample("db_slow_queries_total", operation="SELECT") == before + 1


def test_slow_query_parameters_are_logged_only_when_enabled(
    engine: Engine, logs: list[dict[str, Any]]
) -> None:
    settings = load_settings(slow_query_ms=0, log_sql_parameters=True)
    stackwatch.instrument_sqlalchemy(engine, settings=settings)
    with engine.connect() as connection:
        connection.execute(text("SELECT :secret_value"), {"secret_value": "s3cr3t\n"})
    (slow,) = [entry for entry in logs if entry["event"] == "slow query"]
    assert slow["parameters"] == "{'secret_value': 's3cr3t\\\\n'}"


def test_query_duration_histogram_is_labelled_by_operation(engine: Engine) -> None:
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings())
    before = _sample("db_query_duration_seconds_count", operation="UPDATE")
    with engine.begin() as connection:
        connection.execute(text("UPDATE authors SET name = name WHERE id = 1"))
    assert _sample("db_query_duration_seconds_count", operation="UPDATE") == before + 1


def test_hooks_run_after_the_engines_listeners_and_leave_its_event_dispatch_off(
    pg_url: str, spans: InMemorySpanExporter
) -> None:
    """stackwatch hooks the dialect's do_execute, do_execute_no_params and do_executemany:
    the engine gets no listener, so SQLAlchemy's per-statement engine events stay off;
    the application's own engine listeners run first and stackwatch counts, comments,
    times and traces the text they hand on; the dialect's own queries on a new engine's
    first connection are not the request's."""
    engine = create_engine(_sqlalchemy_url(pg_url, "psycopg"))  # not connected yet
    try:
        stackwatch.instrument_sqlalchemy(engine, settings=load_settings(sql_commenter="full"))
        assert not engine._has_events  # the flag SQLAlchemy's engine-event dispatch checks
        sent = record_sent(engine)

        def rewrite(conn: Any, cursor: Any, statement: str, *rest: Any) -> tuple[str, Any]:
            return statement.replace("SELECT 1", "SELECT 2"), rest[0]

        event.listen(engine, "before_cursor_execute", rewrite, retval=True)
        updates = _sample("db_query_duration_seconds_count", operation="UPDATE")
        failures = _sample("db_query_duration_seconds_count", operation="SELECT")
        with _request("req-hooks", "/hooks") as request, engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 2
            connection.execute(text("CREATE TEMP TABLE t (id int, name text)"))
            connection.execute(text("INSERT INTO t VALUES (1, 'a'), (2, 'b')"))
            connection.execute(  # several parameter sets: the driver's executemany
                text("UPDATE t SET name = :name WHERE id = :id"),
                [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
            )
            with pytest.raises(DBAPIError):
                connection.exec_driver_sql("SELECT 1 / 0")
            scope = sw_sqlalchemy.current_scope()
            assert scope is not None
            assert scope.queries == 5
    finally:
        engine.dispose()
    dialects_own, statements = sent[:3], sent[3:]
    assert "/*" not in " ".join(dialects_own)  # version, schema, settings: not counted either
    assert [parse_sqlcomment(text_.replace("%%", "%"))["request_id"] for text_ in statements] == [
        "req-hooks"
    ] * 5
    assert statements[0].startswith("SELECT 2 /*")
    assert statements[3].startswith("UPDATE t SET name = %(name)s WHERE id = %(id)s /*")
    assert _sample("db_query_duration_seconds_count", operation="UPDATE") == updates + 1
    assert _sample("db_query_duration_seconds_count", operation="SELECT") == failures + 2
    client = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
    assert len(client) == 5
    assert all(s.parent and s.parent.span_id == request.get_span_context().span_id for s in client)
    assert client[-1].status.status_code is StatusCode.ERROR


def test_do_execute_hooks_of_the_application_still_run_before_and_after_stackwatchs(
    engine: Engine,
) -> None:
    """SQLAlchemy stops at the first do_execute hook that sent the statement. The
    application's hooks still run, in order, whether added before or after
    instrumenting; one that sends the statement itself sends it once, stackwatch's
    comment included when it was added after stackwatch's hook."""
    calls: list[str] = []

    def observe_before(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        calls.append("before")
        return False

    def observe_after(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        calls.append("after")
        return False

    sent_by_the_application: list[str] = []

    def send_after(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        calls.append("sent by the application")
        sent_by_the_application.append(statement)
        cursor.execute(statement, parameters)
        return True

    event.listen(engine, "do_execute", observe_before)
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(sql_commenter="full"))
    event.listen(engine, "do_execute", observe_after)
    sent = record_sent(engine)
    with _request("req-app-hooks", "/app-hooks"), engine.connect() as connection:
        assert connection.execute(text("SELECT :n"), {"n": 7}).scalar_one() == 7
        assert calls == ["before", "after"]
        assert parse_sqlcomment(sent[-1].replace("%%", "%"))["request_id"] == "req-app-hooks"

        event.listen(engine, "do_execute", send_after)
        calls.clear()
        sent.clear()
        connection.execute(text("CREATE TEMP TABLE seen (n int)"))
        connection.execute(text("INSERT INTO seen VALUES (:n)"), {"n": 1})
        assert calls == ["before", "after", "sent by the application"] * 2
        assert sent == []  # the application's hook sent them, not the dialect
        assert [
            parse_sqlcomment(text_.replace("%%", "%"))["request_id"]
            for text_ in sent_by_the_application
        ] == ["req-app-hooks"] * 2
        assert connection.execute(text("SELECT count(*) FROM seen")).scalar_one() == 1
        scope = sw_sqlalchemy.current_scope()
        assert scope is not None
        assert scope.queries == 4
    event.remove(engine, "do_execute", send_after)


HOSTILE_REQUEST_ID = "x'*/; DROP TABLE authors; --\n%s%(x)s"


@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_hostile_request_id_cannot_leave_the_sql_comment(
    engine: Engine, sent_statements: list[str], pg_url: str, mode: str
) -> None:
    stackwatch.uninstrument_sqlalchemy(engine)
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(sql_commenter=mode))
    # The id bypasses validation on purpose.
    with _request(HOSTILE_REQUEST_ID, "/a'b*/{id}%"), engine.connect() as connection:
        rows = connection.execute(text("SELECT count(*) FROM authors WHERE id > :n"), {"n": 0})
        assert rows.scalar_one() == 8
        connection.exec_driver_sql("SELECT 1").scalar_one()

    assert len(sent_statements) == 2
    for sent in sent_statements:
        assert sent.count("/*") == 1
        assert sent.count("*/") == 1
        assert sent.endswith("*/")
        assert "\n" not in sent
        fields = parse_sqlcomment(sent.replace("%%", "%"))  # as psycopg formats it
        assert fields["request_id"] == HOSTILE_REQUEST_ID  # it was there, and stayed inside
        assert fields["route"] == "/a'b*/{id}%"
    with psycopg.connect(pg_url) as connection:
        row = connection.execute("SELECT count(*) FROM authors").fetchone()
    assert row == (8,)


def _comment_of(sent: str) -> str:
    return sent[sent.index("/*") :]


def _traceparent(context: SpanContext | None) -> str:
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def test_sql_comment_carries_request_id_route_and_the_request_span_traceparent(
    engine: Engine, sent_statements: list[str], spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    for request in ("req:42", "req:43"):
        token = bind_request_id(request)
        try:
            with (
                tracer.start_as_current_span("GET /authors/{author_id}"),
                work_scope("http", "/authors/{author_id}"),
                engine.connect() as connection,
            ):
                connection.execute(text("SELECT name FROM authors WHERE id = :id"), {"id": 1})
                connection.execute(text("SELECT count(*) FROM books WHERE id > :id"), {"id": 1})
        finally:
            reset_request_id(token)

    first, second, third, _ = sent_statements
    fields = parse_sqlcomment(first.replace("%%", "%"))
    assert fields["request_id"] == "req:42"
    assert fields["route"] == "/authors/{author_id}"
    finished = spans.get_finished_spans()
    first_request = next(s for s in finished if s.name.startswith("GET"))
    assert fields["traceparent"] == _traceparent(first_request.context)
    # Each statement still has its own span, a child of its request's.
    db_spans = [s for s in finished if s.kind == trace.SpanKind.CLIENT]
    request_ids = {s.context.span_id for s in finished if s.name.startswith("GET")}
    assert len(db_spans) == 4
    assert {s.parent.span_id for s in db_spans if s.parent is not None} == request_ids
    # One comment per request, shared by its statements; the next request has its own.
    assert _comment_of(first) == _comment_of(second)
    assert parse_sqlcomment(third.replace("%%", "%"))["request_id"] == "req:43"


@pytest.mark.parametrize("off", ["off", False])
def test_sql_commenter_can_be_turned_off(engine: Engine, off: str | bool) -> None:
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(sql_commenter=off))
    seen = record_sent(engine)
    with _request("req-off", "/x"), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert seen == ["SELECT 1"]


def _unsampled_requests(engine: Engine, statement: str, request_ids: list[str]) -> list[str]:
    """One statement per request, each with its own id and an unsampled trace, on one
    connection; returns the statements psycopg prepared on the server meanwhile.

    All in one transaction: psycopg drops its prepared statements at every rollback,
    which is how SQLAlchemy's pool returns a connection.
    """
    with engine.connect() as connection:
        for number, request in enumerate(request_ids, start=1):
            with _request(request, "/stable", _unsampled_parent(number)):
                connection.execute(text(statement), {"id": number})
        rows = connection.exec_driver_sql("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in rows]


@pytest.mark.parametrize(
    ("mode", "sampled", "expected"),
    [
        ("sampled", True, {"request_id", "route", "traceparent"}),
        ("sampled", False, {"route"}),
        ("full", False, {"request_id", "route", "traceparent"}),
        ("route", True, {"route"}),
    ],
)
def test_comment_modes_choose_what_the_comment_carries(
    engine: Engine, sent_statements: list[str], mode: str, sampled: bool, expected: set[str]
) -> None:
    stackwatch.uninstrument_sqlalchemy(engine)
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(sql_commenter=mode))
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else 0)
    parent = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=flags)
    remote = trace.set_span_in_context(NonRecordingSpan(parent))
    with _request("req-mode", "/m", remote) as request_span, engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    fields = parse_sqlcomment(sent_statements[-1])
    assert set(fields) == expected
    if "traceparent" in fields:
        assert fields["traceparent"] == _traceparent(request_span.get_span_context())
        assert fields["request_id"] == "req-mode"


def test_default_comment_keeps_unsampled_statements_one_text_so_psycopg_prepares_them(
    engine: Engine, sent_statements: list[str]
) -> None:
    # psycopg prepares a text on the server after its 5th execution on a connection.
    statement = "SELECT name FROM authors WHERE id = :id"
    prepared = _unsampled_requests(engine, statement, [f"req-{n}" for n in range(6)])
    assert len(set(sent_statements[:6])) == 1
    assert parse_sqlcomment(sent_statements[0].replace("%%", "%")) == {"route": "/stable"}
    assert prepared == [sent_statements[0].replace("%(id)s", "$1").replace("%%", "%")]


def test_full_comment_makes_every_request_a_new_text_that_is_never_prepared(
    engine: Engine, sent_statements: list[str]
) -> None:
    stackwatch.uninstrument_sqlalchemy(engine)
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(sql_commenter="full"))
    statement = "SELECT name FROM authors WHERE id = :id"
    prepared = _unsampled_requests(engine, statement, [f"req-{n}" for n in range(6)])
    assert len(set(sent_statements[:6])) == 6
    assert prepared == []


def test_instrumenting_twice_makes_one_span_and_uninstrument_removes_everything(
    engine: Engine, spans: InMemorySpanExporter
) -> None:
    seen = record_sent(engine)
    tracer = trace.get_tracer("test")
    stackwatch.instrument_sqlalchemy(engine)
    stackwatch.instrument_sqlalchemy(engine)
    with tracer.start_as_current_span("job"), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert [s.name for s in spans.get_finished_spans()] == ["SELECT " + engine.url.database, "job"]
    assert "traceparent=" in seen[-1]

    stackwatch.uninstrument_sqlalchemy(engine)
    stackwatch.uninstrument_sqlalchemy(engine)
    spans.clear()
    with (
        tracer.start_as_current_span("job"),
        work_scope("http", "/after") as scope,
        engine.connect() as connection,
    ):
        connection.execute(text("SELECT 1"))
    assert [s.name for s in spans.get_finished_spans()] == ["job"]
    assert seen[-1] == "SELECT 1"
    assert scope.queries == 0


async def test_async_engine_gets_spans_comments_and_n_plus_one_detection(
    engine: Engine, spans: InMemorySpanExporter
) -> None:
    async_engine = create_async_engine(
        engine.url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    )
    stackwatch.instrument_sqlalchemy(async_engine, settings=load_settings(nplusone_threshold=3))
    seen = record_sent(async_engine)
    try:
        with (
            trace.get_tracer("test").start_as_current_span("GET /async/{id}"),
            work_scope("http", "/async/{id}") as scope,
        ):
            async with async_engine.connect() as connection:
                for author_id in (1, 2, 3):
                    statement = text("SELECT name FROM authors WHERE id = :id")
                    await connection.execute(statement, {"id": author_id})
    finally:
        stackwatch.uninstrument_sqlalchemy(async_engine)
        await async_engine.dispose()

    assert scope.queries == 3
    assert scope.reported == {"SELECT name FROM authors WHERE id = ?"}
    assert parse_sqlcomment(seen[-1])["route"] == "/async/{id}"
    assert len([s for s in spans.get_finished_spans() if "authors" in str(s.attributes)]) == 3


@pytest.mark.parametrize(("mode", "texts_prepared"), [("sampled", 1), ("full", 6)])
async def test_asyncpg_prepares_an_unsampled_statement_once_by_default_and_per_request_in_full(
    engine: Engine, mode: str, texts_prepared: int
) -> None:
    # asyncpg prepares every text it has not seen on a connection (and keeps it across
    # transactions): a per-request comment makes it prepare each request's statements.
    async_engine = create_async_engine(
        engine.url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    )
    stackwatch.instrument_sqlalchemy(async_engine, settings=load_settings(sql_commenter=mode))
    try:
        async with async_engine.connect() as connection:
            for number in range(1, 7):
                with _request(f"req-async-{number}", "/a", _unsampled_parent(number)):
                    statement = text("SELECT name FROM authors WHERE id = :id")
                    await connection.execute(statement, {"id": number})
                await connection.rollback()  # a request's end: asyncpg keeps its cache
            rows = await connection.exec_driver_sql("SELECT statement FROM pg_prepared_statements")
            prepared = [row[0] for row in rows if row[0].startswith("SELECT name FROM authors")]
    finally:
        stackwatch.uninstrument_sqlalchemy(async_engine)
        await async_engine.dispose()
    assert len(prepared) == texts_prepared
    assert all(parse_sqlcomment(text_)["route"] == "/a" for text_ in prepared)


def test_n_plus_one_through_a_real_fastapi_app_is_labelled_by_route_and_request_id(
    engine: Engine, logs: list[dict[str, Any]], sent_statements: list[str]
) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.get("/authors/{kind}")
    def list_books(kind: str) -> dict[str, int]:
        if kind == "eager":
            with Session(engine) as session:
                authors = session.scalars(select(Author).options(selectinload(Author.books)))
                return {"books": sum(len(author.books) for author in authors)}
        return {"books": _load_books_lazily(engine)}

    stackwatch.instrument_fastapi(app)
    path = "/authors/{kind}"
    before = _sample("db_n_plus_one_total", path=path)
    before_requests = _sample("db_queries_per_request_count", path=path)
    try:
        with TestClient(app) as client:
            lazy = client.get("/authors/lazy", headers={"X-Request-ID": "req-nplusone-1"})
            eager = client.get("/authors/eager", headers={"X-Request-ID": "req-eager-1"})
    finally:
        stackwatch.uninstrument_fastapi(app)

    assert lazy.json() == {"books": 16}
    assert eager.json() == {"books": 16}
    assert _sample("db_n_plus_one_total", path=path) == before + 1
    assert _sample("db_queries_per_request_count", path=path) == before_requests + 2
    (warning,) = [entry for entry in logs if entry["event"] == "N+1 query"]
    assert warning["path"] == path
    assert warning["count"] == 8
    comments = [parse_sqlcomment(sent.replace("%%", "%")) for sent in sent_statements]
    assert {c["request_id"] for c in comments} == {"req-nplusone-1", "req-eager-1"}
    assert {c["route"] for c in comments} == {path}


def test_a_failing_listener_never_breaks_the_query_and_is_logged_once(
    engine: Engine, logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings())
    before = _sample("db_query_duration_seconds_count", operation="SELECT")

    def broken(statement: str) -> None:
        raise ValueError("normaliser exploded")

    monkeypatch.setattr(sw_sqlalchemy, "statement_shape", broken)
    with work_scope("http", "/broken"), engine.connect() as connection:
        for _ in range(3):
            assert connection.execute(text("SELECT 41 + 1")).scalar_one() == 42
    failures = [entry for entry in logs if "listener failed" in entry["event"]]
    assert [entry["stage"] for entry in failures] == ["count"]
    # The other parts of the listener went on working: the statements were still timed.
    assert _sample("db_query_duration_seconds_count", operation="SELECT") == before + 3


def test_statements_outside_any_span_get_no_span_unless_root_spans_is_asked_for(
    engine: Engine, spans: InMemorySpanExporter
) -> None:
    seen = record_sent(engine)
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings())
    before = _sample("db_query_duration_seconds_count", operation="SELECT")
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert spans.get_finished_spans() == ()
    assert seen == ["SELECT 1"]  # nothing to say: no request id, route or span
    assert _sample("db_query_duration_seconds_count", operation="SELECT") == before + 1

    stackwatch.uninstrument_sqlalchemy(engine)
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(), root_spans=True)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    (root,) = spans.get_finished_spans()
    assert root.parent is None
    traceparent = parse_sqlcomment(seen[-1])["traceparent"]
    assert traceparent == _traceparent(root.context)


def test_unsampled_request_gets_no_db_span_but_keeps_comment_metrics_and_n_plus_one(
    engine: Engine, sent_statements: list[str], spans: InMemorySpanExporter
) -> None:
    settings = load_settings(nplusone_threshold=3)
    stackwatch.uninstrument_sqlalchemy(engine)
    stackwatch.instrument_sqlalchemy(engine, settings=settings)
    unsampled = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0))
    before = _sample("db_query_duration_seconds_count", operation="SELECT")
    token = bind_request_id("req-unsampled")
    try:
        with (
            trace.use_span(NonRecordingSpan(unsampled)),
            work_scope("http", "/unsampled") as scope,
            engine.connect() as connection,
        ):
            for author_id in (1, 2, 3):
                statement = text("SELECT name FROM authors WHERE id = :id")
                connection.execute(statement, {"id": author_id})
    finally:
        reset_request_id(token)

    assert spans.get_finished_spans() == ()
    assert scope.reported == {"SELECT name FROM authors WHERE id = ?"}
    assert _sample("db_query_duration_seconds_count", operation="SELECT") == before + 3
    # No recorded trace to point to: the default comment carries the route only.
    assert parse_sqlcomment(sent_statements[-1].replace("%%", "%")) == {"route": "/unsampled"}


def test_engine_already_traced_by_contrib_keeps_its_spans_and_gets_no_second_one(
    engine: Engine, spans: InMemorySpanExporter
) -> None:
    # What opentelemetry-instrument does to every engine it sees created.
    counter = metrics.get_meter("test").create_up_down_counter("test.connections")
    EngineTracer(trace.get_tracer("contrib"), engine, counter)
    seen = record_sent(engine)
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings())
    try:
        with (
            trace.get_tracer("test").start_as_current_span("GET /x"),
            work_scope("http", "/x") as scope,
            engine.connect() as connection,
        ):
            connection.execute(text("SELECT 1"))
    finally:
        stackwatch.uninstrument_sqlalchemy(engine)
        sw_sqlalchemy._detach_contrib_spans(engine)

    db_spans = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
    assert len(db_spans) == 1
    assert scope.queries == 1
    assert parse_sqlcomment(seen[-1].replace("%%", "%"))["route"] == "/x"


def test_statement_spans_have_contribs_name_kind_and_attributes(
    engine: Engine, spans: InMemorySpanExporter
) -> None:
    """stackwatch starts the span itself (attributes at once, cached): still contrib's span."""

    def client_spans() -> list[tuple[str, trace.SpanKind, dict[str, Any]]]:
        with (
            trace.get_tracer("test").start_as_current_span("GET /x"),
            engine.connect() as connection,
        ):
            connection.execute(text("SELECT name FROM authors WHERE id = :id"), {"id": 1})
            connection.execute(text("/* leading */ UPDATE authors SET name = name"))
        finished = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
        spans.clear()
        return [(s.name, s.kind, dict(s.attributes or {})) for s in finished]

    counter = metrics.get_meter("test").create_up_down_counter("test.connections")
    EngineTracer(trace.get_tracer("contrib"), engine, counter)  # contrib's own listeners
    try:
        expected = client_spans()
    finally:
        sw_sqlalchemy._detach_contrib_spans(engine)
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings())
    first, cached = client_spans(), client_spans()

    database = engine.url.database
    assert [name for name, _, _ in expected] == [f"SELECT {database}", f"UPDATE {database}"]
    assert "db.statement" in expected[0][2]
    assert "net.peer.name" in expected[0][2]
    assert first == expected
    assert cached == expected


def _statement_spans_of(engine: Engine, provider: TracerProvider, **options: Any) -> Any:
    """Instrument ``engine`` with its statement spans taken from ``provider``'s tracer."""
    stackwatch.instrument_sqlalchemy(engine, settings=load_settings(), **options)
    statement_spans = sw_sqlalchemy._instrumented[engine].query.spans
    statement_spans.tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    return statement_spans


def _fields(span: ReadableSpan) -> tuple[Any, ...]:
    """What an exported span carries, ids aside."""
    return (
        span.name,
        span.kind,
        dict(span.attributes or {}),
        span.context.trace_flags,
        span.context.trace_state,
        span.parent.is_remote if span.parent else None,
        span.instrumentation_scope,
        span.status.status_code,
        span.status.description,
    )


def _stackwatch_provider(ratio: float) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(
        sampler=ParentBasedTraceIdRatio(ratio), id_generator=PresetTraceIdGenerator()
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_statement_spans_under_stackwatchs_provider_start_directly_and_export_the_same(
    engine: Engine,
) -> None:
    """Under stackwatch's provider a sampled request's statement spans skip start_span:
    they start as leaf spans, and a failed statement's becomes the SDK's span when its
    status is set.

    The spans exported are the ones the SDK's start_span gives: same name, kind,
    attributes, status, trace, flags and parent (the request's span).
    """
    provider, exporter = _stackwatch_provider(1.0)
    statement_spans = _statement_spans_of(engine, provider)
    started: list[type] = []

    watch_sent(engine, lambda _, ctx: started.append(type(getattr(ctx, "_otel_span", None))))

    def client_spans() -> list[tuple[Any, ...]]:
        with (
            provider.get_tracer("test").start_as_current_span("GET /x") as request,
            engine.connect() as connection,
        ):
            connection.execute(text("SELECT name FROM authors WHERE id = :id"), {"id": 1})
            connection.execute(text("UPDATE authors SET name = name"))
            with pytest.raises(DBAPIError):
                connection.execute(text("SELECT 1 / 0"))
        request_context = request.get_span_context()
        finished = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
        exporter.clear()
        assert len(finished) == 3
        for span in finished:
            assert span.parent is not None
            assert span.parent.span_id == request_context.span_id
            assert span.context.trace_id == request_context.trace_id
        assert finished[-1].status.status_code is StatusCode.ERROR
        assert "division by zero" in (finished[-1].status.description or "")
        return [_fields(span) for span in finished]

    direct = client_spans()
    assert started == [LeafSpan] * 3
    assert statement_spans._shortcut(sw_sqlalchemy._direct_children) is not None  # was taken
    statement_spans._shortcut = lambda build: None  # the tracer's path
    started.clear()
    through_the_sdk = client_spans()
    assert LeafSpan not in started
    assert direct == through_the_sdk


@pytest.mark.parametrize("ratio", [1.0, 0.0])
def test_root_statement_spans_under_stackwatchs_provider_are_the_sdks_own(
    engine: Engine, ratio: float
) -> None:
    """With root_spans=True, a statement outside any span gets its root span from
    RootSpans (the sampling decision taken up front, the span started directly): the
    same span, comment and decision as start_span gives."""
    provider, exporter = _stackwatch_provider(ratio)
    seen = record_sent(engine)
    statement_spans = _statement_spans_of(engine, provider, root_spans=True)

    def root_spans() -> list[tuple[Any, ...]]:
        with engine.connect() as connection:
            connection.execute(text("SELECT name FROM authors WHERE id = :id"), {"id": 1})
        finished = exporter.get_finished_spans()
        exporter.clear()
        if ratio:
            (root,) = finished
            assert root.parent is None
            assert parse_sqlcomment(seen[-1].replace("%%", "%")) == {
                "traceparent": _traceparent(root.context)
            }
        else:
            assert finished == ()
            assert "/*" not in seen[-1]  # nothing to point to, nothing to say
        return [_fields(span) for span in finished]

    shortcut = root_spans()
    assert statement_spans._shortcut(sw_sqlalchemy._root_spans) is not None  # it was used
    statement_spans._shortcut = lambda build: None  # the tracer's path
    assert shortcut == root_spans()
