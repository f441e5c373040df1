#!/usr/bin/env bash
# Create ./.venv (or $UNETZOO_VENV) and install monai-unetzoo with its test extras.
#
# torch is installed first, so that pip never picks a build for us:
#   * a local CPU wheel of torch 2.13.0 that pip's find-links already offer (these project machines) -> that one;
#   * otherwise, no NVIDIA driver on the machine -> the CPU build from download.pytorch.org;
#   * otherwise the default PyPI build (CUDA). Set UNETZOO_TORCH_SPEC / UNETZOO_TORCH_INDEX to choose yourself,
#     e.g. UNETZOO_TORCH_INDEX=https://download.pytorch.org/whl/cu126.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${UNETZOO_VENV:-.venv}
PY=${PYTHON:-python3}

"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if [ -n "${UNETZOO_TORCH_SPEC:-}${UNETZOO_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" install ${UNETZOO_TORCH_INDEX:+--index-url "$UNETZOO_TORCH_INDEX"} "${UNETZOO_TORCH_SPEC:-torch}"
elif "${PIP[@]}" download -q --no-deps --no-index -d "$(mktemp -d)" "torch==2.13.0" >/dev/null 2>&1; then
    # pip's configured find-links hold the CPU wheel: use it (no download of CUDA packages).
    "${PIP[@]}" install "torch==2.13.0"
elif ! command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
else
    "${PIP[@]}" install torch
fi
# The installed torch satisfies the package's range, so this adds no second torch.
"${PIP[@]}" install -e ".[test]"
"$VENV/bin/python" -c "import torch, monai, monai_unetzoo; print('monai-unetzoo', monai_unetzoo.__version__, '| torch', torch.__version__, '| monai', monai.__version__)"
