"""Unit tests of the cache's pure parts: keys, value codec, TTL policies, breaker. No network."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from stackwatch.cache.breaker import CircuitBreaker
from stackwatch.cache.codec import MISSING, KeyBuilder, ValueCodec
from stackwatch.cache.namespace import check_name, resolve_ttl
from stackwatch.metrics import cache_circuit_open
from stackwatch.settings import DEFAULT_TTL_POLICIES


class Quote(BaseModel):
    code: str
    price: Decimal
    at: dt.datetime


@dataclasses.dataclass
class Window:
    start: dt.date
    days: int


def quote(code: str, days: int = 5, *, adjusted: bool = False) -> Quote:
    return Quote(code=code, price=Decimal("1.10"), at=dt.datetime(2024, 1, 2, tzinfo=dt.UTC))


def test_equivalent_calls_share_one_key() -> None:
    keys = KeyBuilder(quote, None)
    expected = keys.digest(("005930",), {})
    assert keys.digest(("005930", 5), {}) == expected
    assert keys.digest((), {"code": "005930"}) == expected
    assert keys.digest(("005930",), {"days": 5, "adjusted": False}) == expected
    assert keys.digest(("005930", 6), {}) != expected
    assert keys.digest(("000660",), {}) != expected


def test_key_includes_the_function_so_namespaces_can_hold_several() -> None:
    def other(code: str, days: int = 5, *, adjusted: bool = False) -> None: ...

    assert KeyBuilder(quote, None).digest(("a",), {}) != KeyBuilder(other, None).digest(("a",), {})


def test_rich_arguments_make_keys_and_sets_are_order_free() -> None:
    def lookup(window: Window, codes: set[str], limit: Decimal, model: Quote) -> None: ...

    keys = KeyBuilder(lookup, None)
    model = quote("x")
    first = keys.digest((Window(dt.date(2024, 1, 1), 3), {"b", "a", "c"}, Decimal("2"), model), {})
    again = keys.digest((Window(dt.date(2024, 1, 1), 3), {"c", "a", "b"}, Decimal("2"), model), {})
    assert first == again
    assert len(first) == 32


def test_unusable_argument_is_a_type_error_naming_it() -> None:
    def load(code: str, session: object) -> None: ...

    with pytest.raises(TypeError, match=r"argument 'session' is a object.*key="):
        KeyBuilder(load, None).digest(("a", object()), {})


def test_key_callable_chooses_what_identifies_a_call() -> None:
    def load(session: object, code: str) -> None: ...

    keys = KeyBuilder(load, lambda session, code: code)
    assert keys.digest((object(), "a"), {}) == keys.digest((object(), "a"), {})
    bad = KeyBuilder(load, lambda session, code: session)
    with pytest.raises(TypeError, match="key= returned a object"):
        bad.digest((object(), "a"), {})


def test_values_round_trip_through_the_return_annotation() -> None:
    def window() -> Window: ...

    def amounts() -> dict[int, Decimal]: ...

    for function, value in (
        (quote, quote("005930")),
        (window, Window(dt.date(2024, 1, 1), 3)),
        (amounts, {1: Decimal("0.1"), 2: Decimal("3.25")}),
    ):
        codec = ValueCodec(function, "t")
        assert codec.decode(codec.encode(value)) == value


def test_without_annotation_values_come_back_as_plain_json() -> None:
    def plain():  # type: ignore[no-untyped-def]
        return None

    codec = ValueCodec(plain, "t")
    assert codec.decode(codec.encode({"price": Decimal("1.5"), "n": [1, 2]})) == {
        "price": "1.5",
        "n": [1, 2],
    }


def test_unserialisable_return_value_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match=r"returned a object that cannot be stored as JSON"):
        ValueCodec(quote, "tests.quote").encode(object())


def test_value_that_no_longer_fits_the_return_type_is_a_miss() -> None:
    codec = ValueCodec(quote, "t")
    with capture_logs() as logs:
        assert codec.decode(b'{"code": "a"}') is MISSING
        assert codec.decode(b"not json") is MISSING
    assert [entry["event"] for entry in logs] == [
        "cached value does not fit the return type, recomputing"
    ] * 2


def test_ttl_is_seconds_a_policy_or_the_namespace_policy() -> None:
    policies = dict(DEFAULT_TTL_POLICIES)
    assert resolve_ttl(12, "anything", policies) == 12
    assert resolve_ttl("signal", "anything", policies) == 600
    assert resolve_ttl(None, "stock_info", policies) == 3600
    with pytest.raises(ValueError, match="unknown TTL policy 'hourly'"):
        resolve_ttl("hourly", "x", policies)
    with pytest.raises(ValueError, match="needs ttl=seconds"):
        resolve_ttl(None, "quotes", policies)
    with pytest.raises(ValueError, match="positive"):
        resolve_ttl(0, "x", policies)


@pytest.mark.parametrize("name", ["", "_meta", "a:b", "a b", "x" * 65, "ünï"])
def test_namespace_names_that_would_break_keys_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid cache namespace"):
        check_name(name)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _gauge() -> float:
    return cache_circuit_open._value.get()  # type: ignore[attr-defined,no-any-return]


def test_breaker_opens_after_consecutive_failures_then_probes_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, open_s=10, clock=clock)
    error = ConnectionError("down")
    with capture_logs() as logs:
        breaker.record_failure(error)
        breaker.record_success()  # a success resets the count
        for _ in range(2):
            breaker.record_failure(error)
        assert breaker.allow()
        breaker.record_failure(error)
        assert breaker.state == "open"
        assert _gauge() == 1
        assert not breaker.allow()
        clock.now += 10
        assert breaker.allow()  # the one probe
        assert not breaker.allow()  # everyone else still bypasses
        breaker.record_failure(error)  # failed probe: open again
        assert breaker.state == "open"
        assert not breaker.allow()
        clock.now += 10
        assert breaker.allow()
        breaker.record_success()
        assert breaker.state == "closed"
        assert _gauge() == 0
        assert breaker.allow()
    events = [entry["event"] for entry in logs]
    assert events == [
        "cache circuit opened, calling functions directly",
        "cache circuit half-open, probing redis",
        "cache circuit opened, calling functions directly",
        "cache circuit half-open, probing redis",
        "cache circuit closed, redis is back",
    ]


def test_breaker_frees_a_probe_slot_whose_caller_never_reported() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, open_s=5, clock=clock)
    breaker.record_failure(OSError())
    clock.now += 5
    assert breaker.allow()
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()


def test_configure_refuses_clients_of_the_wrong_flavour() -> None:
    import redis
    import redis.asyncio

    from stackwatch.cache import configure

    with pytest.raises(TypeError, match="pass it as async_client="):
        configure(client=redis.asyncio.Redis())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"needs a redis\.asyncio\.Redis"):
        configure(async_client=redis.Redis())  # type: ignore[arg-type]


def test_a_client_without_a_short_socket_timeout_is_warned_about() -> None:
    import redis

    from stackwatch.cache import configure

    try:
        with capture_logs() as logs:
            configure(client=redis.Redis(socket_timeout=0.1))
            configure(client=redis.Redis(socket_timeout=None))
        warnings = [entry for entry in logs if "long socket timeout" in entry["event"]]
        assert len(warnings) == 1
        assert warnings[0]["socket_timeout"] is None
    finally:
        configure()
