"""How long Numba's OpenMP threads should spin when idle, and from what size a kernel should
go parallel: the measurements behind ``numbaconv.config.OPENMP_ENV``,
``config.PARALLEL_MIN_ELEMENTS`` and ``config.PARALLEL_AWAKE_DIVISOR``.

OpenMP reads its wait settings once, when it loads, so each setting runs in fresh processes
(by default numbaconv imported first, no PyTorch: the OpenMP layer), the settings taking
turns round by round. Each process times small kernels called back to back (where waking
sleeping threads is most of the call), whole models (where a spinning thread shares the cores
with NumPy's BLAS threads between GEMMs), and a LeNet-5 training step; it prints the medians,
and the parent prints, per workload and setting, the median over rounds and the range.

    python bench/thread_wait.py [--settings passive,3000,30000] [--rounds 5]
    python bench/thread_wait.py --settings @16384,@4096           # the parallel threshold
    python bench/thread_wait.py --settings @4096/1,@16384/4       # ... and while threads spin
    python bench/thread_wait.py --import-order torch --settings @16384,@4096

A setting is ``passive`` (``OMP_WAIT_POLICY=PASSIVE``: sleep at once), a spin count
(``GOMP_SPINCOUNT``, GNU OpenMP's busy-wait iterations before sleeping; it overrides the
policy there) or nothing (numbaconv's own choice), optionally followed by ``@N``:
``config.PARALLEL_MIN_ELEMENTS`` set to N in the process, and ``@N/D`` also
``config.PARALLEL_AWAKE_DIVISOR`` to D (``/1``: one threshold, whether the threads spin or not).
A layer name and a colon in front (``tbb:``, ``omp:3000``, ``workqueue:@16384``) names
Numba's threading layer (``NUMBA_THREADING_LAYER``; numbaconv keeps it and tunes for it).
``--import-order torch`` imports PyTorch first, as ``numbaconv bench`` does: with numbaconv's
own choice numbaconv then runs on TBB's threads, or without TBB on Numba's workqueue layer; a
wait setting on the OpenMP layer goes to the OpenMP runtime PyTorch loads, which numbaconv then
shares.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def _median_ms(fn, n, warm=3):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _child(import_order):
    """One process's medians, as JSON on stdout."""
    sys.path.insert(0, str(ROOT))
    if import_order == "torch":
        import torch  # noqa: F401
    import numbaconv as nc
    import numpy as np

    if os.environ.get("NUMBACONV_BENCH_PARALLEL_MIN"):
        threshold, _, divisor = os.environ["NUMBACONV_BENCH_PARALLEL_MIN"].partition("/")
        nc.config.PARALLEL_MIN_ELEMENTS = int(threshold)
        if divisor:
            nc.config.PARALLEL_AWAKE_DIVISOR = int(divisor)

    rng = np.random.default_rng(0)
    nn = nc.nn

    def conv(shape, weight, **kw):
        x, w = rng.random(shape, dtype=np.float32), rng.random(weight, dtype=np.float32)
        return lambda: nc.conv2d(x, w, **kw)

    nc.manual_seed(0)
    resnet = nc.compile(nc.models.resnet18().eval())
    mobile = nc.compile(nn.Sequential(
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 1), nn.BatchNorm2d(128), nn.ReLU()).eval())
    lenet = nc.models.lenet5()
    lenet_compiled = nc.compile(nc.models.lenet5().eval())
    x_one = rng.standard_normal((1, 1, 32, 32), dtype=np.float32)
    loss_fn, opt = nn.CrossEntropyLoss(), nc.optim.SGD(lenet.parameters(), lr=0.01, momentum=0.9)
    xl, yl = rng.standard_normal((64, 1, 32, 32), dtype=np.float32), rng.integers(0, 10, 64)
    x1, x8 = (rng.random((n, 3, 224, 224), dtype=np.float32) for n in (1, 8))
    xm = rng.random((1, 32, 112, 112), dtype=np.float32)

    def step():
        loss_fn(lenet(xl), yl)
        lenet.zero_grad()
        lenet.backward(loss_fn.backward())
        opt.step()

    work = {
        "depthwise 3x3/2, (1, 64, 112x112)": (conv((1, 64, 112, 112), (64, 1, 3, 3), stride=2, padding=1, groups=64), 200),
        "LeNet c2, batch 64": (conv((64, 6, 14, 14), (16, 6, 5, 5)), 200),
        "depthwise 3x3, (8, 1024, 7x7)": (conv((8, 1024, 7, 7), (1024, 1, 3, 3), padding=1, groups=1024), 200),
        "depthwise 3x3, (1, 128, 56x56)": (conv((1, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128), 200),
        "MobileNet-style block, (1, 32, 112x112)": (lambda: mobile(xm), 100),
        "LeNet-5 training step, batch 64": (step, 60),
        "LeNet-5 compiled, batch 1": (lambda: lenet_compiled(x_one), 500),
        "ResNet-18 compiled, batch 1": (lambda: resnet(x1), 15),
        "ResNet-18 compiled, batch 8": (lambda: resnet(x8), 5),
    }
    print(json.dumps({name: _median_ms(fn, n, warm=1 if n < 10 else 3) for name, (fn, n) in work.items()}))


def _environment(setting):
    drop = WAIT_VARIABLES + ("NUMBACONV_BENCH_PARALLEL_MIN", "NUMBA_THREADING_LAYER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    layer, _, setting = setting.rpartition(":")
    if layer:
        env["NUMBA_THREADING_LAYER"] = layer
    spin, _, threshold = setting.partition("@")
    if spin:  # else numbaconv's own choice
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if spin not in ("", "passive"):
        env["GOMP_SPINCOUNT"] = spin
    if threshold:
        env["NUMBACONV_BENCH_PARALLEL_MIN"] = threshold
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="passive,3000,30000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--import-order", choices=("numbaconv", "torch"), default="numbaconv")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.import_order)
        return 0
    settings = args.settings.split(",")
    results = {s: [] for s in settings}
    for r in range(args.rounds):
        for s in settings:
            done = subprocess.run([sys.executable, __file__, "--child", "--import-order", args.import_order],
                                  env=_environment(s),
                                  capture_output=True, text=True, check=True)
            results[s].append(json.loads(done.stdout.splitlines()[-1]))
            print(f"round {r + 1}, {s}: done", file=sys.stderr)
    names = list(results[settings[0]][0])
    print("| workload | " + " | ".join(f"{s} ms (range)" for s in settings) + " |")
    print("|---|" + "--:|" * len(settings))
    for name in names:
        cells = []
        for s in settings:
            values = [run[name] for run in results[s]]
            cells.append(f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
