#!/usr/bin/env bash
# Installs Debian's Chromium, the browser the dashboard's end-to-end test drives with Playwright
# (tests/e2e/test_dashboard_browser.py launches /usr/bin/chromium; Playwright never downloads one).
# Idempotent: when the binary is present it does nothing, so `make test` stays fast.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "chromium already installed ($("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM"))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_chromium.sh: $CHROMIUM is missing and installing it needs root." >&2
    echo "Run: sudo $0   (or: sudo apt-get install -y chromium)" >&2
    exit 1
fi

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "install_chromium.sh: apt-get finished but $CHROMIUM is still missing." >&2
    exit 1
fi
echo "chromium installed ($("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM"))"
