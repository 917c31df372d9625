"""The process's open-file limit against the DC-09 connections it is configured to take.

Each module connection is a file descriptor. With ``dc09.max_connections`` above the soft
``RLIMIT_NOFILE`` (1,024 on many systems) the kernel's accept queue fills once descriptors run out:
new modules, the database pool and the HTTP port all fail, with nothing said. At start the soft
limit is raised toward what the connections need (up to the hard limit, which needs no
privilege); if the hard limit is lower, the connection limit is lowered to fit, with a warning.
"""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger("engine.open_files")

# Descriptors besides the modules': the pool, listeners, HTTP clients, MQTT, station receivers.
HEADROOM = 256


def fit_max_connections(max_connections: int) -> int:
    """Raise the soft open-file limit for ``max_connections`` modules; the limit that fits."""
    wanted = max_connections + HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError) as exc:
                log.warning("open_files_limit_not_raised", error=str(exc), soft=soft, hard=hard)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return max_connections
    fitted = max(1, soft - HEADROOM)
    log.warning(
        "dc09_max_connections_lowered",
        configured=max_connections,
        used=fitted,
        open_files_limit=soft,
        hint="raise the open-file limit (LimitNOFILE= in systemd, ulimit -n) or dc09.max_connections",
    )
    return fitted
