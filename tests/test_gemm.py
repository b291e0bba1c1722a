"""numbaconv's GEMMs split over its own threads (kernels/cpu/gemm.py): the same products as
NumPy's matmul, the BLAS on one thread while they run and its thread count given back, errors
raised in the caller, and correct from many threads at once and after a fork."""

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numbaconv import _threads
from numbaconv.kernels.cpu import gemm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def split(monkeypatch):
    """Every product split, into up to 3 parts, however small; the BLAS's own thread count
    functions where numbaconv reaches them, else stand-ins that record the count."""
    monkeypatch.setattr(_threads, "blas_split", True)
    monkeypatch.setattr(gemm, "SPLIT_MIN_WORK", 1)
    monkeypatch.setattr(gemm, "SPLIT_ALIGN", 2)
    monkeypatch.setattr(gemm, "LEAD_WORK", 0)
    monkeypatch.setattr(gemm, "GIL_FREE_OUTPUT", 0)
    monkeypatch.setattr(gemm.numba, "get_num_threads", lambda: 3)
    if _threads.blas_threads is None:
        count = [4]

        def put(n):
            count[0] = n
        monkeypatch.setattr(_threads, "blas_threads", (lambda: count[0], put))
    return _threads.blas_threads


def _operands(rng, batch_a, batch_b, m, k, n, dtype):
    return (rng.standard_normal((*batch_a, m, k)).astype(dtype),
            rng.standard_normal((*batch_b, k, n)).astype(dtype))


# the fixture holds for every example; the first compiles the pool's wait loop
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(batch=st.sampled_from([((), ()), ((4,), (4,)), ((5,), ()), ((), (3,)), ((3, 2), (2,)), ((1, 2), (3, 1, 1)),
                              ((2,), (1,))]),
       m=st.integers(1, 40), k=st.integers(1, 12), n=st.integers(1, 40),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16), sums=st.booleans())
def test_split_products_match_numpy(split, batch, m, k, n, dtype, seed, sums, monkeypatch):
    """Split along the batch (where it is as long as the thread count), the rows or the
    columns, or (``sums``: outputs too few to split) along the sums, broadcasting as matmul
    does, into a new array or a strided ``out``; the operands unchanged."""
    a, b = _operands(np.random.default_rng(seed), *batch, m, k, n, dtype)
    size = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (m, n)
    monkeypatch.setattr(gemm, "GIL_FREE_OUTPUT", int(np.prod(size)) - 1 if sums else 0)
    a0, b0 = a.copy(), b.copy()
    expected = np.matmul(a, b)
    # the BLAS may sum a slice in another order than the whole (a matrix-vector product for
    # one column): equal to rounding, each element against its own scale
    bound = 4 * k * np.finfo(dtype).eps * np.matmul(np.abs(a), np.abs(b))
    got = gemm.matmul(a, b)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert (np.abs(got - expected) <= bound).all()
    wide = np.full(expected.shape[:-1] + (expected.shape[-1] + 3,), np.nan, dtype)
    assert gemm.matmul(a, b, out=wide[..., 1:-2]) is not None
    assert (np.abs(wide[..., 1:-2] - expected) <= bound).all()
    assert np.isnan(wide[..., [0, -2, -1]]).all()
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def test_parts_cover_the_product_once(split):
    """Each way of splitting gives disjoint parts that together make the whole output."""
    rng = np.random.default_rng(0)
    for a_shape, b_shape, axis in [((6, 4, 5), (6, 5, 3), 0), ((1, 40, 5), (5, 7), -2), ((7, 5), (5, 40), -1)]:
        a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
        out = np.zeros(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]))
        parts, partials = gemm._parts(a, b, out, 3)
        assert len(parts) == 3 and partials == []
        covered = np.zeros(out.shape, int)
        for part in parts:
            _, _, piece = part.args
            assert piece.base is out or piece is out
            offset = (piece.__array_interface__["data"][0] - out.__array_interface__["data"][0]) // out.itemsize
            start = np.unravel_index(offset, out.shape)
            covered[tuple(slice(s, s + e) for s, e in zip(start, piece.shape))] += 1
            assert piece.shape[axis] < out.shape[axis]
        assert (covered == 1).all()


@given(length=st.integers(1, 300), parts=st.integers(2, 8), align=st.sampled_from([1, 2, 16]),
       lead=st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_cuts_tile_the_length(length, parts, align, lead):
    """Pieces in order, end to end, at most ``parts`` of them, each but the last a multiple of
    ``align``; the caller's first piece longer than an even share by ``lead`` of the length, to
    the nearest multiple of ``align``."""
    cuts = gemm._cuts(length, parts, align, lead)
    assert cuts[0][0] == 0 and cuts[-1][1] == length
    assert all(e0 == s1 for (_, e0), (s1, _) in zip(cuts, cuts[1:]))
    assert len(cuts) <= parts and all(e > s for s, e in cuts)
    assert all((e - s) % align == 0 for s, e in cuts[:-1])
    first, target = cuts[0][1], length * (1 + lead * (parts - 1)) / parts
    assert first == length or abs(first - target) <= align / 2 or first == align > target
    assert len(cuts) == 1 or all(e - s <= max(first, align * math.ceil(length / parts / align) + align)
                                 for s, e in cuts[1:])


def test_the_caller_takes_the_larger_part(monkeypatch):
    """It starts its part while the workers still wait for Python's lock: LEAD_WORK more
    multiply-adds than each of them, to the alignment."""
    monkeypatch.setattr(gemm, "SPLIT_MIN_WORK", 1)
    monkeypatch.setattr(gemm, "SPLIT_ALIGN", 1)
    a, b, out = np.ones((100, 10)), np.ones((10, 50)), np.empty((100, 50))  # 50,000 multiply-adds
    monkeypatch.setattr(gemm, "LEAD_WORK", 10_000)  # a fifth of the whole: 60 rows and 40
    assert [p.args[2].shape[0] for p in gemm._parts(a, b, out, 2)[0]] == [60, 40]


def test_work_below_the_threshold_stays_whole(monkeypatch):
    monkeypatch.setattr(gemm, "SPLIT_MIN_WORK", 1000)
    monkeypatch.setattr(gemm, "LEAD_WORK", 0)
    monkeypatch.setattr(gemm, "GIL_FREE_OUTPUT", 0)
    a, b = np.ones((10, 10)), np.ones((10, 19))
    assert len(gemm._parts(a, b, np.empty((10, 19)), 8)[0]) == 1  # 1900 multiply-adds: one part
    b = np.ones((10, 20))
    assert len(gemm._parts(a, b, np.empty((10, 20)), 8)[0]) == 2


def test_no_part_holds_pythons_lock(monkeypatch):
    """NumPy keeps Python's lock through a matmul of GIL_FREE_OUTPUT outputs or fewer, so
    every part has more: 9 x 64 outputs of 16,000-long sums split along the sums (each part
    all 576 outputs, the second into a partial product), 9 x 50 not at all."""
    monkeypatch.setattr(gemm, "SPLIT_MIN_WORK", 1)
    a, b = np.ones((9, 16000), np.float32), np.ones((16000, 64), np.float32)
    parts, partials = gemm._parts(a, b, np.empty((9, 64), np.float32), 2)
    assert len(parts) == 2 and len(partials) == 1
    assert all(p.args[2].size > gemm.GIL_FREE_OUTPUT for p in parts)
    assert sum(p.args[0].shape[1] for p in parts) == 16000
    parts, partials = gemm._parts(a, b[:, :50], np.empty((9, 50), np.float32), 2)
    assert len(parts) == 1 and partials == []


def test_the_blas_runs_on_one_thread_and_gets_its_count_back(split, monkeypatch):
    get, put = split
    before = get()
    seen = []
    product = gemm._product

    def recording(a, b, out):
        seen.append(get())
        product(a, b, out)
    monkeypatch.setattr(gemm, "_product", recording)
    a, b = np.ones((30, 4)), np.ones((4, 30))
    np.testing.assert_array_equal(gemm.matmul(a, b), np.full((30, 30), 4.0))
    assert seen == [1, 1, 1]  # three parts, each with the BLAS on one thread
    assert get() == before


def test_an_error_in_a_part_reaches_the_caller(split, monkeypatch):
    """Raised from whichever thread ran the failing part; the pool and the BLAS's thread count
    are as before, and the next product is right."""
    get, _ = split
    before = get()
    product = gemm._product

    def failing(a, b, out):
        if out.shape[-1] < 30:
            raise RuntimeError("a part failed")
        product(a, b, out)
    monkeypatch.setattr(gemm, "_product", failing)
    a, b = np.ones((8, 4)), np.ones((4, 30))
    with pytest.raises(RuntimeError, match="a part failed"):
        gemm.matmul(a, b)
    assert get() == before
    assert not gemm._Pool.busy.locked()
    monkeypatch.setattr(gemm, "_product", product)
    np.testing.assert_array_equal(gemm.matmul(a, b), np.full((8, 30), 4.0))


def test_products_from_many_threads_at_once(split):
    """Threads that find the pool busy run their parts themselves; every result right, and the
    BLAS's count given back after the last one."""
    get, _ = split
    before = get()
    rng = np.random.default_rng(1)
    cases = [_operands(rng, (2,), (), 9 + i, 6, 17, np.float64) for i in range(8)]
    wrong = []

    def call(a, b):
        for _ in range(30):
            if not np.allclose(gemm.matmul(a, b), np.matmul(a, b), rtol=1e-12, atol=0):
                wrong.append(a.shape)
    threads = [threading.Thread(target=call, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert get() == before


@pytest.mark.skipif(gemm._sched_getcpu is None or not hasattr(os, "sched_setaffinity"),
                    reason="this platform cannot say or set which CPU a thread runs on")
def test_workers_run_off_the_callers_cpu(split):
    """Where the caller may run on more than one CPU, each worker may run on all of them but
    the one the caller ran on when it handed the parts out."""
    a, b = np.ones((60, 4)), np.ones((4, 60))
    gemm.matmul(a, b)
    allowed = os.sched_getaffinity(0)
    assert len(gemm._Pool.workers) >= 2
    for worker in gemm._Pool.workers[:2]:
        assert os.sched_getaffinity(worker.tid) == worker.cpus
        assert worker.cpus <= allowed and len(worker.cpus) == max(1, len(allowed) - 1)


FORKED = """
import os, sys
import numpy as np
import numbaconv
from numbaconv import _threads
from numbaconv.kernels.cpu import gemm
assert _threads.blas_split, _threads.blas_reason
gemm.SPLIT_MIN_WORK = 1
a, b = np.ones((64, 8)), np.ones((8, 64))
gemm.matmul(a, b)  # the pool's threads start
pid = os.fork()
if pid == 0:
    ok = np.array_equal(gemm.matmul(a, b), np.full((64, 64), 8.0)) and _threads.blas_threads[0]() > 0
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.skipif(_threads.blas_threads is None, reason="NumPy's BLAS is not an OpenBLAS numbaconv reaches")
def test_a_forked_child_splits_its_products_too():
    """NumPy imported first, as PyTorch does: numbaconv splits its GEMMs; a child forked after
    the pool started has none of its threads, and starts its own."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    env.pop("GOTO_THREAD_TIMEOUT", None)
    done = subprocess.run([sys.executable, "-c", FORKED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "0"
