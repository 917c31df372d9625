"""The shipped alert rules and dashboard use only metrics the engine actually exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

import engine.metrics
import engine.mqtt_listener
import engine.service
import receivers.metrics
from engine.background_task import restart_on_failure

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


# Series names a family adds to its own: counters' _total is kept (documented names carry it).
_SERIES_SUFFIXES = ("_created", "_bucket", "_sum", "_count")


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

    def test_documented_labels_are_the_metrics_labels(self) -> None:
        """The metrics table of docs/operations.md gives each metric with exactly its labels
        (`name{a,b}`, or the bare name for none), in the order the code declares them."""
        table = [
            line.split("|")[1]
            for line in (ROOT / "docs" / "operations.md").read_text().splitlines()
            if line.startswith("| `alarmrelay_")
        ]
        documented = {
            name: tuple(labels.split(",")) if labels else ()
            for cell in table
            for name, labels in re.findall(r"`(alarmrelay_[a-z0-9_]+)(?:\{([a-z_,]*)\})?`", cell)
        }
        actual = {}
        for name, collector in REGISTRY._names_to_collectors.items():
            if name.startswith("alarmrelay_") and not name.endswith(_SERIES_SUFFIXES):
                actual[name] = tuple(getattr(collector, "_labelnames", ()))
        assert documented == {n: actual[n] for n in documented}, documented


# -- what the alert expressions select ---------------------------------------------------------

_SELECTOR = re.compile(r"(alarmrelay_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")
_TARGET_LABELS = frozenset({"instance", "job"})  # added by Prometheus at scrape time


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((CONFIG / "prometheus-alerts.yaml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def label_names(series: str) -> set[str]:
    """The label names of the metric a series name (``…_total``, ``…_bucket``) belongs to."""
    collector = REGISTRY._names_to_collectors[series]  # the registry's own index
    names = set(getattr(collector, "_labelnames", ()))
    return names | ({"le"} if series.endswith("_bucket") else set())


def has_sample(series: str, label: str, value: str) -> bool:
    return any(
        sample.name == series and sample.labels.get(label) == value
        for metric in REGISTRY.collect()
        for sample in metric.samples
    )


def label_problems(rule: dict[str, Any]) -> list[str]:
    """Labels ``rule`` matches on, aggregates by or names in its text that its metrics lack."""
    name, expr = rule["alert"], rule["expr"]
    metrics = referenced(expr)
    labels = set().union(*(label_names(m) for m in metrics)) if metrics else set()
    problems = [
        f"{name}: {series} has no label {label}"
        for series, matchers in _SELECTOR.findall(expr)
        for label, _, _ in _MATCHER.findall(matchers)
        if label not in label_names(series)
    ]
    grouped = {g.strip() for by in _BY.findall(expr) for g in by.split(",") if g.strip()}
    problems += [
        f"{name}: by ({label}): no metric of it has that label"
        for label in grouped - labels - _TARGET_LABELS - {"le"}
    ]
    kept = grouped - {"le"} if grouped else labels | _TARGET_LABELS
    text = json.dumps(rule.get("annotations", {}))
    problems += [
        f"{name}: $labels.{label} is not in the alert's labels"
        for label in set(_TEMPLATE_LABEL.findall(text)) - kept
    ]
    return problems


def selected_values(expr: str) -> list[tuple[str, str, str]]:
    """(series, label, value) for each value an ``=`` or ``=~`` matcher of ``expr`` names."""
    return [
        (series, label, one)
        for series, matchers in _SELECTOR.findall(expr)
        for label, op, value in _MATCHER.findall(matchers)
        if op in ("=", "=~")
        for one in value.split("|")
    ]


class TestAlertExpressions:
    def test_labels_in_alerts_exist_on_their_metrics(self) -> None:
        """Every label an alert matches on, aggregates by or names in its text is one the
        metric has (a typo there matches nothing and the alert never fires)."""
        assert [p for rule in alert_rules() for p in label_problems(rule)] == []

    def test_counted_series_exist_before_their_first_event(self) -> None:
        """increase() and rate() see nothing of a series' first sample: a labelled counter
        whose series appears only with its first event (at 1) never fires an alert for a
        single event (the first DUH, the first incomplete voice session, the first refused
        signal). Every series an alert selects by label value is exported at 0 from the
        start, for each value the alert names (a receiver's, once it is configured:
        test_receiver_link_metric shows the engine exports them on loading its receivers)."""
        engine.metrics.export_receiver_counters("observability-test-receiver")
        missing = [
            f"{rule['alert']}: {series}{{{label}={value!r}}}"
            for rule in alert_rules()
            for series, label, value in selected_values(rule["expr"])
            if not has_sample(series, label, value)
        ]
        assert missing == []

    def test_timer_lag_series_exist_before_the_first_firing(self) -> None:
        """AlarmrelayTimerLag: the lag after an outage is observed in one burst at restart,
        which rate() would not see if the series appeared with it."""
        for timer in ("supervision", "crash_smash"):
            assert has_sample("alarmrelay_timer_lag_seconds_count", "timer", timer), timer

    async def test_a_background_task_failure_series_exists_before_it_fails(self) -> None:
        """AlarmrelayBackgroundTaskFailing fires on the first failure of a loop."""

        async def loop() -> None:
            return

        await restart_on_failure("observability-test-loop", loop)
        assert (
            REGISTRY.get_sample_value(
                "alarmrelay_background_task_failures_total", {"task": "observability-test-loop"}
            )
            == 0
        )

    def test_alerts_cover_signals_the_database_refused(self) -> None:
        """A signal whose data the database refuses is answered DUH (DC-09) or rejected (MQTT)
        and stored nowhere, its raw frame only in the log: an alarm lost unless someone
        recovers it, so an alert names it, for both transports."""
        exprs = " ".join(rule["expr"] for rule in alert_rules())
        assert 'alarmrelay_signals_received_total{result="refused"}' in exprs
        assert 'alarmrelay_mqtt_messages_total{result="refused"}' in exprs

    def test_an_alert_covers_alarms_not_forwarded_for_a_misconfiguration(self) -> None:
        """An event that should go to the station but whose account lacks its station account
        number or primary receiver is recorded as not forwarded (docs/forwarding.md): the
        station never hears of it, so an alert names it."""
        selected = {
            (series, label, value)
            for rule in alert_rules()
            for series, label, value in selected_values(rule["expr"])
        }
        for reason in ("no_station_account", "no_receiver"):
            assert ("alarmrelay_decisions_total", "reason", reason) in selected, reason
        assert ("alarmrelay_decisions_total", "forward", "false") in selected

    def test_an_alert_covers_stalled_signal_maintenance(self) -> None:
        """Partition changes put off or failing run after run (docs/operations.md, Data):
        partitions are not created ahead nor dropped past retention, and an alert says so."""
        exprs = " ".join(rule["expr"] for rule in alert_rules())
        assert "alarmrelay_signal_maintenance_deferred_total" in exprs
        assert "alarmrelay_signal_maintenance_failures_total" in exprs

    def test_an_alert_covers_the_mqtt_connection(self) -> None:
        """With the broker out of reach no MQTT module's signal arrives: an alert says so."""
        assert any(
            rule["expr"].startswith("alarmrelay_mqtt_connected == 0") and "for" in rule
            for rule in alert_rules()
        )


_WINDOW = re.compile(r"\[([^\]]+)\]")
_QUANTILE = re.compile(r"histogram_quantile\(\s*0?\.(\d+)")


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads((CONFIG / "grafana-dashboard.json").read_text())[
        "panels"
    ]
    return panels


def _seconds(window: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(window[:-1]) * units[window[-1]]


class TestDashboard:
    def test_an_alert_covers_log_lines_dropped(self) -> None:
        """Log lines dropped because stdout's reader fell behind (or is gone) leave holes in
        the record of what happened to alarms: an alert says so, by reason."""
        rules = [r for r in alert_rules() if "alarmrelay_log_lines_dropped_total" in r["expr"]]
        assert rules
        assert all("reason" in r["expr"] for r in rules)

    def test_rate_windows_hold_several_scrapes(self) -> None:
        """A rate over [1m] is empty at Prometheus's default 1 m scrape interval (it needs two
        samples in the window): every panel's window is Grafana's $__rate_interval or at
        least 5 m."""
        short = [
            f"{panel['title']}: [{window}]"
            for panel in dashboard_panels()
            for target in panel.get("targets", [])
            for window in _WINDOW.findall(target["expr"])
            if window != "$__rate_interval" and _seconds(window) < 300
        ]
        assert short == []

    def test_quantiles_in_a_title_are_plotted(self) -> None:
        """A panel titled "p50 / p99" plots both quantiles."""
        missing = []
        for panel in dashboard_panels():
            named = set(re.findall(r"\bp(\d+)\b", panel["title"]))
            plotted = {
                q.rstrip("0") or "0"
                for target in panel.get("targets", [])
                for q in _QUANTILE.findall(target["expr"])
            }
            missing += [f"{panel['title']}: p{q}" for q in named if q.rstrip("0") not in plotted]
        assert missing == []


class TestScrapeJob:
    def test_the_scrape_job_the_alerts_expect_is_documented(self) -> None:
        """AlarmrelayDown selects up{job="…"}: with the scrape job named otherwise it matches
        nothing and never fires, so docs/operations.md shows the job to configure."""
        jobs = {job for rule in alert_rules() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
        assert jobs
        operations = (ROOT / "docs" / "operations.md").read_text()
        for job in jobs:
            assert f"job_name: {job}" in operations, job

    def test_an_engine_gone_from_discovery_is_alerted(self) -> None:
        """up == 0 needs the target to exist: when every engine has vanished from service
        discovery (a deleted deployment) there is no up series at all, and absent() says so."""
        exprs = " ".join(rule["expr"] for rule in alert_rules())
        assert 'absent(up{job="alarmrelay"})' in exprs
