"""The shipped alert rules and dashboard use only metrics the engine actually exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import engine.metrics
import engine.mqtt_listener
import engine.service
import receivers.metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
# Importing registers them (the service imports every stage and timer that defines metrics).
_MODULES = (engine.metrics, engine.mqtt_listener, engine.service, receivers.metrics)


def exported() -> set[str]:
    names = set()
    for metric in REGISTRY.collect():
        # Labelled families have no samples until used: derive the series names from the type.
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",),
        }
        for suffix in suffixes.get(metric.type, ("",)):
            names.add(metric.name + suffix)
    return {n for n in names if n.startswith("alarmrelay_")}


def referenced(text: str) -> set[str]:
    return set(re.findall(r"alarmrelay_[a-z0-9_]+", text))


class TestObservabilityConfig:
    def test_alert_rules_use_exported_metrics(self) -> None:
        """Every alarmrelay_* name in the alert rules is an exported metric."""
        names = referenced((CONFIG / "prometheus-alerts.yaml").read_text())
        assert names
        assert names <= exported(), names - exported()

    def test_dashboard_uses_exported_metrics(self) -> None:
        """Every alarmrelay_* name in the Grafana dashboard is an exported metric."""
        dashboard = json.loads((CONFIG / "grafana-dashboard.json").read_text())
        names = referenced(json.dumps(dashboard))
        assert len(names) >= 10
        assert names <= exported(), names - exported()

    def test_every_metric_is_documented(self) -> None:
        """docs/operations.md names every exported alarmrelay_* metric, and no other."""
        documented = referenced((ROOT / "docs" / "operations.md").read_text())
        names = {n for n in exported() if not n.endswith(("_bucket", "_sum", "_count"))}
        names |= {n[: -len("_bucket")] for n in exported() if n.endswith("_bucket")}
        assert names <= documented, names - documented
        assert documented <= names, documented - names
