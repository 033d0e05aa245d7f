#!/usr/bin/env bash
# Sets up a virtual environment and starts the dashboard on the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv requirements.txt
# TensorFlow's C++ INFO and WARNING lines (the CPU features it was not built for, oneDNN's
# notice) are for its developers; errors still reach the console.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec .venv/bin/streamlit run streamlit_app.py "$@"
