"""Memory-bound ops next to PyTorch with the calls alternating: the element-wise, pooling and
batch-norm cases of ``test_elementwise.py``, ``test_pool.py`` and ``test_norm.py``.

The pytest-benchmark suite times each implementation in a block of rounds of its own; on a
shared machine whose load drifts over seconds, two blocks a minute apart differ by more than
the two libraries do (ReLU's backward read 0.63, 0.72 and 0.99 of PyTorch's speed in three
runs). Here the implementations take turns as in ``numbaconv bench`` (``runner._time``): bursts
of calls whose first ``runner.SETTLE_S`` go untimed, so that neither is timed while the other's
idle threads still spin (PyTorch's OpenMP threads spin 5-20 ms after each call here: softmax
over (64, 1000) on numbaconv's two threads took 33 us right after a PyTorch call, 20 us from
20 ms on). Each round gives a ratio of the two medians; a case's figure is the median of its
rounds' ratios. The numbaconv calls are checked against PyTorch first: no figure comes from a
wrong answer.

    python bench/memory_alternating.py                         # PyTorch imported first
    python bench/memory_alternating.py --import-order numbaconv --rounds 30

Columns: the median time of a call, GB/s (bytes a call must read and write, as in the pytest
cases), and numbaconv's speed / PyTorch's (above 1: numbaconv faster) as the median of the
rounds' ratios, with the quartiles of those ratios beside it.
"""

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cases(torch, np):
    """[(case, direction, numbaconv's call, PyTorch's call, bytes moved)], each numbaconv call
    checked against PyTorch's."""
    import test_elementwise as ew
    import test_norm as norm
    import test_pool as pool

    cases = []
    for op, shape in ew.SHAPES.items():
        for direction in ew.DIRECTIONS:
            ours = ew._numbaconv_fn(op, direction)
            ew._check_against_torch(op, direction, ours())
            cases.append((op, direction, ours, ew._torch_fn(torch, op, direction), ew._bytes(op, direction)))
    for name in pool.CASES:
        for direction in pool.DIRECTIONS:
            ours = pool._numbaconv_fn(name, direction)
            pool._check_against_torch(name, direction, ours())
            cases.append((name, direction, ours, pool._torch_fn(torch, name, direction),
                          pool._traffic(name, direction)[0]))
    for direction, (arrays, _) in norm.DIRECTIONS.items():
        ours = norm._numbaconv_fn(direction)
        norm._check_against_torch(direction, ours())
        nbytes = arrays * int(np.prod(norm.SHAPE)) * np.dtype(np.float32).itemsize
        cases.append(("batchnorm-" + "x".join(map(str, norm.SHAPE)), direction, ours, norm._torch_fn(torch, direction),
                      nbytes))
    return cases


def _quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return q[0], q[2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import-order", choices=("torch", "numbaconv"), default="torch")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    if args.import_order == "numbaconv":
        import numbaconv
        import torch
    else:
        import torch
        import numbaconv
    import numba
    import numpy as np

    from numbaconv import _threads
    from numbaconv.benchmark import runner

    runner._raise_allocator_threshold()
    # a quarter second of calls for each per round, in bursts that take turns; no GEMM runs
    # here, so no pause for NumPy's BLAS threads
    policy = runner.Policy(budget_s=0.25, min_rounds=5, max_rounds=100, slow_s=3.0, settle_blas=False)
    torch.set_num_threads(numba.get_num_threads())  # as many threads each
    wanted = set(filter(None, args.cases.split(",")))
    cases = [c for c in _cases(torch, np) if not wanted or c[0] in wanted]
    print(f"numbaconv {numbaconv.__version__}, PyTorch {torch.__version__}; import order: {args.import_order} first; "
          f"numbaconv: {numba.threading_layer()} ({_threads.reason}); {numba.get_num_threads()} threads each; "
          f"{args.rounds} rounds")
    print()
    print("| case | direction | numbaconv ms | torch ms | numbaconv GB/s | torch GB/s | numbaconv / torch | quartiles |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for name, direction, ours, theirs, nbytes in cases:
        calls = {"numbaconv": ours, "torch": theirs}
        for call in calls.values():  # warm: compiled, pages touched
            call()
        times = {k: [] for k in calls}
        for r in range(args.rounds):
            order = calls if r % 2 == 0 else dict(reversed(calls.items()))
            for k, samples in runner._time(order, policy, lambda: None).items():
                times[k].append(statistics.median(samples))
        ratios = [t / o for o, t in zip(times["numbaconv"], times["torch"])]
        low, high = _quartiles(ratios)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        gbps = {k: nbytes / v / 1e6 for k, v in ms.items()}
        print(f"| {name} | {direction} | {ms['numbaconv']:.3f} | {ms['torch']:.3f} | {gbps['numbaconv']:.1f} "
              f"| {gbps['torch']:.1f} | {statistics.median(ratios):.2f} | {low:.2f}-{high:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
