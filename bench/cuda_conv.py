"""numbaconv's CUDA conv2d, forward and backward, next to PyTorch's cuDNN on the same GPU.

    python bench/cuda_conv.py                       # ResNet-18 and VGG-16 shapes, writes bench/results/cuda.md
    python bench/cuda_conv.py --quick --suite tiny  # a smoke run (also under NUMBA_ENABLE_CUDASIM=1, without cuDNN)

Both in one process, float32 against float32 (``torch.backends.cudnn.allow_tf32 = False``,
``torch.backends.cuda.matmul.allow_tf32 = False``), each call followed by a device synchronize,
the median of the rounds; numbaconv's inputs are device arrays made once (no host transfer is
timed). The measuring is ``numbaconv.benchmark.run(device="cuda")``, the code behind
``numbaconv bench --device cuda``; this script adds the GPU's name, the issue's GPU targets
(forward within 2x of cuDNN, backward within 3x, on the ResNet and VGG shapes) and the file.
"""

import argparse
import math
import os
import sys

try:
    import torch  # before numbaconv: see numbaconv.benchmark.run on the OpenMP runtime
except ImportError:
    torch = None

import numbaconv.benchmark as nb
from numbaconv._device import cuda_status

ALGORITHMS = ("direct", "im2col", "auto")
TARGETS = {"forward": 2.0, "backward": 3.0}  # numbaconv's time / cuDNN's, every shape of the suites


def target_lines(rows):
    lines = []
    for algorithm in ALGORITHMS:
        for direction, limit in TARGETS.items():
            ratios = [(r["ratio"], r["shape"]) for r in rows
                      if r["algorithm"] == algorithm and r["direction"] == direction and r["ratio"] is not None]
            if not ratios:
                lines.append(f"- {algorithm} {direction} <= {limit:g}x cuDNN: not measured (no PyTorch CUDA)")
                continue
            worst, shape = max(ratios)
            geomean = math.exp(sum(math.log(r) for r, _ in ratios) / len(ratios))
            verdict = "met" if worst <= limit else "MISSED"
            lines.append(f"- {algorithm} {direction} <= {limit:g}x cuDNN on every shape: worst {worst:.2f} ({shape}), "
                         f"geometric mean {geomean:.2f} ({verdict})")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", action="append", help="suites to run (default: resnet18 and vgg16); repeatable")
    p.add_argument("--quick", action="store_true", help="three timed rounds per case")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cuda.md"),
                   help="the markdown file to write ('-' for none)")
    args = p.parse_args(argv)
    ok, gpu = cuda_status()
    if not ok:
        sys.exit(f"cuda_conv: CUDA is not available: {gpu}")
    cudnn = torch is not None and torch.cuda.is_available()
    if cudnn:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    peak = nb.gemm_peak("cuda") if cudnn else None
    rows = []
    for suite in args.suite or ("resnet18", "vgg16"):
        rows += nb.run(suite=suite, device="cuda", quick=args.quick, algorithms=ALGORITHMS, memory=False,
                       peak_gflops=peak, progress=False)
    lines = [
        "# numbaconv CUDA conv2d next to cuDNN (float32, TF32 off)", "",
        f"- GPU: {gpu}; PyTorch {torch.__version__ if torch else 'not installed'}, "
        f"cuDNN {torch.backends.cudnn.version() if cudnn else 'not available'}",
        *nb.report.header(nb.machine_info(), peak, "cuda", args.quick), "",
        *nb.table(rows), "", "Time / cuDNN's per algorithm and direction, against the GPU targets:", *target_lines(rows),
    ]
    print("\n".join(lines))
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
