#!/usr/bin/env bash
# The GPU check of zoobot-hpc: on a machine with one GPU, installs the project and prints one markdown table
# (training throughput of convnext_nano at 224 px in bf16, real pipeline with 8 workers vs synthetic tensors,
# the loader alone, predict, and head_only on cached embeddings). Within 8 minutes on one H200-class GPU.
#
#   bash benchmarks/gpu_check.sh            # GPU node
#   bash benchmarks/gpu_check.sh --smoke    # CPU: tiny sizes, checks that every step runs
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HDF5_USE_FILE_LOCKING=FALSE WANDB_MODE=disabled HF_HUB_OFFLINE=1
PYTHON=${PYTHON:-python3}

# Install the project (and what it needs) unless it already imports; with no network, use the checkout as is.
if ! "$PYTHON" -c "import zoobot_hpc.training.run, zoobot_hpc.inference.loop" 2>/dev/null; then
    "$PYTHON" -m pip install -q -e . || echo "gpu_check: 'pip install -e .' failed; trying the checkout as is" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import zoobot_hpc.training.run, zoobot_hpc.inference.loop" || {
    echo "gpu_check: zoobot_hpc does not import here (a dependency is missing; see the error above)" >&2
    exit 1
}
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py "$@"
