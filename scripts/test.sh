#!/usr/bin/env bash
# Sets up a virtual environment, the test tools and Chromium, then lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv requirements-dev.txt

if [ ! -x /usr/bin/chromium ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends chromium
fi

.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
