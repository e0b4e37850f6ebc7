#!/usr/bin/env bash
# Install the project into a virtualenv and run the demo: index ../shared/data/photos, then identify
# edited copies and real diffusion edits. Usage: bash scripts/demo.sh   (venv: $ID2_VENV, default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_install.sh
. scripts/_install.sh all
exec python examples/demo.py "$@"
