"""Alertmanager's configuration: routing by severity, grouping, inhibitions, receivers.

Alertmanager does not expand environment variables in its configuration, and the
Alertmanager in Debian stable (0.25) has no ``url_file`` for webhooks. So the
receivers' URLs are filled in by a render step: ``stackwatch alertmanager-config``
reads ``STACKWATCH_ALERT_*`` variables and writes the file Alertmanager loads (the
compose stack runs it as a one-shot service before Alertmanager starts). The
committed ``alerts/alertmanager.yml`` is the same configuration rendered with the
placeholder URLs, checked by ``amtool check-config`` in CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from stackwatch import rules, slo

#: A discard-port URL: notifications fail visibly (alertmanager_notifications_failed_total)
#: until a real receiver is configured, and never reach anyone by accident.
UNSET_PAGER_URL = "http://127.0.0.1:9/stackwatch-alert-pager-url-unset"
UNSET_CHAT_URL = "http://127.0.0.1:9/stackwatch-alert-chat-url-unset"
DEFAULT_TEMPLATES = "templates/*.tmpl"
GROUP_BY = ("alertname", "service", "path")


class ConfigError(ValueError):
    """A receiver setting that Alertmanager would reject or that would leak alerts."""


@dataclass(frozen=True)
class Receivers:
    """Where notifications go. Critical pages; warnings go to chat and, if set, e-mail."""

    pager_url: str = UNSET_PAGER_URL
    chat_url: str = UNSET_CHAT_URL
    email_to: str | None = None
    smtp_smarthost: str | None = None
    smtp_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("pager_url", "chat_url"):
            value = getattr(self, name)
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{name} must be an http(s) URL, got {value[:80]!r}")
        if self.email_to and not (self.smtp_smarthost and self.smtp_from):
            raise ConfigError("e-mail alerts need a smarthost (host:port) and a from address")


@dataclass(frozen=True)
class Timing:
    """How long Alertmanager waits before notifying, between updates, and before repeating."""

    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"


#: For the end-to-end test: notify within seconds of firing and of resolving.
FAST = Timing(group_wait="1s", group_interval="2s", repeat_interval="1h")


def _routes() -> list[dict[str, Any]]:
    return [
        {"receiver": "pager", "matchers": ['severity="critical"'], "continue": True},
        {"receiver": "chat", "matchers": ['severity=~"critical|warning"']},
    ]


def _inhibitions() -> list[dict[str, Any]]:
    p95, p99, down = (
        slo.gate_by_key(key).alert for key in ("api_latency_p95", "api_latency_p99", "target_down")
    )
    return [
        {
            # The P99 page already says the path is slow; its P95 warning adds nothing.
            "source_matchers": [f'alertname="{p99}"'],
            "target_matchers": [f'alertname="{p95}"'],
            "equal": ["service", "path"],
        },
        {
            # A service that cannot be scraped has no trustworthy ratios or latencies.
            "source_matchers": [f'alertname="{down}"'],
            "target_matchers": [f'alertname!="{down}"'],
            "equal": ["service"],
        },
        {
            "source_matchers": [f'alertname="{rules.BURN_RATE_ALERT}"', 'severity="critical"'],
            "target_matchers": [f'alertname="{rules.BURN_RATE_ALERT}"', 'severity="warning"'],
            "equal": ["service", "slo"],
        },
    ]


def _receivers(receivers: Receivers) -> list[dict[str, Any]]:
    chat: dict[str, Any] = {
        "name": "chat",
        "slack_configs": [
            {
                "api_url": receivers.chat_url,
                "send_resolved": True,
                "title": '{{ template "stackwatch.title" . }}',
                "text": '{{ template "stackwatch.text" . }}',
            }
        ],
    }
    if receivers.email_to:
        chat["email_configs"] = [
            {
                "to": receivers.email_to,
                "send_resolved": True,
                "headers": {"Subject": '{{ template "stackwatch.title" . }}'},
                "text": '{{ template "stackwatch.text" . }}',
            }
        ]
    pager = {
        "name": "pager",
        "webhook_configs": [{"url": receivers.pager_url, "send_resolved": True}],
    }
    return [pager, chat]


def config(
    receivers: Receivers | None = None,
    timing: Timing | None = None,
    templates: str = DEFAULT_TEMPLATES,
) -> dict[str, Any]:
    """The Alertmanager configuration as a mapping (``render`` writes it as YAML)."""
    receivers = receivers or Receivers()
    timing = timing or Timing()
    document: dict[str, Any] = {}
    if receivers.email_to:
        document["global"] = {
            "smtp_smarthost": receivers.smtp_smarthost,
            "smtp_from": receivers.smtp_from,
        }
    document["templates"] = [templates]
    document["route"] = {
        "receiver": "chat",
        "group_by": list(GROUP_BY),
        "group_wait": timing.group_wait,
        "group_interval": timing.group_interval,
        "repeat_interval": timing.repeat_interval,
        "routes": _routes(),
    }
    document["inhibit_rules"] = _inhibitions()
    document["receivers"] = _receivers(receivers)
    return document
