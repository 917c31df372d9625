"""Prometheus metrics of the engine, all named ``alarmrelay_*``.

Labels are bounded sets (transport, family, result, reason, receiver name); never an account or a
serial (cardinality). Modules import the metric they update from here.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: the per-signal paths call this, and
    prometheus_client's ``labels()`` costs about 2 µs a call."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


SIGNALS_RECEIVED = Counter(
    "alarmrelay_signals_received_total",
    "Signals received from modules, by transport, payload family and result.",
    ["transport", "family", "result"],
)
FRAMES_REJECTED = Counter(
    "alarmrelay_dc09_frames_rejected_total",
    "DC-09 frames not accepted, by the reply sent (none, nak, duh).",
    ["transport", "reply"],
)
ACK_LATENCY = Histogram(
    "alarmrelay_ack_latency_seconds",
    "Time from receiving a signal to acknowledging it (after the commit).",
    ["transport"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
COMMIT_BATCH_SIZE = Histogram(
    "alarmrelay_commit_batch_size",
    "Signals committed per group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
COMMIT_DURATION = Histogram(
    "alarmrelay_commit_duration_seconds",
    "Duration of one group-commit transaction.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
COMMIT_FAILURES = Counter(
    "alarmrelay_commit_failures_total",
    "Group commits that failed (signals not acknowledged; modules retry).",
)
MAINTENANCE_DEFERRED = Counter(
    "alarmrelay_signal_maintenance_deferred_total",
    "Partition changes put off to the next maintenance run because a long transaction held "
    "the signals table (waiting would have stalled every group commit behind the change).",
    ["step"],
)
MAINTENANCE_FAILURES = Counter(
    "alarmrelay_signal_maintenance_failures_total",
    "Maintenance runs (partitions, retention, dedupe cleanup) the database failed; retried at "
    "the next interval.",
)
COMMIT_ISOLATIONS = Counter(
    "alarmrelay_commit_isolations_total",
    "Failed group commits split in halves and committed apart, so a signal whose own data fails "
    "the statement fails alone.",
)
INGEST_ACCOUNT_LOCKED = Counter(
    "alarmrelay_ingest_account_locked_total",
    "Signals not committed (no ACK; the module resends) because a row of their account was held "
    "by another transaction: set aside from the group commits and tried apart for 5 s, in vain.",
)
INGEST_ACCOUNTS_HELD = Gauge(
    "alarmrelay_ingest_accounts_held",
    "Accounts whose signals are committed apart from the group commits because a row of theirs "
    "was found held by another transaction (until one of their commits succeeds or, with "
    "nothing waiting, their rows are found free).",
)
SIGNALS_SHED = Counter(
    "alarmrelay_signals_shed_total",
    "Signals not accepted because of load or an unavailable database (no ACK sent).",
    ["transport", "reason"],
)
PENDING_COMMITS = Gauge(
    "alarmrelay_pending_commits",
    "Signals waiting for the group-commit writer.",
)
ACTIVE_CONNECTIONS = Gauge(
    "alarmrelay_active_connections",
    "Open DC-09 TCP connections from modules.",
)
CONNECTIONS_REFUSED = Counter(
    "alarmrelay_connections_refused_total",
    "DC-09 TCP connections closed at once because the maximum was reached.",
)
CONNECTIONS_CLOSED = Counter(
    "alarmrelay_connections_closed_total",
    "DC-09 TCP connections closed by the engine, by reason.",
    ["reason"],
)
READ_PAUSES = Counter(
    "alarmrelay_read_pauses_total",
    "Times a DC-09 connection stopped reading because the write path was saturated.",
)
DB_POOL_SIZE = Gauge("alarmrelay_db_pool_connections", "Connections in the database pool.")
DB_POOL_IDLE = Gauge("alarmrelay_db_pool_idle_connections", "Idle connections in the pool.")
DATABASE_UP = Gauge(
    "alarmrelay_database_up",
    "1 while signals can be committed; 0 while the database does not answer (checked every 5 s), "
    "or after a group commit failed because it is unreachable (until it answers again) or "
    "refuses writes (until a commit succeeds).",
)
ACCOUNTS_LOADED = Gauge("alarmrelay_accounts_loaded", "Accounts in the in-memory directory.")
ACCOUNTS_INVALID = Gauge(
    "alarmrelay_accounts_invalid",
    "Accounts whose row cannot be read: left out of the directory (unknown) until fixed.",
)
RETENTION_DELETED = Counter(
    "alarmrelay_retention_rows_deleted_total",
    "Rows deleted because their signal is past retention (decisions, finished deliveries).",
    ["table"],
)
LOG_LINES_DROPPED = Counter(
    "alarmrelay_log_lines_dropped_total",
    "Log lines not written, by reason: queue_full (stdout's reader fell behind; the engine does "
    "not wait for it), unwritable (the reader is gone, the stream closed or the disk full).",
    ["reason"],
)

# -- forwarding and delivery ---------------------------------------------------------------------
DECISIONS = Counter(
    "alarmrelay_decisions_total",
    "Forwarding decisions per event, by outcome and reason.",
    ["forward", "reason"],
)
DELIVERIES = Counter(
    "alarmrelay_deliveries_total",
    "Delivery attempts to station receivers, by receiver and outcome (acked, duh, failed, "
    "no_receiver: neither receiver of the pair is configured).",
    ["receiver", "outcome"],
)
DEAD_LETTERED = Counter(
    "alarmrelay_deliveries_dead_lettered_total",
    "Deliveries given up (the receiver answered DUH).",
    ["receiver"],
)
DELIVERY_LATENCY = Histogram(
    "alarmrelay_delivery_latency_seconds",
    "From receiving a signal to the station receiver's ACK.",
    buckets=(
        0.002,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
        60.0,
        300.0,
    ),
)
DELIVERIES_UNREADABLE = Counter(
    "alarmrelay_deliveries_unreadable_total",
    "Claimed deliveries this engine could not read (e.g. an event written by another version): "
    "each recorded as a failed attempt and retried with backoff, its lane waiting behind it.",
)
DELIVERY_DATABASE_TIMEOUTS = Counter(
    "alarmrelay_delivery_database_timeouts_total",
    "Tries of the delivery dispatcher's database work not over in time (no answer: a half-open "
    "connection, a stalled server), failed and retried or given up like a database error, by "
    "work (claim, lease_renewal, hand_back, failure_record, stop_hand_back).",
    ["work"],
)
BACKGROUND_TASK_FAILURES = Counter(
    "alarmrelay_background_task_failures_total",
    "Unexpected errors that ended a background loop (restarted after a pause), by task.",
    ["task"],
)
OUTBOX_DEPTH = Gauge("alarmrelay_outbox_depth", "Deliveries waiting in the outbox.")
OUTBOX_OLDEST_AGE = Gauge(
    "alarmrelay_outbox_oldest_age_seconds", "Age of the oldest delivery waiting in the outbox."
)
DELIVERIES_IN_FLIGHT = Gauge("alarmrelay_deliveries_in_flight", "Deliveries being sent right now.")
VOICE_SESSIONS = Counter(
    "alarmrelay_voice_sessions_total",
    "Two-way-voice sessions after fire/CO alarms, by result: started, incomplete (listen-in or "
    "command failed), receiver_unsupported / receiver_unknown (not started: the receiver that "
    "acknowledged the alarm has no two-way voice, or is gone).",
    ["result"],
)
VOICE_COMMANDS = Counter(
    "alarmrelay_voice_commands_total",
    "Attempts to publish a module's start_voice_session command, by result (sent, failed).",
    ["result"],
)


# The series the alert rules select by label value exist from the start, at 0: increase() and
# rate() see nothing of a series' first sample, so one that appeared with its first event (at 1)
# would never alert on it (the first refused signal, the first incomplete voice session).
for _transport in ("tcp", "udp"):
    for _reply in ("none", "nak", "duh"):
        FRAMES_REJECTED.labels(_transport, _reply)
    for _family in ("sia", "cid", "null"):
        SIGNALS_RECEIVED.labels(_transport, _family, "refused")
for _reason in ("no_station_account", "no_receiver"):
    DECISIONS.labels("false", _reason)
for _step in ("create_partitions", "drop_partitions"):
    MAINTENANCE_DEFERRED.labels(_step)
for _result in (
    "started",
    "incomplete",
    "receiver_unsupported",
    "receiver_unknown",
    "command_impossible",
    "too_late",
):
    VOICE_SESSIONS.labels(_result)
for _result in ("sent", "failed"):
    VOICE_COMMANDS.labels(_result)
for _reason in ("queue_full", "unwritable"):
    LOG_LINES_DROPPED.labels(_reason)


def export_receiver_counters(name: str) -> None:
    """A configured receiver's counters the alerts select, at 0 before their first event
    (``increase()`` does not count a series' first sample): its dead letters
    (AlarmrelayDeadLetters) and the frames it refused (AlarmrelayReceiverRefusing)."""
    DEAD_LETTERED.labels(name)
    child(DELIVERIES, name, "duh")
