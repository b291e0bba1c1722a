"""linear, flatten and dropout: randomized parity with the naive reference and with PyTorch,
float64 finite differences of linear's backward, dropout's reproducibility and statistics, and
bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
import numbaconv
from conftest import DTYPES, LAYOUTS, assert_battery_survives, assert_close, check, make_array, unmodified

EXAMPLES = settings(max_examples=60, deadline=None)
EPS = 1e-6
NEEDS = [(True, True, True), (True, False, False), (False, True, False), (False, False, True), (False, True, True)]


@st.composite
def linear_cases(draw):
    """(x, weight, bias, grad_out) with x of 1 to 4 dimensions, any layout, sizes from 0."""
    lead = tuple(draw(st.integers(0, 3)) for _ in range(draw(st.integers(0, 3))))
    n_in, n_out = draw(st.integers(0, 6)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layouts = [draw(st.sampled_from(LAYOUTS)) if n_in else "contiguous" for _ in range(3)]
    x = make_array(rng, lead + (n_in,), dtype, layouts[0]) if n_in else np.zeros(lead + (0,), dtype)
    w = make_array(rng, (n_out, n_in), dtype, layouts[1]) if n_in else np.zeros((n_out, 0), dtype)
    b = make_array(rng, (n_out,), dtype) if draw(st.booleans()) else None
    grad_out = make_array(rng, lead + (n_out,), dtype, layouts[2] if lead else "contiguous")
    return x, w, b, grad_out


def _abs(a):
    return None if a is None else np.abs(a.astype(np.float64))


@EXAMPLES
@given(case=linear_cases(), needs=st.sampled_from(NEEDS))
def test_linear_matches_naive(case, needs):
    x, w, b, grad_out = case
    check_unmodified = unmodified(*(a for a in case if a is not None))
    y = numbaconv.linear(x, w, b)
    check(y, naive.linear(x, w, b), naive.linear(_abs(x), _abs(w), _abs(b)), x.dtype, "linear")
    refs = naive.linear_backward(grad_out, x, w)
    scales = naive.linear_backward(_abs(grad_out), _abs(x), _abs(w))
    got = numbaconv.linear_backward(grad_out, x, w, needs=needs)
    for g, ref, scale, need, what in zip(got, refs, scales, needs, ("grad_x", "grad_weight", "grad_bias")):
        if need:
            check(g, ref, scale, x.dtype, f"linear_backward {what}")
        else:
            assert g is None, f"{what} was not asked for"
    check_unmodified()


@pytest.mark.parametrize("route", ["numba", "blas"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_small_kernel_and_blas_agree_with_naive(monkeypatch, route, dtype):
    """Both routes of the CPU product: the one-thread kernels (small products) and BLAS (large
    ones), forced by the threshold. 7 rows: a 4-row block and a 3-row rest; 37 features: the
    4-step loop over them and a rest of 1."""
    from numbaconv.kernels.cpu import linear as small_gemm

    monkeypatch.setattr(small_gemm, "SMALL_MACS", 1 << 40 if route == "numba" else -1)
    rng = np.random.default_rng(7)
    x, w = make_array(rng, (7, 37), dtype, "fortran"), make_array(rng, (13, 37), dtype)
    b, grad_out = make_array(rng, (13,), dtype), make_array(rng, (7, 13), dtype)
    check(numbaconv.linear(x, w, b), naive.linear(x, w, b), naive.linear(_abs(x), _abs(w), _abs(b)), dtype, route)
    scales = naive.linear_backward(_abs(grad_out), _abs(x), _abs(w))
    for g, ref, scale in zip(numbaconv.linear_backward(grad_out, x, w), naive.linear_backward(grad_out, x, w), scales):
        check(g, ref, scale, dtype, f"{route} backward")


@pytest.mark.parametrize("x_shape", [(5,), (3, 5), (2, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward_matches_finite_differences(x_shape, bias):
    rng = np.random.default_rng(len(x_shape))
    x, w = rng.standard_normal(x_shape), rng.standard_normal((4, 5))
    b = rng.standard_normal(4) if bias else None
    r = rng.standard_normal(x_shape[:-1] + (4,))
    grad_x, grad_w, grad_b = numbaconv.linear_backward(r, x, w)

    def loss():
        return float((numbaconv.linear(x, w, b) * r).sum())

    for got, a in [(grad_x, x), (grad_w, w)] + ([(grad_b, b)] if bias else []):
        numerical = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            orig = a[idx]
            a[idx] = orig + EPS
            plus = loss()
            a[idx] = orig - EPS
            numerical[idx] = (plus - loss()) / (2 * EPS)
            a[idx] = orig
        np.testing.assert_allclose(got, numerical, rtol=1e-6, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(case=linear_cases())
def test_linear_matches_torch(case):
    torch = pytest.importorskip("torch")
    x, w, b, grad_out = case
    xt, wt = torch.tensor(np.array(x, order="C"), requires_grad=True), torch.tensor(np.array(w, order="C"), requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(np.array(grad_out, order="C")))
    scale = naive.linear(_abs(x), _abs(w), _abs(b))
    check(numbaconv.linear(x, w, b), yt.detach().numpy().astype(np.float64), scale, x.dtype, "linear vs torch")
    scales = naive.linear_backward(_abs(grad_out), _abs(x), _abs(w))
    refs = [xt.grad, wt.grad] + ([bt.grad] if b is not None else [])
    for got, ref, scale in zip(numbaconv.linear_backward(grad_out, x, w), refs, scales):
        check(got, ref.numpy().astype(np.float64), scale, x.dtype, "linear_backward vs torch")


# --------------------------------------------------------------------------- flatten


@pytest.mark.parametrize("shape, start, end", [
    ((2, 3, 4, 5), 1, -1), ((2, 3, 4, 5), 0, -1), ((2, 3, 4, 5), 1, 2), ((2, 3, 4, 5), -2, -1),
    ((2, 3, 4, 5), 2, 2), ((2, 3), 0, 0), ((4,), 0, -1), ((), 0, -1), ((), -1, 0), ((2, 0, 3), 1, 2),
])
def test_flatten_as_torch(shape, start, end):
    torch = pytest.importorskip("torch")
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    y = numbaconv.flatten(x, start, end)
    ref = torch.flatten(torch.tensor(x), start, end).numpy()
    assert y.shape == ref.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, ref)
    assert np.shares_memory(y, x) or x.size == 0, "flatten of a contiguous array must be a view"


def test_flatten_defaults_and_non_contiguous():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 6)).astype(np.float32)
    assert numbaconv.flatten(x).shape == (2, 72)
    sliced = x[..., ::2]  # merging the last dims of a strided view needs a copy
    y = numbaconv.flatten(sliced)
    np.testing.assert_array_equal(y, sliced.reshape(2, 36))
    assert numbaconv.flatten(x.transpose(1, 0, 2, 3), 2).shape == (3, 2, 24)


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_statistics_and_exact_scaling(dtype, p):
    x = np.random.default_rng(1).standard_normal((100, 10_000)).astype(dtype)
    check_unmodified = unmodified(x)
    y, mask = numbaconv.dropout(x, p, rng=7)
    assert mask.dtype == bool and mask.shape == x.shape and y.dtype == dtype and y.flags.c_contiguous
    kept = mask.mean()
    sigma = np.sqrt(p * (1 - p) / x.size)
    assert abs(kept - (1 - p)) < 5 * sigma, f"kept fraction {kept}, expected {1 - p}"
    scale = dtype(1 / (1 - p))
    np.testing.assert_array_equal(y[mask], x[mask] * scale)
    assert not y[~mask].any()
    check_unmodified()
    grad_out = np.random.default_rng(2).standard_normal(x.shape).astype(dtype)
    g = numbaconv.dropout_backward(grad_out, mask, p)
    np.testing.assert_array_equal(g, np.where(mask, grad_out * scale, 0))
    assert_close(y, naive.dropout(x, mask, p), np.abs(naive.dropout(x, mask, p)) + 1e-30)


def test_dropout_is_reproducible():
    x = np.random.default_rng(0).standard_normal((64, 33))
    y1, m1 = numbaconv.dropout(x, 0.3, rng=42)
    y2, m2 = numbaconv.dropout(x, 0.3, rng=np.random.default_rng(42))
    y3, m3 = numbaconv.dropout(x.astype(np.float32), 0.3, rng=42)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(m1, m3)  # one mask per seed, whatever the dtype
    _, m4 = numbaconv.dropout(x, 0.3, rng=43)
    assert not np.array_equal(m1, m4)
    rng = np.random.default_rng(5)
    _, a = numbaconv.dropout(x, 0.3, rng=rng)
    _, b = numbaconv.dropout(x, 0.3, rng=rng)
    assert not np.array_equal(a, b), "a Generator advances from call to call"
    _, a = numbaconv.dropout(x, 0.3)
    _, b = numbaconv.dropout(x, 0.3)
    assert not np.array_equal(a, b), "rng=None draws fresh entropy"


@pytest.mark.parametrize("training, p", [(False, 0.5), (True, 0.0), (False, 0.0)])
def test_dropout_off_returns_a_copy_and_ones(training, p):
    x = np.asfortranarray(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32))
    y, mask = numbaconv.dropout(x, p, training=training, rng=1)
    np.testing.assert_array_equal(y, x)
    assert y.dtype == x.dtype and y.flags.c_contiguous and not np.shares_memory(x, y)
    assert mask.shape == x.shape and mask.all()
    np.testing.assert_array_equal(numbaconv.dropout_backward(x, mask, 0.0), x)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dropout_any_layout(layout):
    x = make_array(np.random.default_rng(3), (6, 7), np.float64, layout)
    y, mask = numbaconv.dropout(x, 0.25, rng=3)
    np.testing.assert_array_equal(y, np.where(mask, x * (1 / 0.75), 0))
    g = numbaconv.dropout_backward(x, mask if layout == "contiguous" else mask.T.copy().T, 0.25)
    np.testing.assert_array_equal(g, y)


def test_dropout_propagates_nan_as_torch():
    """torch multiplies by the scaled mask, so a dropped NaN or inf is still NaN."""
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 8, np.float32)
    y, mask = numbaconv.dropout(x, 0.5, rng=0)
    assert not mask.all() and mask.any()
    assert np.isnan(y[0::4]).all() and np.isnan(y[1::4][~mask[1::4]]).all()
    assert (y[1::4][mask[1::4]] == np.inf).all()


def test_dropout_empty_and_zero_dimensional():
    for x in (np.zeros((0, 3), np.float32), np.array(2.0)):
        y, mask = numbaconv.dropout(x, 0.5, rng=0)
        assert y.shape == mask.shape == x.shape
        assert numbaconv.dropout_backward(y, mask).shape == x.shape


# --------------------------------------------------------------------------- bad input

F32, F64 = np.float32, np.float64
VALUE, TYPE, EITHER = ValueError, TypeError, (ValueError, TypeError)
X, W, B = np.zeros((2, 3), F32), np.zeros((4, 3), F32), np.zeros(4, F32)
GO = np.zeros((2, 4), F32)
MASK = np.ones((2, 3), bool)

CASES = [
    ("linear-x-list", lambda: numbaconv.linear(X.tolist(), W), TYPE, r"linear: x must be a numpy.ndarray"),
    ("linear-x-int", lambda: numbaconv.linear(X.astype(np.int32), W), TYPE, r"linear: x"),
    ("linear-x-0d", lambda: numbaconv.linear(np.array(1.0, F32), W), VALUE, r"linear: x must have at least 1"),
    ("linear-weight-dtype", lambda: numbaconv.linear(X, W.astype(F64)), TYPE, r"weight"),
    ("linear-weight-ndim", lambda: numbaconv.linear(X, W[None]), VALUE, r"weight must have 2 dimensions"),
    ("linear-weight-shape", lambda: numbaconv.linear(X, W.T), VALUE, r"weight must have shape \(out_features, 3\)"),
    ("linear-bias-shape", lambda: numbaconv.linear(X, W, B[:3]), VALUE, r"bias must have shape \(4,\)"),
    ("linear-bias-dtype", lambda: numbaconv.linear(X, W, B.astype(F64)), TYPE, r"bias"),
    ("linear-bias-list", lambda: numbaconv.linear(X, W, [0.0] * 4), TYPE, r"bias"),
    ("linear-bw-grad-shape", lambda: numbaconv.linear_backward(GO.T, X, W), VALUE, r"grad_out"),
    ("linear-bw-grad-dtype", lambda: numbaconv.linear_backward(GO.astype(F64), X, W), TYPE, r"grad_out"),
    ("linear-bw-weight", lambda: numbaconv.linear_backward(GO, X, W[:, :2]), VALUE, r"weight"),
    ("linear-bw-needs-two", lambda: numbaconv.linear_backward(GO, X, W, needs=(True, True)), TYPE, r"needs"),
    ("linear-bw-needs-ints", lambda: numbaconv.linear_backward(GO, X, W, needs=(1, 1, 1)), TYPE, r"needs"),
    ("linear-bw-needs-str", lambda: numbaconv.linear_backward(GO, X, W, needs="xwb"), TYPE, r"needs"),
    ("flatten-x-list", lambda: numbaconv.flatten([[1.0]]), TYPE, r"flatten: x"),
    ("flatten-start-range", lambda: numbaconv.flatten(X, 2), VALUE, r"flatten: start_dim must be in \[-2, 1\]"),
    ("flatten-end-range", lambda: numbaconv.flatten(X, 0, -3), VALUE, r"end_dim"),
    ("flatten-start-after-end", lambda: numbaconv.flatten(X, 1, 0), VALUE, r"start_dim must not come after end_dim"),
    ("flatten-start-float", lambda: numbaconv.flatten(X, 1.0), TYPE, r"start_dim must be an int"),
    ("flatten-1d-default", lambda: numbaconv.flatten(np.zeros(3, F32)), VALUE, r"start_dim"),
    ("dropout-x-list", lambda: numbaconv.dropout([1.0]), TYPE, r"dropout: x"),
    ("dropout-x-int", lambda: numbaconv.dropout(np.ones(3, np.int64)), TYPE, r"dropout: x"),
    ("dropout-p-one", lambda: numbaconv.dropout(X, 1.0), VALUE, r"p must be in \[0, 1\), got 1.0"),
    ("dropout-p-negative", lambda: numbaconv.dropout(X, -0.1), VALUE, r"dropout: p"),
    ("dropout-p-nan", lambda: numbaconv.dropout(X, float("nan")), VALUE, r"dropout: p"),
    ("dropout-p-str", lambda: numbaconv.dropout(X, "0.5"), TYPE, r"dropout: p must be a real number"),
    ("dropout-p-none", lambda: numbaconv.dropout(X, None), TYPE, r"dropout: p"),
    ("dropout-training-str", lambda: numbaconv.dropout(X, 0.5, "yes"), TYPE, r"training must be a bool"),
    ("dropout-rng-float", lambda: numbaconv.dropout(X, 0.5, rng=1.5), TYPE, r"rng"),
    ("dropout-rng-legacy", lambda: numbaconv.dropout(X, 0.5, rng=np.random.RandomState(0)), TYPE, r"rng"),
    ("dropout-rng-negative", lambda: numbaconv.dropout(X, 0.5, rng=-1), VALUE, r"rng"),
    ("dropout-bw-mask-float", lambda: numbaconv.dropout_backward(X, MASK.astype(F32)), TYPE, r"mask must be a bool"),
    ("dropout-bw-mask-list", lambda: numbaconv.dropout_backward(X, MASK.tolist()), TYPE, r"mask"),
    ("dropout-bw-mask-shape", lambda: numbaconv.dropout_backward(X, MASK.T), VALUE, r"mask must have grad_out's shape"),
    ("dropout-bw-grad-int", lambda: numbaconv.dropout_backward(MASK.astype(int), MASK), TYPE, r"grad_out"),
    ("dropout-bw-p", lambda: numbaconv.dropout_backward(X, MASK, 1.5), VALUE, r"dropout_backward: p"),
]


@pytest.mark.parametrize("call, exception, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_the_argument(call, exception, match):
    with pytest.raises(exception, match=match):
        call()


def test_battery_in_a_subprocess():
    assert_battery_survives("test_linear")
