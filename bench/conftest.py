"""Shared machinery of the benchmarks: the checkout on sys.path, machine facts, timing policy."""

import functools
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmark the checkout this suite belongs to

if os.environ.get("NUMBACONV_BENCH_IMPORT_ORDER", "torch") == "numbaconv":
    # numbaconv first: its threading layer applies (OpenMP, a short spin then sleep), as in a
    # process without PyTorch, and PyTorch's OpenMP threads then wait the same way. pytest's
    # plugins have loaded NumPy by now, so its BLAS threads keep their default spin here,
    # unlike under ``numbaconv bench --import-order numbaconv``.
    import numbaconv  # noqa: F401
try:
    # By default PyTorch before numbaconv: both can share one OpenMP runtime, which keeps the
    # settings of whoever loads it first. PyTorch is the reference, so it keeps its own
    # defaults, and numbaconv's config.OPENMP_ENV does not apply in this suite (a conservative
    # choice for it).
    import torch  # noqa: F401
except ImportError:
    pass
import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from machine import cpu_flags, cpu_model  # noqa: E402

# A timed round budget: enough rounds for a stable median on fast cases, few on slow ones.
ROUND_BUDGET_S = 1.0
MIN_ROUNDS, MAX_ROUNDS = 3, 50
SLOW_CALL_S = 3.0  # past this, a single round is all a case gets


def pytest_sessionstart(session):
    """Every benchmark in the same allocator state, whatever ran before it
    (``numbaconv.benchmark.runner._raise_allocator_threshold`` says why)."""
    from numbaconv.benchmark.runner import _raise_allocator_threshold

    _raise_allocator_threshold()


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def pytest_benchmark_update_machine_info(config, machine_info):
    torch = torch_or_none()
    machine_info["numbaconv"] = {
        "cpu_model": cpu_model(),
        "cpu_vector": cpu_flags(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "torch": torch.__version__ if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
    }
    try:
        machine_info["numbaconv"]["threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel has run in this process
        machine_info["numbaconv"]["threading_layer"] = None


def run(benchmark, fn, flops):
    """Time ``fn`` after an untimed warm-up call that compiles or loads the kernel cache.

    One untimed probe call sets the number of rounds, so a fast case gets many rounds and a slow one
    a few; GFLOP/s of the median lands in ``benchmark.extra_info``.
    """
    fn()  # warm-up: compilation, first-touch allocation
    if benchmark.disabled:
        return benchmark.pedantic(fn, rounds=1, iterations=1)
    start = time.perf_counter()
    fn()
    probe = time.perf_counter() - start
    if probe > SLOW_CALL_S:
        rounds = 1
    else:
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, ROUND_BUDGET_S / max(probe, 1e-9))))
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["flops"] = flops
    benchmark.extra_info["gflops"] = flops / median / 1e9
    return result


@pytest.fixture
def measure(benchmark):
    """``measure(fn, flops)``: benchmark ``fn`` under the policy of :func:`run`."""
    return functools.partial(run, benchmark)


@pytest.fixture(scope="session")
def torch():
    """PyTorch with as many threads as Numba, or a clean skip when it is not installed."""
    torch = torch_or_none()
    if torch is None:
        pytest.skip("torch is not installed")
    torch.set_num_threads(numba.get_num_threads())
    return torch
