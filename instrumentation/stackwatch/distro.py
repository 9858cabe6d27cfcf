"""OpenTelemetry distro and configurator: ``opentelemetry-instrument`` gets stackwatch's setup.

With stackwatch installed, ``opentelemetry-instrument uvicorn app:app`` loads
``StackwatchDistro`` (entry point ``opentelemetry_distro``) and
``StackwatchConfigurator`` (entry point ``opentelemetry_configurator``); the
configurator calls the same ``stackwatch.setup()`` an application would, so both
ways of starting give one configuration. When other distros or configurators are
installed, choose ours with ``OTEL_PYTHON_DISTRO=stackwatch`` and
``OTEL_PYTHON_CONFIGURATOR=stackwatch``.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._configuration import _BaseConfigurator

# Contrib instrumentations that stackwatch replaces with its own: loading both would
# give two server spans per request. Users can still override the variable.
REPLACED_INSTRUMENTATIONS: tuple[str, ...] = ("fastapi",)


class StackwatchDistro(BaseDistro):
    """Sets stackwatch's defaults before the instrumentors are loaded."""

    def _configure(self, **kwargs: Any) -> None:
        os.environ.setdefault("OTEL_TRACES_EXPORTER", "otlp")
        # Metrics are served by prometheus-client on /metrics and logs go to stdout as
        # JSON; the SDK's own OTLP metric and log pipelines stay off unless asked for.
        os.environ.setdefault("OTEL_METRICS_EXPORTER", "none")
        os.environ.setdefault("OTEL_LOGS_EXPORTER", "none")
        if REPLACED_INSTRUMENTATIONS:
            os.environ.setdefault(
                "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", ",".join(REPLACED_INSTRUMENTATIONS)
            )


class StackwatchConfigurator(_BaseConfigurator):
    """Runs ``stackwatch.setup()`` when ``opentelemetry-instrument`` starts the program."""

    def _configure(self, **kwargs: Any) -> None:
        from stackwatch.core import setup

        setup()
