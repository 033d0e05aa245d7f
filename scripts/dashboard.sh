#!/usr/bin/env bash
# Sets up a virtual environment and starts the dashboard on the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv requirements.txt
exec .venv/bin/streamlit run streamlit_app.py "$@"
