#!/usr/bin/env bash
# The inference benchmark on a GPU machine, in under 6 minutes; installs nothing.
#
#   bash bench/gpu_check.sh            # from the repository root; writes $OUT/inference-gpu.md (or /tmp)
#
# Measures eager PyTorch on the GPU, an AOTInductor artifact compiled there, and TensorRT where
# torch_tensorrt is importable; L=100, batches 1..1024 (bench/inference.py --quick), and prints the
# same table as the CPU run. Python packages this image may lack (orjson, say) can be unpacked
# wheels on EXTRA_PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
export PYTHONPATH=".${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$PYTHON" - <<'EOF'
import importlib.util
import sys

missing = [m for m in ("torch", "numpy", "msgpack", "orjson", "safetensors") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)}; unpack their wheels into a folder and set EXTRA_PYTHONPATH")
import torch

if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; "
      f"torch_tensorrt {'present' if importlib.util.find_spec('torch_tensorrt') else 'absent'}")
EOF

timeout 340 "$PYTHON" bench/inference.py --device cuda --quick --out "${OUT:-/tmp}/inference-gpu.md"
