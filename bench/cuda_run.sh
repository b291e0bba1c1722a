#!/usr/bin/env bash
# Everything a machine with an NVIDIA GPU should run, in one go and in a bounded time: the CUDA
# tests on the real GPU, then conv2d next to cuDNN on the ResNet-18 and VGG-16 shapes. It uses
# the python3 and packages already there (numba, numba-cuda, PyTorch with CUDA, pytest,
# hypothesis) and installs nothing, so it also runs from a plain checkout:
#
#     bash bench/cuda_run.sh [OUTDIR]        # default OUTDIR: bench/results/cuda-run
#
# OUTDIR receives info.txt (GPU, versions, `numbaconv info`), tests.log and junit.xml, and one
# cuda-SUITE.md table per suite (bench/cuda_conv.py's format). TEST_TIMEOUT and BENCH_TIMEOUT
# (seconds, per step) bound the steps; a step that fails or runs out of time does not stop the
# next one. With pytest-xdist installed the tests run on 8 processes (each compiles its own
# kernels, the slow part on a fresh machine).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/cuda-run}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0 CI=true
py=${PYTHON:-python3}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$py" -c "import sys, numpy, numba, numba_cuda, torch; print('python', sys.version.split()[0], 'numpy', numpy.__version__,
'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
    "$py" -m numbaconv info
} > "$out/info.txt" 2>&1
cat "$out/info.txt"

workers=()
"$py" -c "import xdist" 2>/dev/null && workers=(-n 8)
timeout "${TEST_TIMEOUT:-300}" "$py" -m pytest -m cuda "${workers[@]}" -q -p no:cacheprovider -rfEs \
    --junitxml="$out/junit.xml" tests/ > "$out/tests.log" 2>&1
echo "tests: exit $?"
tail -c 6000 "$out/tests.log"

for suite in resnet18 vgg16; do
    timeout "${BENCH_TIMEOUT:-150}" "$py" bench/cuda_conv.py --quick --suite "$suite" --out "$out/cuda-$suite.md" \
        > "$out/bench-$suite.log" 2>&1
    echo "bench $suite: exit $?"
    tail -c 3000 "$out/bench-$suite.log"
done
