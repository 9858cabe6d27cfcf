"""ResourceAwareAutoscaler: its decisions under simulated CPU / memory readings, and a real
``celery worker --autoscale=3,1`` whose readings the test controls through Redis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from stackwatch.celery import ResourceAwareAutoscaler, ResourceLoad, decide_pool_size
from tests.support.celery_app import REDIS_URL, make_app
from tests.support.celery_worker import (
    BROKERS,
    delete_broker_state,
    new_prefix,
    start_worker,
    wait_for,
)

CALM = ResourceLoad(cpu_percent=20.0, memory_percent=40.0)
HOT_CPU = ResourceLoad(cpu_percent=95.0, memory_percent=40.0)
FULL_MEMORY = ResourceLoad(cpu_percent=20.0, memory_percent=92.0)


@pytest.mark.parametrize(
    ("processes", "wanted", "load", "target", "reason"),
    [
        (2, 5, CALM, 3, "backlog"),
        (4, 9, CALM, 4, "backlog"),  # never above the maximum
        (3, 5, HOT_CPU, 2, "cpu 95% >= 80%"),
        (3, 5, FULL_MEMORY, 2, "memory 92% >= 85%"),
        (1, 5, HOT_CPU, 1, "cpu 95% >= 80%"),  # never below the minimum
        (0, 0, HOT_CPU, 1, "below minimum"),
        (4, 1, CALM, 1, "idle"),
        (2, 2, CALM, 2, "steady"),
    ],
)
def test_pool_size_decisions_follow_backlog_and_resource_pressure(
    processes: int, wanted: int, load: ResourceLoad, target: int, reason: str
) -> None:
    decision = decide_pool_size(
        processes=processes,
        wanted=wanted,
        minimum=1,
        maximum=4,
        load=load,
        cpu_high=80.0,
        memory_high=85.0,
    )
    assert (decision.target, decision.reason) == (target, reason)


class CountingPool:
    """The part of Celery's pool an autoscaler drives: a process count that grows and shrinks."""

    def __init__(self, processes: int) -> None:
        self.num_processes = processes

    def grow(self, n: int) -> None:
        self.num_processes += n

    def shrink(self, n: int) -> None:
        self.num_processes -= n

    def maintain_pool(self) -> None:
        """Nothing to maintain: there are no real processes."""


def test_autoscaler_grows_step_by_step_and_shrinks_under_pressure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backlog = [6]
    monkeypatch.setattr(ResourceAwareAutoscaler, "qty", property(lambda self: backlog[0]))
    load = [CALM]
    now = [100.0]
    pool = CountingPool(1)
    scaler = ResourceAwareAutoscaler(pool, 4, 1, load_reader=lambda: load[0], clock=lambda: now[0])

    sizes = []
    for _ in range(5):
        scaler.maybe_scale()
        sizes.append(pool.num_processes)
        now[0] += scaler.cooldown_s
    assert sizes == [2, 3, 4, 4, 4]

    load[0] = HOT_CPU
    scaler.maybe_scale()
    scaler.maybe_scale()  # within the cooldown: one busy reading does not collapse the pool
    assert pool.num_processes == 3
    for _ in range(4):
        now[0] += scaler.cooldown_s
        scaler.maybe_scale()
    assert pool.num_processes == 1
    assert scaler.last_decision is not None
    assert scaler.last_decision.reason.startswith("cpu")

    load[0] = FULL_MEMORY
    now[0] += scaler.cooldown_s
    scaler.maybe_scale()
    assert pool.num_processes == 1, "no growth while memory is over its threshold"


@pytest.mark.integration
def test_real_worker_autoscales_with_backlog_and_sheds_processes_under_cpu_pressure(
    tmp_path: Path,
) -> None:
    prefix = new_prefix()
    app = make_app(BROKERS["redis"], prefix, instrument=False)
    store = redis.Redis.from_url(REDIS_URL)
    load_key = f"{prefix}:load"
    store.set(load_key, "10,10")
    worker = start_worker(
        broker="redis",
        prefix=prefix,
        log_dir=tmp_path,
        extra_args=("--autoscale=3,1",),
        env={
            "SWTEST_CELERY_AUTOSCALER": "tests.support.celery_app:SimulatedLoadAutoscaler",
            "AUTOSCALE_KEEPALIVE": "0.5",
        },
    )

    def decisions() -> list[dict[str, Any]]:
        return [line for line in worker.log_lines() if line.get("event") == "autoscale"]

    try:
        ok = app.tasks["swtest.ok"]
        results = [ok.delay(1.5) for _ in range(6)]
        wait_for(
            lambda: [d for d in decisions() if (d["target"], d["reason"]) == (3, "backlog")],
            20,
            "the pool to grow to its maximum of 3 with the backlog",
        )
        assert (2, "backlog") in [(d["target"], d["reason"]) for d in decisions()]

        store.set(load_key, "95,10")
        pressure_started = len(decisions())
        assert len({result.get(timeout=30) for result in results}) == 3
        wait_for(
            lambda: [
                d
                for d in decisions()[pressure_started:]
                if d["target"] == 1 and d["reason"].startswith("cpu")
            ],
            20,
            "the pool to shed processes down to its minimum under CPU pressure",
        )
        pids = {result.get(timeout=30) for result in [ok.delay(0.3) for _ in range(4)]}
        assert len(pids) == 1, "no growth while the CPU is over its threshold"
        assert not any(d["reason"] == "backlog" for d in decisions()[pressure_started:])
    finally:
        worker.stop()
        store.delete(load_key)
        store.close()
        delete_broker_state("redis", prefix)
