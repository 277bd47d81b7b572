#!/usr/bin/env bash
# Installs the Debian ClickHouse server (18.16) that the real-server tests start as a child
# process. Idempotent: when the binaries are present it does nothing, so `make test` stays fast.
set -euo pipefail

SERVER=/usr/sbin/clickhouse-server
CLIENT=/usr/bin/clickhouse-client

if [ -x "$SERVER" ] && [ -x "$CLIENT" ]; then
    echo "clickhouse-server already installed ($SERVER)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_clickhouse.sh: $SERVER is missing and installing it needs root." >&2
    echo "Run: sudo $0   (or: sudo apt-get install -y clickhouse-server clickhouse-client)" >&2
    exit 1
fi

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y clickhouse-server clickhouse-client

if [ ! -x "$SERVER" ]; then
    echo "install_clickhouse.sh: apt-get finished but $SERVER is still missing." >&2
    exit 1
fi
echo "clickhouse-server installed ($SERVER)"
