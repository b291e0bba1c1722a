"""Which algorithm wins where: the measurements behind ``algorithm="auto"``.

For each shape of the "rules" suite (``numbaconv.benchmark.shapes``), times the direct loops,
im2col and, where they run (``kernels.cpu.candidates``), Winograd's tiles on each direction
(forward, grad input, grad weight) in one process, float32, median of repeated calls after a
warm-up, and prints one row per shape with the winner of each direction.
``numbaconv.functional.conv.choose_algorithm`` states the rule these rows support; rerun this
after changing a kernel.

The candidates take turns call by call, as a model's layers do: called back to back, a call
finds the caches and BLAS's threads as its own last call left them, and im2col's one GEMM gained
most from that (ResNet-18's first layer at batch 1, Winograd's tiles against im2col: 1.17x its
time back to back, 0.78 taking turns, and the whole model 0.88 with the tiles). numbaconv is
imported before NumPy, as an inference process would, so that NumPy's BLAS threads sleep soon
after each GEMM (``numbaconv._threads``).

    python bench/algorithms.py [--repeat 7]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numbaconv  # noqa: E402  (before NumPy: see above)
import numpy as np  # noqa: E402
from numbaconv._geometry import conv_geometry  # noqa: E402
from numbaconv.benchmark.shapes import suite  # noqa: E402
from numbaconv.functional.conv import choose_algorithm  # noqa: E402
from numbaconv.kernels.cpu import ALL_ALGORITHMS, candidates  # noqa: E402

SHAPES = {name.removeprefix("rules-"): shape for name, shape in suite("rules").items()}
DIRECTIONS = ("forward", "grad_input", "grad_weight")


def _alternating_ms(calls, repeat):
    """{name: median ms} of ``calls``, one untimed call each, then ``repeat`` rounds in which
    each is called once in turn."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def _calls(shape, algorithm):
    s, p, g = shape.stride, shape.padding, shape.groups
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape.x_shape, dtype=np.float32)
    w = rng.standard_normal(shape.weight_shape, dtype=np.float32)
    kw = dict(stride=s, padding=p, groups=g, algorithm=algorithm)
    op = f"conv{shape.ndim}d"
    conv, backward = getattr(numbaconv, op), getattr(numbaconv, op + "_backward")
    go = rng.standard_normal(conv(x, w, stride=s, padding=p, groups=g).shape, dtype=np.float32)
    return {
        "forward": lambda: conv(x, w, **kw),
        "grad_input": lambda: backward(go, x, w, needs=(True, False, False), **kw),
        "grad_weight": lambda: backward(go, x, w, needs=(False, True, False), **kw),
    }, conv_geometry(op, x, w, None, s, p, 1, g, "zeros", shape.ndim)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    names = " / ".join(ALL_ALGORITHMS)
    print("| shape | C/g | K/g | " + " | ".join(f"{d} {names} ms | auto" for d in DIRECTIONS) + " |")
    print("|---|--:|--:|" + "--:|:-:|" * len(DIRECTIONS))
    misses = 0
    for name, shape in SHAPES.items():
        calls = {a: _calls(shape, a) for a in ALL_ALGORITHMS}
        geom = calls["direct"][1]
        cells = []
        for d in DIRECTIONS:
            times = _alternating_ms({a: calls[a][0][d] for a in candidates(geom, d)}, args.repeat)
            best = min(times, key=times.get)
            auto = choose_algorithm(geom, d)
            slower = times[auto] / times[best]
            mark = auto if auto == best else f"{auto} (x{slower:.2f})"
            misses += auto != best and slower > 1.25
            cells.append(" / ".join(f"{times[a]:.2f}" if a in times else "-" for a in ALL_ALGORITHMS) + f" | {mark}")
        C, K, G = geom.in_channels, geom.out_channels, geom.groups
        print(f"| {name} | {C // G} | {K // G} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nauto slower than the best algorithm by more than 1.25x: {misses} cases")


if __name__ == "__main__":
    main()
