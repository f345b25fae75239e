# Source this file: it creates (once) and activates the shared PyTorch venv that tch links against.
# The venv is keyed by the torch version and lives in the user's cache directory, so every clone,
# worktree and CI run on a machine shares one 4.6 GB install.
ROUX_TORCH_VERSION=2.11.0
ROUX_VENV="${ROUX_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/roux/venv-torch-$ROUX_TORCH_VERSION}"
if [ ! -x "$ROUX_VENV/bin/python" ] || ! "$ROUX_VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$ROUX_TORCH_VERSION')" 2>/dev/null; then
  echo "roux: installing torch==$ROUX_TORCH_VERSION into $ROUX_VENV (once, ~2.6 GB)" >&2
  mkdir -p "$(dirname "$ROUX_VENV")"
  python3 -m venv "$ROUX_VENV"
  "$ROUX_VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$ROUX_TORCH_VERSION" numpy
fi
# The CUDA runtime's C headers and libcu++ (3 MB, headers only), which c10d's NCCL header includes:
# build.rs compiles roux's NCCL backend with them (src/run/kit/nccl.cpp). Versions of torch's CUDA 13.0.
if [ ! -f "$ROUX_VENV/.roux-cuda-headers" ]; then
  "$ROUX_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85" && touch "$ROUX_VENV/.roux-cuda-headers"
fi
export VIRTUAL_ENV="$ROUX_VENV"
export PATH="$ROUX_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
