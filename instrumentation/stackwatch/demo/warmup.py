"""How much the optimized service warms: one place for the app, the worker and the runner.

The app warms, before it reports ready, the details and charts of the
``WARM_TICKERS`` most popular tickers (``refresh_cache`` then keeps them warm).
The nightly batch on the worker computes the analyses of the ``WARM_ANALYSES``
most popular; the rest of the Zipf tail is computed on demand and cached for an
hour. ``STACKWATCH_DEMO_WARM_TICKERS`` and
``STACKWATCH_DEMO_WARM_ANALYSES`` override both (``stackwatch demo --quick`` warms
fewer). A light module: the runner reads it before anything heavy is imported.
"""

from __future__ import annotations

import os

import stackwatch

WARM_TICKERS = 500
# Half of the default 2,000 tickers: the other half gets about 3.6 % of the analysis
# requests (Zipf, s = 1.2), whose misses (50-90 ms of CPU each) are the endpoint's
# P99, about 80 ms under the default load. All 2,000 took 68 s of the run instead
# of 30 for a P99 of 10 ms instead of 80 (measured: docs/demo.md).
WARM_ANALYSES = 1_000


def warm_sizes() -> tuple[int, int]:
    """(tickers, analyses) to warm: the variables above when set, else the defaults."""
    sizes = []
    for variable, default in (
        ("STACKWATCH_DEMO_WARM_TICKERS", WARM_TICKERS),
        ("STACKWATCH_DEMO_WARM_ANALYSES", WARM_ANALYSES),
    ):
        value = os.environ.get(variable, str(default))
        if not value.isdigit():
            raise stackwatch.SettingsError(
                f"invalid {variable}={value[:20]!r}: expected a whole number"
            )
        sizes.append(int(value))
    return sizes[0], sizes[1]
