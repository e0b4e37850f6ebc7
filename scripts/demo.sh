#!/usr/bin/env bash
# Install the project into a virtualenv and run the demo: index ../shared/data/photos, then identify
# edited copies and real diffusion edits. Usage: bash scripts/demo.sh   (venv: $ID2_VENV, default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ID2_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip install -q torch==2.13.0
pip install -q -e ".[all]"
exec python examples/demo.py "$@"
