"""How much the optimized service warms: one place for the app, the worker and the runner.

The app warms, before it reports ready, the details and charts of the
``WARM_TICKERS`` most popular tickers (``refresh_cache`` then keeps them warm).
The nightly batch on the worker computes the analyses of the ``WARM_ANALYSES``
most popular: every ticker's by default. ``STACKWATCH_DEMO_WARM_TICKERS`` and
``STACKWATCH_DEMO_WARM_ANALYSES`` override both (``stackwatch demo --quick`` warms
fewer). A light module: the runner reads it before anything heavy is imported.
"""

from __future__ import annotations

import os

import stackwatch

WARM_TICKERS = 500
# Every ticker: more than any --scale has (20 x 2,000).
EVERY_TICKER = 1_000_000
WARM_ANALYSES = EVERY_TICKER


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
