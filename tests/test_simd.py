"""The SIMD vector operations of ``kernels/cpu/_simd.py``, compiled into small kernels and
compared with NumPy: loads and stores at any (unaligned) offset, broadcasts and fused
multiply-adds, in float32 and float64, and the lane count the host gives."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from numbaconv.kernels.cpu import _simd
from numbaconv.kernels.cpu._simd import lanes, vactivate, vfma, vload, vload_first, vsplat, vstore, vsum
from numbaconv.kernels.cpu._window import FASTMATH, activate


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


@pytest.mark.parametrize("name, features, width", [
    (None, "+avx512f,+avx2,+avx", 64), (None, "+avx2,+avx,-avx512f", 32), (None, "+sse4.2", 16),
    ("generic", "", 16), ("skylake-avx512", "+avx512f,+avx", 64)])
def test_vector_width_follows_the_features_numba_compiles_for(monkeypatch, name, features, width):
    monkeypatch.setattr(_simd.config, "CPU_NAME", name)
    monkeypatch.setattr(_simd.config, "CPU_FEATURES", features)
    assert _simd._vector_bytes() == width


@njit(cache=True)
def _vector_sums(x):
    V = lanes(x)
    out = np.empty(x.shape[0] // V, x.dtype)
    for i in range(out.shape[0]):
        out[i] = vsum(vload(x, i * V))
    return out


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), vectors=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_vector_sum_matches_numpy(dtype, vectors, seed):
    x = np.random.default_rng(seed).standard_normal(vectors * lanes(np.empty(1, dtype))).astype(dtype)
    sums = _vector_sums(x)
    ref = x.astype(np.float64).reshape(vectors, -1).sum(axis=1)
    assert np.all(np.abs(sums - ref) <= 8 * np.finfo(dtype).eps * np.abs(x).reshape(vectors, -1).sum(axis=1))
    y = x.copy()
    y[1] = np.nan
    assert np.isnan(_vector_sums(y)[0])


@njit(cache=True)
def _first(x, i, n):
    out = np.full(lanes(x), np.nan, x.dtype)
    vstore(out, 0, vload_first(x, i, n))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_load_of_the_first_lanes_reads_no_further(dtype):
    """Each count of lanes, the vector read ending at the array's last element: the lanes past
    the count are zeros, not what lies in memory past the end (NaNs here)."""
    V = lanes(np.empty(1, dtype))
    for n in range(V + 1):
        memory = np.full(2 * V, np.nan, dtype)
        memory[:n] = np.arange(1, n + 1)
        x = memory[:n]
        got = _first(x, 0, n)
        assert np.array_equal(got[:n], x) and (got[n:] == 0).all(), n


@njit(cache=True)
def _activate_both(x, slope, lo, hi, vector, scalar):
    """``vactivate`` over whole vectors of x into ``vector``, ``activate`` element by element into ``scalar``."""
    V = lanes(x)
    for i in range(0, x.shape[0] - V + 1, V):
        vstore(vector, i, vactivate(vload(x, i), slope, lo, hi))
    for i in range(x.shape[0]):
        scalar[i] = activate(x[i], slope, lo, hi)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope, lo, hi", [(1.0, -np.inf, np.inf), (0.0, 0.0, np.inf), (0.0, 0.0, 6.0),
                                           (0.01, -np.inf, np.inf), (1.0, -0.5, 0.25), (-2.0, -1.0, 3.0)])
def test_vector_activation_is_the_scalar_one(dtype, slope, lo, hi):
    """Identity, ReLU, ReLU6, leaky ReLU, a clip and an odd slope, lane by lane as the scalar
    epilogue: bit for bit, NaN, infinities and signed zeros included."""
    V = lanes(np.empty(1, dtype))
    x = np.random.default_rng(0).standard_normal(8 * V).astype(dtype) * 4
    x[:6] = [np.nan, np.inf, -np.inf, -0.0, 0.0, -np.nan]
    vector, scalar = np.full_like(x, 7), np.full_like(x, 8)
    _activate_both(x, dtype(slope), dtype(lo), dtype(hi), vector, scalar)
    assert np.array_equal(vector.view(np.uint8), scalar.view(np.uint8))
    expected = np.clip(np.where(x < 0, x * dtype(slope), x), lo, hi)  # NumPy's clip keeps NaN too
    np.testing.assert_array_equal(scalar, expected.astype(dtype))


@njit(cache=True, fastmath=FASTMATH)  # as the kernels: products may contract into fused multiply-adds
def _vector_formula(g, t, a, out):
    """out = where(t <= 0, 0, g) + g * (1 - t * t) - where(t > 0, g, g * a), vector by vector
    (whole vectors only) and the same formula on the scalars of the rest."""
    V = lanes(g)
    zero, one = g.dtype.type(0), g.dtype.type(1)
    i = 0
    while i + V <= g.shape[0]:
        G, T = vload(g, i), vload(t, i)
        vstore(out, i, _simd.where(T <= zero, zero, G) + G * (one - T * T) - _simd.where(T > zero, G, G * a))
        i += V
    for j in range(i, g.shape[0]):
        G, T = g[j], t[j]
        out[j] = _simd.where(T <= zero, zero, G) + G * (one - T * T) - _simd.where(T > zero, G, G * a)
    return _simd.data_address(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_operators_match_scalar_code_lane_by_lane(dtype):
    """``+``, ``-``, ``*``, the comparisons and ``where`` on vectors, a scalar broadcast: lane for
    lane, bit for bit, what the same formula gives one element at a time (both contracting
    products into fused multiply-adds alike), NaN, infinities and signed zeros included (an
    ordered comparison with NaN is false)."""
    rng = np.random.default_rng(1)
    V = lanes(np.empty(1, dtype))
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-300, -2.5, 3.0], dtype)
    g = np.concatenate([rng.standard_normal(4 * V), special, special[::-1]]).astype(dtype)
    t = np.concatenate([rng.standard_normal(4 * V), special[::-1], special]).astype(dtype)
    n = len(g) // V * V  # whole vectors, compared with the scalar code on a shifted copy
    out = np.empty(len(g), dtype)
    assert _vector_formula(g, t, dtype(0.1), out) == out.ctypes.data
    ref = np.empty(n, dtype)
    for j in range(n):  # one element at a time: the same formula on scalars
        _vector_formula(g[j:j + 1], t[j:j + 1], dtype(0.1), ref[j:j + 1])
    np.testing.assert_array_equal(out[:n], ref)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = np.where(t <= 0, 0, g) + g * (1 - t * t) - np.where(t > 0, g, g * dtype(0.1))
        scale = np.abs(g) * (3 + t * t)  # the terms' magnitudes: the sum may cancel
        error = np.abs(out - expected)
    finite = np.isfinite(scale)
    assert np.all(error[finite] <= 8 * np.finfo(dtype).eps * scale[finite])
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))



@njit(cache=True)
def _round_trip(x, out):
    """out = x widened to float64, times 3 minus twice itself, rounded back to x's dtype, a
    vector at a time; returns the sum of the widened vectors' lanes."""
    total = 0.0
    for i in range(0, x.shape[0], lanes(x)):
        w = _simd.vcast(vload(x, i), 0.0)
        total += vsum(w)
        vstore(out, i, _simd.vcast(w * 3.0 - w * 2.0, out))
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_cast_keeps_the_lanes_and_rounds_as_scalars_do(dtype):
    """``vcast`` to float64 and back: a float32 vector widens into a float64 vector of as many
    lanes (its lanes' sum is all of theirs), exactly (3x - 2x is x again, where float32
    arithmetic would round 3x), and rounds back as NumPy's cast does, NaN and infinities included."""
    rng = np.random.default_rng(4)
    V = lanes(np.empty(1, dtype))
    x = np.concatenate([rng.standard_normal(4 * V) * 1e3, np.full(V, 16777215.0)]).astype(dtype)
    out = np.empty_like(x)
    assert _round_trip(x, out) == pytest.approx(x.astype(np.float64).sum(), rel=1e-12)
    np.testing.assert_array_equal(out, x)
    special = np.resize(np.array([np.inf, -np.inf, np.nan, -0.0, 1e-40, 3e38, -1.5, 2.0], dtype), V)
    _round_trip(special, out[:V])
    with np.errstate(invalid="ignore", over="ignore"):
        wide = special.astype(np.float64)
        np.testing.assert_array_equal(out[:V], (wide * 3.0 - wide * 2.0).astype(dtype))
