"""dashboards/*.json: stable uids, datasource variables, gate thresholds, exemplars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stackwatch import dashboards, slo

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = {
    path.stem: json.loads(path.read_text()) for path in (ROOT / "dashboards").glob("*.json")
}


def _panel(uid: str, title: str) -> dict[str, Any]:
    return next(p for p in COMMITTED[uid]["panels"] if p["title"] == title)


def _threshold_values(panel: dict[str, Any]) -> list[float]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [step["value"] for step in steps if step["value"] is not None]


def test_one_dashboard_per_area_with_a_stable_uid() -> None:
    assert set(COMMITTED) == {slo.dashboard_uid(a) for a in ("api", "cache", "database", "celery")}
    for uid, document in COMMITTED.items():
        assert document["uid"] == uid
        assert document["schemaVersion"] == dashboards.SCHEMA_VERSION


@pytest.mark.parametrize("uid", sorted(COMMITTED))
def test_every_query_goes_through_the_datasource_variable(uid: str) -> None:
    document = COMMITTED[uid]
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["service"]["datasource"]["uid"] == "${datasource}"
    for panel in document["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'service=~"$service"' in target["expr"], (panel["title"], target["expr"])


@pytest.mark.parametrize(
    ("uid", "title", "thresholds"),
    [
        ("stackwatch-api", "Latency P50 / P95 / P99 by path", [0.5, 1.0]),
        ("stackwatch-api", "5xx ratio by path", [0.01]),
        ("stackwatch-cache", "Hit ratio by namespace", [0.8]),
        ("stackwatch-cache", "Redis memory", [500 * 1024 * 1024]),
        ("stackwatch-database", "Slow queries in the last 24 h", [10]),
        ("stackwatch-celery", "Failure ratio by task", [0.01]),
    ],
)
def test_threshold_lines_sit_at_the_gate_values(
    uid: str, title: str, thresholds: list[float]
) -> None:
    panel = _panel(uid, title)
    assert _threshold_values(panel) == thresholds
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"


def test_latency_panels_ask_for_exemplars() -> None:
    latency = _panel("stackwatch-api", "Latency P50 / P95 / P99 by path")
    assert [t["exemplar"] for t in latency["targets"]] == [False, True, True]
    database = _panel("stackwatch-database", "Query latency P95 / P99 by operation")
    assert all(t["exemplar"] for t in database["targets"])


def test_panels_do_not_overlap() -> None:
    for document in COMMITTED.values():
        cells: set[tuple[int, int]] = set()
        for panel in document["panels"]:
            grid = panel["gridPos"]
            area = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & area, panel["title"]
            assert grid["x"] + grid["w"] <= 24
            cells |= area
