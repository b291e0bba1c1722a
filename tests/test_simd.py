"""The SIMD vector operations of ``kernels/cpu/_simd.py``, compiled into small kernels and
compared with NumPy: loads and stores at any (unaligned) offset, broadcasts and fused
multiply-adds, in float32 and float64, and the lane count the host gives."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from numbaconv.kernels.cpu import _simd
from numbaconv.kernels.cpu._simd import lanes, vfma, vload, vsplat, vstore


@njit(cache=True)
def _axpy_vectors(a, x, y, out, start):
    """out[start + i] = a * x[start + i] + y[start + i] for whole vectors from ``start``; the
    elements before ``start`` and after the last whole vector are left as they were."""
    V = lanes(x)
    i = start
    while i + V <= x.shape[0]:
        vstore(out, i, vfma(vsplat(a), vload(x, i), vload(y, i)))
        i += V
    return i


def test_lanes_fill_the_vector_width():
    assert _simd.VECTOR_BYTES in (16, 32, 64)
    for dtype in (np.float32, np.float64):
        assert lanes(np.empty(1, dtype)) * np.dtype(dtype).itemsize == _simd.VECTOR_BYTES
        assert _lanes_compiled(np.empty(1, dtype)) == lanes(np.empty(1, dtype))


@njit(cache=True)
def _lanes_compiled(a):
    return lanes(a)


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), size=st.integers(0, 80), start=st.integers(0, 7),
       a=st.floats(-4, 4), seed=st.integers(0, 2**16))
def test_vector_fma_matches_numpy(dtype, size, start, a, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    out = np.full(size, np.nan, dtype)
    x0, y0 = x.copy(), y.copy()
    end = _axpy_vectors(dtype(a), x, y, out, start)
    V = lanes(x)
    assert end == (start + max(0, size - start) // V * V if size >= start else start)
    done = slice(min(start, size), end)
    tol = 4 * np.finfo(dtype).eps * (abs(a) * np.abs(x[done]) + np.abs(y[done]))
    assert np.all(np.abs(out[done] - (dtype(a) * x[done] + y[done])) <= tol)
    assert np.isnan(out[:min(start, size)]).all() and np.isnan(out[end:]).all(), "a store reached past its vector"
    assert np.array_equal(x, x0) and np.array_equal(y, y0)


def test_vector_fma_propagates_nan_and_inf():
    V = lanes(np.empty(1, np.float32))
    x = np.zeros(V, np.float32)
    x[0], x[1] = np.nan, np.inf
    y = np.ones(V, np.float32)
    out = np.empty(V, np.float32)
    _axpy_vectors(np.float32(2), x, y, out, 0)
    assert np.isnan(out[0]) and out[1] == np.inf and (out[2:] == 1).all()


@pytest.mark.parametrize("features, width", [("+avx512f,+avx2,+avx", 64), ("+avx2,+avx,-avx512f", 32), ("+sse4.2", 16)])
def test_vector_width_follows_the_features_numba_compiles_for(monkeypatch, features, width):
    monkeypatch.setattr(_simd.config, "CPU_FEATURES", features)
    assert _simd._vector_bytes() == width
