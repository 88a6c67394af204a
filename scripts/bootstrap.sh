#!/usr/bin/env bash
# Create the project's virtual environments from scratch or bring them up to date.
#   .venv    Python 3.11: all five packages (editable) with the LArCV1 extra, every engine (onnx, torch, OpenCV),
#            and the dev tools.
#   .venv39  Python 3.9 (when one is installed): ssnet_common, ssnet_data and ssnet_worker only, which must run on the
#            Python of the Caffe image, with the onnx engine's last cp39 releases (onnxruntime 1.19.2, onnx
#            1.19.1); the test command runs their unit tests there too.
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {  # find_python 3.11 -> path of a python3.11 interpreter, or nothing
  local v=$1 p
  for p in "python$v" "$(pyenv root 2>/dev/null)/versions/$v"*/bin/"python$v" /usr/bin/"python$v"; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys' >/dev/null 2>&1; then command -v "$p"; return; fi
  done
}

PY311=${SSNET_PYTHON:-$(find_python 3.11)}
if [ -z "$PY311" ]; then echo "bootstrap: Python 3.11 is needed (set SSNET_PYTHON to one)" >&2; exit 1; fi
pip_quiet=(--quiet --disable-pip-version-check)

if [ ! -x .venv/bin/python ]; then "$PY311" -m venv .venv; fi
.venv/bin/python -m pip install "${pip_quiet[@]}" -r requirements-dev.txt \
  -e 'common[metrics]' -e 'data[larcv1]' -e broker -e 'worker[opencv,larcv1,onnx,torch]' -e 'client[larcv1,show]'

PY39=$(find_python 3.9 || true)
if [ -n "$PY39" ]; then
  if [ ! -x .venv39/bin/python ]; then "$PY39" -m venv .venv39; fi
  .venv39/bin/python -m pip install "${pip_quiet[@]}" pytest pytest-timeout hypothesis \
    onnxruntime==1.19.2 onnx==1.19.1 -e 'common[metrics]' -e 'data[larcv1]' -e 'worker[larcv1,onnx]'
else
  echo "bootstrap: no Python 3.9 found; the 3.9 test run will be skipped" >&2
fi
