"""``stackwatch.setup()`` and ``stackwatch.shutdown()``: the one call that wires telemetry.

Idempotent: the first call reads the settings, configures logging and tracing and
registers ``shutdown`` at exit; later calls return the settings already in force.
Forked children (gunicorn, Celery prefork, multiprocessing) keep working: the SDK's
batch processor restarts its worker thread after a fork, and ``flush()`` is what a
child calls before it exits without running atexit hooks (Celery's prefork
children do: see stackwatch.celery).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import threading
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from stackwatch.logs import configure_logging
from stackwatch.settings import Settings, install_settings, load_settings
from stackwatch.traces import build_exporter, build_span_processor, build_tracer_provider

_log = logging.getLogger("stackwatch")
_lock = threading.RLock()
_settings: Settings | None = None
_provider: TracerProvider | None = None
_owns_provider = False
_fork_hook_registered = False


def setup(service_name: str | None = None, **overrides: Any) -> Settings:
    """Configure traces, logs and settings for this process; return the settings in force.

    Arguments override the environment (``STACKWATCH_*`` and ``OTEL_*`` variables); a
    bad value raises ``SettingsError``, which prints one line and exits at start-up.
    Calling it again is harmless and returns the first call's settings.
    """
    global _settings, _provider, _owns_provider
    with _lock:
        if _settings is not None:
            return _settings
        settings = load_settings(service_name=service_name, **overrides)
        configure_logging(settings)
        install_settings(settings)
        if not settings.sdk_disabled:
            _provider, _owns_provider = _install_tracer_provider(settings)
        _settings = settings
        atexit.register(shutdown)
        _register_fork_hook()
        _log.debug(
            "stackwatch configured",
            extra={
                "service": settings.effective_service_name(),
                "traces_exporter": settings.traces_exporter,
            },
        )
        return settings


def _install_tracer_provider(settings: Settings) -> tuple[TracerProvider, bool]:
    """Set our TracerProvider globally, or join an SDK provider someone already set."""
    existing = trace.get_tracer_provider()
    if isinstance(existing, TracerProvider):
        # The global provider can be set once per process. When the application (or a
        # test harness) got there first, add our exporter to theirs rather than
        # silently losing our spans.
        exporter = build_exporter(settings)
        if exporter is not None:
            existing.add_span_processor(build_span_processor(exporter, settings))
        _log.warning(
            "a TracerProvider was already set; stackwatch added its exporter to it "
            "(its resource and sampler stay as they were)"
        )
        return existing, False
    provider = build_tracer_provider(settings)
    trace.set_tracer_provider(provider)
    return provider, True


class _ForkHook:
    """A weak-referenceable anchor for multiprocessing's after-fork registry."""


_FORK_HOOK = _ForkHook()


def _register_fork_hook() -> None:
    global _fork_hook_registered
    if not _fork_hook_registered:
        multiprocessing.util.register_after_fork(_FORK_HOOK, _flush_when_child_exits)
        _fork_hook_registered = True


def _flush_when_child_exits(_: object) -> None:
    """In a forked multiprocessing child, flush at exit: such children skip atexit hooks.

    The batch processor restarts its own worker thread after a fork; what is left is
    to export the child's spans before it calls os._exit, which multiprocessing's
    finalizers (run just before that) allow. Plain ``os.fork`` children that exit
    through ``sys.exit`` (gunicorn workers) run the inherited atexit hook instead.
    """
    multiprocessing.util.Finalize(None, flush, exitpriority=100)


def flush(timeout_s: float | None = None) -> bool:
    """Export the spans still queued, waiting at most ``timeout_s`` (default: the OTLP timeout)."""
    provider = _provider
    if provider is None or _settings is None:
        return True
    timeout = timeout_s if timeout_s is not None else _settings.otlp_timeout_s
    return provider.force_flush(int(timeout * 1000))


def shutdown(timeout_s: float | None = None) -> None:
    """Flush and stop the exporters; bounded by ``timeout_s`` (default: the OTLP timeout).

    Registered at exit by ``setup()``. After it, ``setup()`` may be called again.
    """
    global _settings, _provider, _owns_provider
    with _lock:
        provider, settings, owns = _provider, _settings, _owns_provider
        _settings, _provider, _owns_provider = None, None, False
        install_settings(None)
    if provider is None or settings is None:
        return
    timeout = timeout_s if timeout_s is not None else settings.otlp_timeout_s
    started = time.monotonic()
    provider.force_flush(int(timeout * 1000))
    if owns:
        # TracerProvider.shutdown has no timeout of its own; run it on a daemon thread
        # so a black-holed collector cannot hold the process past the deadline.
        remaining = max(0.1, timeout - (time.monotonic() - started))
        worker = threading.Thread(target=provider.shutdown, name="stackwatch-shutdown", daemon=True)
        worker.start()
        worker.join(remaining)
        if worker.is_alive():
            _log.warning(
                "trace exporter did not shut down within %.1fs; spans may be lost", timeout
            )


def current_settings() -> Settings | None:
    """The settings ``setup()`` installed, or None before it ran."""
    return _settings
