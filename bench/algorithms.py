"""Which algorithm wins where: the measurements behind ``algorithm="auto"``.

For each shape of the "rules" suite (``numbaconv.benchmark.shapes``), times the direct loops
and im2col on each direction (forward, grad input, grad weight) in one process, float32, median
of repeated calls after a warm-up, and prints one row per shape with the winner of each direction. ``numbaconv.functional.conv.choose_algorithm``
states the rule these rows support; rerun this after changing a kernel.

    python bench/algorithms.py [--repeat 7]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import numbaconv  # noqa: E402
from numbaconv._geometry import conv_geometry  # noqa: E402
from numbaconv.benchmark.shapes import suite  # noqa: E402
from numbaconv.functional.conv import choose_algorithm  # noqa: E402

SHAPES = {name.removeprefix("rules-"): shape for name, shape in suite("rules").items()}
DIRECTIONS = ("forward", "grad_input", "grad_weight")


def _median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _calls(shape, algorithm):
    s, p, g = shape.stride, shape.padding, shape.groups
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape.x_shape, dtype=np.float32)
    w = rng.standard_normal(shape.weight_shape, dtype=np.float32)
    kw = dict(stride=s, padding=p, groups=g, algorithm=algorithm)
    go = rng.standard_normal(numbaconv.conv2d(x, w, **kw).shape, dtype=np.float32)
    return {
        "forward": lambda: numbaconv.conv2d(x, w, **kw),
        "grad_input": lambda: numbaconv.conv2d_backward(go, x, w, needs=(True, False, False), **kw),
        "grad_weight": lambda: numbaconv.conv2d_backward(go, x, w, needs=(False, True, False), **kw),
    }, conv_geometry("conv2d", x, w, None, s, p, 1, g, "zeros", 2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    head = "| shape | C/g | K/g | " + " | ".join(f"{d} direct / im2col ms | auto" for d in DIRECTIONS) + " |"
    print(head)
    print("|---|--:|--:|" + "--:|:-:|" * len(DIRECTIONS))
    misses = 0
    for name, shape in SHAPES.items():
        direct, geom = _calls(shape, "direct")
        im2col, _ = _calls(shape, "im2col")
        cells = []
        for d in DIRECTIONS:
            t_direct, t_im2col = _median_ms(direct[d], args.repeat), _median_ms(im2col[d], args.repeat)
            best = "direct" if t_direct < t_im2col else "im2col"
            auto = choose_algorithm(geom, d)
            slower = max(t_direct, t_im2col) / min(t_direct, t_im2col)
            mark = auto if auto == best else f"{auto} (x{slower:.2f})"
            misses += auto != best and slower > 1.25
            cells.append(f"{t_direct:.2f} / {t_im2col:.2f} | {mark}")
        C, K, G = geom.in_channels, geom.out_channels, geom.groups
        print(f"| {name} | {C // G} | {K // G} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nauto slower than the best algorithm by more than 1.25x: {misses} cases")


if __name__ == "__main__":
    main()
