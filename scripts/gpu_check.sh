#!/usr/bin/env bash
# The accelerator checks of issue 4 section 5, as one command for a lent GPU machine (its image
# has python3 with jax[cuda], flax, torch+CUDA, matplotlib, pandas, absl, safetensors, pillow;
# nothing is installed: jaxsal runs from this checkout). From the repository root:
#
#   bash scripts/gpu_check.sh          # about 5-8 minutes on one H200
#
# Writes $OUT/env.txt, $OUT/tests.txt and $OUT/gpu_bench.log (table + BENCH_JSON line), so that
# whatever finishes before a time limit comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/jaxsal-gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

{ nvidia-smi; "$PY" -c 'import jax, flax, torch; print("jax", jax.__version__, jax.devices(), "| flax", flax.__version__, "| torch", torch.__version__, torch.cuda.is_available())'; } 2>&1 | tee "$OUT/env.txt"

# The core and batching tests on the GPU (parity at float32, sharding, batch size from memory).
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -x tests/test_core.py tests/test_batching.py 2>&1 \
  | tail -15 | tee "$OUT/tests.txt"

# jaxsal vs PyTorch batched, 256 and 1024 images, each precision (BENCHMARKS.md, "GPU").
timeout 420 "$PY" scripts/bench.py --accelerator-rows --torch-device cuda --layers fc3,conv5 \
  --methods guided --accel-batches 256,1024 --repeats 5 2>&1 | tee "$OUT/gpu_bench.log"
