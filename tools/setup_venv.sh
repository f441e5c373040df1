#!/usr/bin/env bash
# Create ./.venv (or $UNETZOO_VENV) and install monai-unetzoo with its test extras (or $UNETZOO_EXTRAS, e.g.
# UNETZOO_VENV=.venv-peers UNETZOO_EXTRAS=peers for the nnU-Net benchmarks of benchmarks/peers/).
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
# Pin the torch just installed: an extra's dependency (nnunetv2 -> timm -> the newest torchvision) would otherwise
# make pip replace it with the newest CUDA build.
CONSTRAINTS=$(mktemp)
"$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" > "$CONSTRAINTS"
"${PIP[@]}" install -c "$CONSTRAINTS" -e ".[${UNETZOO_EXTRAS:-test}]"
rm -f "$CONSTRAINTS"
"$VENV/bin/python" -c "import torch, monai, monai_unetzoo; print('monai-unetzoo', monai_unetzoo.__version__, '| torch', torch.__version__, '| monai', monai.__version__)"
