#!/usr/bin/env bash
# Browser-test setup for the labelling app (tests/test_label_browser.py): Debian's chromium and the playwright
# python package. No browser download: playwright drives /usr/bin/chromium (executable_path).
#   usage: scripts/setup_browser.sh [VENV]        (default .venv)
set -euo pipefail
VENV=${1:-.venv}
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
"$VENV/bin/pip" install -q "playwright>=1.40,<2" "schemathesis>=4,<5"
/usr/bin/chromium --version
"$VENV/bin/python" -c "import playwright, schemathesis; print('playwright + schemathesis ok')"
