#!/usr/bin/env bash
# Sets up a virtual environment and starts the dashboard on the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
exec .venv/bin/streamlit run streamlit_app.py "$@"
