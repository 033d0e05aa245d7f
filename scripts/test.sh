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

# The PACS tests start a real Orthanc with its DICOMweb plugin (Debian's packages).
if [ ! -x /usr/sbin/Orthanc ] || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends \
        orthanc orthanc-dicomweb
fi

# The browser sign-in test's OpenID Connect provider: Debian's Node.js and npm, and the
# packages pinned by tests/oidc/package-lock.json (npm ci again only when the lock changed).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends \
        nodejs npm
fi
if ! cmp -s tests/oidc/package-lock.json tests/oidc/node_modules/.installed-lock.json; then
    (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error \
        && cp package-lock.json node_modules/.installed-lock.json)
fi

.venv/bin/ruff check .
# Every server is installed above: a test that finds one missing fails here (tests/servers.py).
# Two workers: one pytest process keeps only about one of the two cores busy on average
# (TensorFlow start-ups, servers, browsers), so two halve the wall time (docs/performance.md).
COVID_TESTS_REQUIRE_SERVERS=1 .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
