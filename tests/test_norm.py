"""Normalization: batch_norm, group_norm and local_response_norm, forward and backward.

Randomized parity with the naive references (every input rank, float32 and float64, any memory
layout, training and eval, the running-statistics update), parity with PyTorch over several
training steps and in eval mode, central finite differences of every backward in float64, and
bad input (also run in a fresh interpreter, so a crash in compiled code fails the suite).

Tolerance, per element, as conftest.assert_close: RTOL times the sum of the absolute values of
the terms that make up the element. For a normalized output that is (|xhat| + 1) * |weight| +
|bias| (the 1 stands for the rounding of the mean and the variance, one standard deviation's
worth); for grad_x of a normalization s * (g - mean(g) - xhat * mean(g * xhat)) with g = grad_out
* weight, it is s * (|g| + mean|g| + |xhat| * mean|g * xhat|), per block of values sharing a
statistic; for the parameter gradients the sums of |grad_out| * (|xhat| + 1) and |grad_out|.
"""

from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import naive
import numbaconv
import numbaconv.functional.norm as functional_norm
from conftest import DTYPES, LAYOUTS, assert_battery_survives, assert_close, assert_unmodified, check, make_array, numerical_grad, snapshot

EXAMPLES = settings(max_examples=100, deadline=None)
MAX_SIZE = {0: 1, 1: 6, 2: 4, 3: 3}  # largest spatial size per number of spatial dimensions
NEEDS = [(True, True, True), (True, False, False), (False, True, False), (False, False, True), (False, True, True)]
GRAD_NAMES = ("grad_x", "grad_weight", "grad_bias")


def relayout(a, layout):
    """A copy of ``a``'s values laid out as conftest.make_array's ``layout``."""
    if layout == "sliced":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "reversed":
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    out = a.copy()
    out.setflags(write=layout != "readonly")
    return out


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------- scales


def _channel_blocks(x):
    return [(slice(None), c) for c in range(x.shape[1])]


def _group_blocks(x, num_groups):
    per = x.shape[1] // num_groups
    return [(n, slice(g * per, (g + 1) * per)) for n in range(x.shape[0]) for g in range(num_groups)]


def _weight(weight, x):
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    return np.ones(shape) if weight is None else np.abs(_f64(weight)).reshape(shape)


def _xhat(x, blocks, eps, constant=None):
    """|xhat| and s (1 / std) per element, for the blocks (or the constant (mean, var) per channel)."""
    x = _f64(x)
    xhat, s = np.empty_like(x), np.empty_like(x)
    if constant is not None:
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        mean, var = (_f64(a).reshape(shape) for a in constant)
        s[...] = 1 / np.sqrt(var + eps)
        return np.abs(x - mean) * s, s
    for block in blocks:
        v = x[block]
        s[block] = 1 / np.sqrt(v.var() + eps)
        xhat[block] = np.abs(v - v.mean()) * s[block]
    return xhat, s


def forward_scale(x, weight, bias, blocks, eps, constant=None):
    xhat, _ = _xhat(x, blocks, eps, constant)
    return (xhat + 1) * _weight(weight, x) + (0 if bias is None else np.abs(_f64(bias)).reshape(_weight(None, x).shape))


def backward_scales(grad_out, x, weight, blocks, eps, constant=None):
    xhat, s = _xhat(x, blocks, eps, constant)
    go = np.abs(_f64(grad_out))
    g = go * _weight(weight, x)
    grad_x = s * g
    if constant is None:
        for block in blocks:
            grad_x[block] += s[block] * (g[block].mean() + xhat[block] * (g[block] * xhat[block]).mean())
    axes = (0,) + tuple(range(2, x.ndim))
    return grad_x, (go * (xhat + 1)).sum(axis=axes), go.sum(axis=axes)


def lrn_scales(grad_out, x, size, alpha, beta, k):
    """|y| and the sum of absolute terms of grad_x, from the naive reference's pieces."""
    x, go = _f64(x), np.abs(_f64(grad_out))
    d = naive._lrn_divisor(x, size, alpha, k)
    grad_x = go * d ** -beta
    t = go * np.abs(x) * abs(beta) * d ** (-beta - 1) * abs(alpha) / size * 2
    for c in range(x.shape[1]):
        for j in naive._lrn_window(c, x.shape[1], size):
            grad_x[:, j] += t[:, c] * np.abs(x[:, j])
    return np.abs(x) * d ** -beta, grad_x


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    n: int
    c: int
    spatial: tuple
    dtype: type
    layouts: tuple  # of x, grad_out, the per-channel arrays
    weight: bool
    bias: bool
    seed: int

    @property
    def shape(self):
        return (self.n, self.c) + self.spatial

    def x(self):
        rng = np.random.default_rng(self.seed)
        return relayout((rng.standard_normal(self.shape) * 2 + 3).astype(self.dtype), self.layouts[0])

    def grad_out(self):
        return make_array(np.random.default_rng(self.seed + 1), self.shape, self.dtype, self.layouts[1])

    def channel_array(self, offset, positive=False, layout=None):
        a = np.random.default_rng(self.seed + offset).standard_normal(self.c).astype(self.dtype)
        if positive:
            a = np.abs(a) + self.dtype(0.5)
        return relayout(a, self.layouts[2] if layout is None else layout)

    def parameters(self):
        return (self.channel_array(2) if self.weight else None, self.channel_array(3) if self.bias else None)


@st.composite
def cases(draw, min_ndim=2, groups=False):
    nd = draw(st.integers(min_ndim, 5)) - 2
    num_groups = draw(st.integers(1, 3)) if groups else 1
    c = num_groups * draw(st.integers(1, 3))
    case = Case(
        n=draw(st.integers(1, 4)), c=c, spatial=tuple(draw(st.integers(1, MAX_SIZE[nd])) for _ in range(nd)),
        dtype=draw(st.sampled_from(DTYPES)), layouts=tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(3)),
        weight=draw(st.booleans()), bias=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)),
    )
    return (case, num_groups) if groups else case


EPS = st.sampled_from([1e-5, 1e-3, 0.5])


# --------------------------------------------------------------------------- batch norm


@EXAMPLES
@given(case=cases(), training=st.booleans(), track=st.booleans(), momentum=st.floats(0, 1), eps=EPS)
def test_batch_norm_matches_naive(case, training, track, momentum, eps):
    """Output, and in training the in-place running-statistics update, written through any layout."""
    assume(not training or case.n * np.prod(case.spatial) > 1)
    track = track or not training
    x = case.x()
    weight, bias = case.parameters()
    stats_layout = "contiguous" if training and case.layouts[2] == "readonly" else case.layouts[2]
    rm = case.channel_array(4, layout=stats_layout) if track else None
    rv = case.channel_array(5, positive=True, layout=stats_layout) if track else None
    copies = snapshot(x, weight, bias, rm, rv)
    y_ref, rm_ref, rv_ref = naive.batch_norm(x, _f64(rm), _f64(rv), weight, bias, training, momentum, eps)

    y = numbaconv.batch_norm(x, rm, rv, weight, bias, training=training, momentum=momentum, eps=eps)
    constant = None if training else (copies[3], copies[4])
    check(y, y_ref, forward_scale(x, weight, bias, _channel_blocks(x), eps, constant), case.dtype, "batch_norm")
    assert_unmodified((x, weight, bias), copies[:3])
    if track and training:
        # the update is a convex combination of values of size about |running| + |batch statistic|
        assert_close(rm, rm_ref, np.abs(_f64(copies[3])) + 4, case.dtype, "running_mean")
        assert_close(rv, rv_ref, np.abs(_f64(copies[4])) + 8, case.dtype, "running_var")
    else:
        assert_unmodified((rm, rv), copies[3:])


@EXAMPLES
@given(case=cases(), training=st.booleans(), needs=st.sampled_from(NEEDS), eps=EPS, per_channel=st.booleans())
def test_batch_norm_backward_matches_naive(case, training, needs, eps, per_channel):
    """Either route of the training backward: a task per plane or, whatever the channel count
    here, a task per channel (``CHANNEL_TASKS_MIN_CHANNELS``)."""
    assume(not training or case.n * np.prod(case.spatial) > 1)
    with mock.patch.object(functional_norm, "CHANNEL_TASKS_MIN_CHANNELS", 1 if per_channel else 1 << 30):
        _check_batch_norm_backward(case, training, needs, eps)


def _check_batch_norm_backward(case, training, needs, eps):
    x, go = case.x(), case.grad_out()
    weight, bias = case.parameters()
    rm, rv = case.channel_array(4), case.channel_array(5, positive=True)
    copies = snapshot(go, x, weight, bias, rm, rv)
    refs = naive.batch_norm_backward(go, x, rm, rv, weight, training, eps)
    constant = None if training else (rm, rv)
    scales = backward_scales(go, x, weight, _channel_blocks(x), eps, constant)

    grads = numbaconv.batch_norm_backward(go, x, rm, rv, weight, bias, training=training, eps=eps, needs=needs)
    assert isinstance(grads, tuple) and len(grads) == 3
    for name, need, param, got, ref, scale in zip(GRAD_NAMES, needs, (x, weight, bias), grads, refs, scales):
        if need and param is not None:
            check(got, ref, scale, case.dtype, f"batch_norm_backward {name}")
        else:
            assert got is None, f"{name}: not asked for or no parameter, but returned"
    assert_unmodified((go, x, weight, bias, rm, rv), copies)


def test_batch_norm_without_running_statistics_uses_the_batch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5))
    rm, rv = np.zeros(3), np.ones(3)
    y = numbaconv.batch_norm(x, None, None, training=True)
    np.testing.assert_array_equal(y, numbaconv.batch_norm(x, rm, rv, training=True))
    assert_close(y, naive.batch_norm(x, None, None, training=True)[0])
    grads = numbaconv.batch_norm_backward(x, x, None, None, training=True)
    assert grads[1] is None and grads[2] is None and grads[0].shape == x.shape


# --------------------------------------------------------------------------- group norm


@EXAMPLES
@given(case_groups=cases(groups=True), eps=EPS)
def test_group_norm_matches_naive(case_groups, eps):
    case, num_groups = case_groups
    assume(case.n * (case.c // num_groups) * np.prod(case.spatial) > 1)
    x = case.x()
    weight, bias = case.parameters()
    copies = snapshot(x, weight, bias)
    y = numbaconv.group_norm(x, num_groups, weight, bias, eps=eps)
    scale = forward_scale(x, weight, bias, _group_blocks(x, num_groups), eps)
    check(y, naive.group_norm(x, num_groups, weight, bias, eps), scale, case.dtype, "group_norm")
    assert_unmodified((x, weight, bias), copies)


@EXAMPLES
@given(case_groups=cases(groups=True), needs=st.sampled_from(NEEDS), eps=EPS)
def test_group_norm_backward_matches_naive(case_groups, needs, eps):
    case, num_groups = case_groups
    assume(case.n * (case.c // num_groups) * np.prod(case.spatial) > 1)
    x, go = case.x(), case.grad_out()
    weight, bias = case.parameters()
    copies = snapshot(go, x, weight, bias)
    refs = naive.group_norm_backward(go, x, num_groups, weight, eps)
    scales = backward_scales(go, x, weight, _group_blocks(x, num_groups), eps)
    grads = numbaconv.group_norm_backward(go, x, num_groups, weight, bias, eps=eps, needs=needs)
    assert isinstance(grads, tuple) and len(grads) == 3
    for name, need, param, got, ref, scale in zip(GRAD_NAMES, needs, (x, weight, bias), grads, refs, scales):
        if need and param is not None:
            check(got, ref, scale, case.dtype, f"group_norm_backward {name}")
        else:
            assert got is None, f"{name}: not asked for or no parameter, but returned"
    assert_unmodified((go, x, weight, bias), copies)


# --------------------------------------------------------------------------- local response norm


@EXAMPLES
@given(case=cases(min_ndim=3), size=st.integers(1, 6), alpha=st.floats(1e-4, 2), beta=st.floats(-1, 2),
       k=st.floats(0.5, 3))
def test_local_response_norm_matches_naive(case, size, alpha, beta, k):
    x, go = case.x(), case.grad_out()
    copies = snapshot(x, go)
    y_scale, gx_scale = lrn_scales(go, x, size, alpha, beta, k)
    y = numbaconv.local_response_norm(x, size, alpha, beta, k)
    check(y, naive.local_response_norm(x, size, alpha, beta, k), y_scale, case.dtype, "local_response_norm")
    gx = numbaconv.local_response_norm_backward(go, x, size, alpha, beta, k)
    check(gx, naive.local_response_norm_backward(go, x, size, alpha, beta, k), gx_scale, case.dtype,
           "local_response_norm_backward")
    assert_unmodified((x, go), copies)


# --------------------------------------------------------------------------- finite differences


FD_EPS = 1e-6
FD_SHAPES = [(5, 3), (2, 4, 3), (2, 4, 3, 2), (1, 4, 2, 2, 2)]



def _check_finite_differences(forward, backward, x, weight, bias):
    """Rounding of the loss is about 2**-53 * S / FD_EPS, S = sum|R * y|; truncation is O(FD_EPS**2)."""
    R = np.random.default_rng(x.size).standard_normal(x.shape)

    def loss():
        return float(np.sum(forward(x, weight, bias) * R))

    S = float(np.sum(np.abs(R * forward(x, weight, bias)))) + float(np.sum(np.abs(R)))
    analytic = backward(R, x, weight, bias)
    for name, a, got in zip(GRAD_NAMES, (x, weight, bias), analytic):
        num = numerical_grad(loss, a)
        assert got.dtype == np.float64 and got.shape == a.shape, name
        err = float(np.max(np.abs(got - num)))
        assert err <= 1e-7 * S, f"{name}: max |analytic - numerical| = {err:.3g} > {1e-7 * S:.3g}"


def _fd_arrays(shape):
    rng = np.random.default_rng(sum(shape))
    return rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape[1]), rng.standard_normal(shape[1])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", FD_SHAPES, ids=str)
def test_batch_norm_backward_matches_finite_differences(shape, training):
    x, weight, bias = _fd_arrays(shape)
    rm, rv = np.linspace(-1, 1, shape[1]), np.linspace(0.5, 2, shape[1])
    kw = dict(training=training, eps=1e-3)
    _check_finite_differences(
        lambda x, w, b: numbaconv.batch_norm(x, rm.copy(), rv.copy(), w, b, **kw),
        lambda go, x, w, b: numbaconv.batch_norm_backward(go, x, rm, rv, w, b, **kw), x, weight, bias)


@pytest.mark.parametrize("num_groups", [1, 2, 4])
@pytest.mark.parametrize("shape", FD_SHAPES[1:], ids=str)
def test_group_norm_backward_matches_finite_differences(shape, num_groups):
    x, weight, bias = _fd_arrays(shape)
    _check_finite_differences(
        lambda x, w, b: numbaconv.group_norm(x, num_groups, w, b, eps=1e-3),
        lambda go, x, w, b: numbaconv.group_norm_backward(go, x, num_groups, w, b, eps=1e-3), x, weight, bias)


@pytest.mark.parametrize("size", [1, 2, 3, 6])
@pytest.mark.parametrize("shape", FD_SHAPES[1:], ids=str)
def test_local_response_norm_backward_matches_finite_differences(shape, size):
    x, _, _ = _fd_arrays(shape)
    kw = dict(alpha=0.5, beta=0.75, k=1.5)
    _check_finite_differences(
        lambda x, w, b: numbaconv.local_response_norm(x, size, **kw),
        lambda go, x, w, b: (numbaconv.local_response_norm_backward(go, x, size, **kw),), x, None, None)


# --------------------------------------------------------------------------- PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _tensor(torch, a, grad=False):
    return None if a is None else torch.tensor(np.array(a), requires_grad=grad)


def _autograd(torch, y, grad_out, *tensors):
    """The gradients of ``tensors`` (leaves of y's graph) for upstream gradient ``grad_out``."""
    y.backward(torch.tensor(np.array(grad_out)))
    return [t.grad.numpy() for t in tensors]


TORCH_SHAPES = [(6, 4), (3, 4, 7), (2, 4, 5, 3), (2, 4, 3, 2, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=str)
def test_batch_norm_training_steps_then_eval_match_torch(torch, shape, dtype):
    """Three training steps (output, gradients, running statistics after each), then eval mode."""
    rng = np.random.default_rng(len(shape))
    C = shape[1]
    weight = rng.standard_normal(C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    for step, momentum in enumerate((0.1, 0.5, 0.3)):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        go = rng.standard_normal(shape).astype(dtype)
        xt, wt, bt = (_tensor(torch, a, grad=True) for a in (x, weight, bias))
        yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, wt, bt, training=True, momentum=momentum)
        want = _autograd(torch, yt, go, xt, wt, bt)
        rm_before, rv_before = rm.copy(), rv.copy()
        y = numbaconv.batch_norm(x, rm, rv, weight, bias, training=True, momentum=momentum)
        grads = numbaconv.batch_norm_backward(go, x, rm_before, rv_before, weight, bias, training=True)
        blocks = _channel_blocks(x)
        assert_close(y, yt.detach().numpy().astype(np.float64), forward_scale(x, weight, bias, blocks, 1e-5),
                     what=f"step {step} output")
        for name, got, ref, scale in zip(GRAD_NAMES, grads, want, backward_scales(go, x, weight, blocks, 1e-5)):
            assert_close(got, ref.astype(np.float64), scale, what=f"step {step} {name}")
        assert_close(rm, rm_t.numpy().astype(np.float64), np.abs(_f64(rm)) + 4 * (step + 1), what="running_mean")
        assert_close(rv, rv_t.numpy().astype(np.float64), np.abs(_f64(rv)) + 8 * (step + 1) ** 2, what="running_var")
    x = rng.standard_normal(shape).astype(dtype)
    go = rng.standard_normal(shape).astype(dtype)
    xt, wt, bt = (_tensor(torch, a, grad=True) for a in (x, weight, bias))
    yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, wt, bt, training=False)
    want = _autograd(torch, yt, go, xt, wt, bt)
    copies = snapshot(rm, rv)
    y = numbaconv.batch_norm(x, rm, rv, weight, bias, training=False)
    grads = numbaconv.batch_norm_backward(go, x, rm, rv, weight, bias, training=False)
    assert_unmodified((rm, rv), copies)
    constant = (rm, rv)
    assert_close(y, yt.detach().numpy().astype(np.float64),
                 forward_scale(x, weight, bias, None, 1e-5, constant), what="eval output")
    for name, got, ref, scale in zip(GRAD_NAMES, grads, want, backward_scales(go, x, weight, None, 1e-5, constant)):
        assert_close(got, ref.astype(np.float64), scale, what=f"eval {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=str)
def test_group_norm_matches_torch(torch, shape, dtype):
    """Every divisor of C as num_groups: layer norm (1), groups, instance norm (C)."""
    rng = np.random.default_rng(len(shape) + 10)
    x = (rng.standard_normal(shape) * 3 - 2).astype(dtype)
    go = rng.standard_normal(shape).astype(dtype)
    weight, bias = rng.standard_normal((2, shape[1])).astype(dtype)
    for num_groups in (1, 2, shape[1]):
        xt, wt, bt = (_tensor(torch, a, grad=True) for a in (x, weight, bias))
        yt = torch.nn.functional.group_norm(xt, num_groups, wt, bt)
        want = _autograd(torch, yt, go, xt, wt, bt)
        y = numbaconv.group_norm(x, num_groups, weight, bias)
        grads = numbaconv.group_norm_backward(go, x, num_groups, weight, bias)
        blocks = _group_blocks(x, num_groups)
        assert_close(y, yt.detach().numpy().astype(np.float64), forward_scale(x, weight, bias, blocks, 1e-5),
                     what=f"num_groups={num_groups} output")
        for name, got, ref, scale in zip(GRAD_NAMES, grads, want, backward_scales(go, x, weight, blocks, 1e-5)):
            assert_close(got, ref.astype(np.float64), scale, what=f"num_groups={num_groups} {name}")


@pytest.mark.parametrize("shape", TORCH_SHAPES[1:], ids=str)
def test_layer_and_instance_norm_are_group_norm(torch, shape):
    """num_groups=1 normalizes like torch's layer_norm over (C, *), num_groups=C like instance_norm."""
    x = np.random.default_rng(3).standard_normal(shape)
    xt = torch.tensor(x)
    F = torch.nn.functional
    assert_close(numbaconv.group_norm(x, 1), F.layer_norm(xt, shape[1:]).numpy())
    assert_close(numbaconv.group_norm(x, shape[1]), F.instance_norm(xt).numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", TORCH_SHAPES[1:], ids=str)
def test_local_response_norm_matches_torch(torch, shape, size, dtype):
    rng = np.random.default_rng(size + len(shape))
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    go = rng.standard_normal(shape).astype(dtype)
    kw = dict(alpha=0.3, beta=0.75, k=1.5)
    xt = _tensor(torch, x, grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, **kw)
    (want,) = _autograd(torch, yt, go, xt)
    y_scale, gx_scale = lrn_scales(go, x, size, **kw)
    assert_close(numbaconv.local_response_norm(x, size, **kw), yt.detach().numpy().astype(np.float64), y_scale,
                 what="forward")
    assert_close(numbaconv.local_response_norm_backward(go, x, size, **kw), want.astype(np.float64), gx_scale,
                 what="grad_x")


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (0, 4)], ids=str)
def test_empty_input(shape, dtype):
    """As PyTorch: empty results, zero parameter gradients, running statistics left alone."""
    x = np.zeros(shape, dtype)
    C = shape[1]
    w, b, rm, rv = (np.full(C, v, dtype) for v in (2, 3, 5, 7))
    assert numbaconv.batch_norm(x, rm, rv, w, b, training=True).shape == shape
    assert (rm == 5).all() and (rv == 7).all()
    for gx, gw, gb in (numbaconv.batch_norm_backward(x, x, rm, rv, w, b, training=True),
                       numbaconv.group_norm_backward(x, x, 1, w, b)):
        assert gx.shape == shape and gx.dtype == dtype
        assert gw.dtype == dtype and gb.dtype == dtype and not gw.any() and not gb.any()
    assert numbaconv.group_norm(x, 1, w, b).shape == shape
    if len(shape) > 2:
        assert numbaconv.local_response_norm(x, 3).shape == shape
        assert numbaconv.local_response_norm_backward(x, x, 3).shape == shape


def test_float64_is_computed_in_float64_and_float32_stays_float32():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5)) * 10 + 100  # a large mean: the centring must be exact
    y64 = numbaconv.batch_norm(x, None, None, training=True)
    assert np.max(np.abs(y64 - naive.batch_norm(x, None, None, training=True)[0])) < 1e-12
    for fn in (lambda a: numbaconv.batch_norm(a, None, None, training=True), lambda a: numbaconv.group_norm(a, 2),
               lambda a: numbaconv.local_response_norm(a, 3)):
        assert fn(x.astype(np.float32)).dtype == np.float32 and fn(x).dtype == np.float64


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("route", ["serial", "parallel"])
def test_statistics_of_planes_longer_than_a_block_stay_exact(monkeypatch, route, per_channel):
    """A plane's statistics are taken block by block (``kernels.cpu.norm.BLOCK`` elements) and
    merged: planes of several blocks and a ragged last one, a mean 10^4 standard deviations away
    from zero and drifting along the plane, so every merge re-centres, against two-pass float64;
    batch norm's backward by planes or by channels."""
    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1 << 40 if route == "serial" else 0)
    monkeypatch.setattr(functional_norm, "CHANNEL_TASKS_MIN_CHANNELS", 1 if per_channel else 1 << 30)
    from numbaconv.kernels.cpu.norm import BLOCK
    rng = np.random.default_rng(12)
    S = 2 * BLOCK + 37
    x = rng.standard_normal((2, 3, S)) + 1e4 + np.linspace(0, 50, S)
    g = rng.standard_normal(x.shape) + 3.0
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    y = numbaconv.batch_norm(x, None, None, w, b, training=True)
    assert_close(y, naive.batch_norm(x, None, None, w, b, training=True)[0], what="batch_norm")
    got = numbaconv.batch_norm_backward(g, x, None, None, w, b, training=True)
    for a, ref, what in zip(got, naive.batch_norm_backward(g, x, None, None, w, training=True), ("x", "w", "b")):
        assert_close(a, ref, what=f"batch_norm_backward grad_{what}")
    assert_close(numbaconv.group_norm(x, 3, w, b), naive.group_norm(x, 3, w, b), what="group_norm")


@pytest.mark.parametrize("name", ["batch_norm", "batch_norm_backward", "group_norm", "group_norm_backward",
                                  "local_response_norm", "local_response_norm_backward"])
def test_functional_exports_the_same_functions(name):
    from numbaconv import functional

    assert getattr(functional, name) is getattr(numbaconv, name)


# --------------------------------------------------------------------------- bad input

F32, F64 = np.float32, np.float64
X = np.zeros((2, 4, 3), F32)
V = np.ones(4, F32)  # a valid per-channel array
VALUE, TYPE, EITHER = ValueError, TypeError, (ValueError, TypeError)


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def bn(**kw):
    args = dict(x=X, running_mean=V.copy(), running_var=V.copy(), weight=V, bias=V, training=True)
    args.update(kw)
    return lambda: numbaconv.batch_norm(**args)


def bn_bw(**kw):
    args = dict(grad_out=X, x=X, running_mean=V, running_var=V, weight=V, bias=V, training=True)
    args.update(kw)
    return lambda: numbaconv.batch_norm_backward(**args)


def gn(**kw):
    args = dict(x=X, num_groups=2, weight=V, bias=V)
    args.update(kw)
    return lambda: numbaconv.group_norm(**args)


def gn_bw(**kw):
    args = dict(grad_out=X, x=X, num_groups=2, weight=V, bias=V)
    args.update(kw)
    return lambda: numbaconv.group_norm_backward(**args)


def lrn(**kw):
    args = dict(x=X, size=3)
    args.update(kw)
    return lambda: numbaconv.local_response_norm(**args)


def lrn_bw(**kw):
    args = dict(grad_out=X, x=X, size=3)
    args.update(kw)
    return lambda: numbaconv.local_response_norm_backward(**args)


# (id, call, exception, regex the message must match)
CASES = [
    ("bn-x-list", bn(x=X.tolist()), TYPE, r"\bx\b"),
    ("bn-x-int", bn(x=X.astype(np.int32)), TYPE, r"\bx\b"),
    ("bn-x-ndim-1", bn(x=np.zeros(4, F32)), VALUE, r"\bx\b.*dimensions"),
    ("bn-x-ndim-6", bn(x=np.zeros((2, 4, 1, 1, 1, 2), F32)), VALUE, r"\bx\b.*dimensions"),
    ("bn-running-mean-length", bn(running_mean=np.ones(3, F32)), VALUE, r"running_mean"),
    ("bn-running-var-length", bn(running_var=np.ones(5, F32)), VALUE, r"running_var"),
    ("bn-running-mean-ndim", bn(running_mean=np.ones((4, 1), F32)), VALUE, r"running_mean"),
    ("bn-running-var-dtype", bn(running_var=V.astype(F64)), TYPE, r"running_var"),
    ("bn-running-mean-list", bn(running_mean=[0.0] * 4), TYPE, r"running_mean"),
    ("bn-running-var-none-only", bn(running_var=None), VALUE, r"running_var"),
    ("bn-eval-without-stats", bn(running_mean=None, running_var=None, training=False), VALUE, r"running_mean"),
    ("bn-running-mean-readonly", bn(running_mean=_readonly(V)), VALUE, r"running_mean.*writeable"),
    ("bn-weight-length", bn(weight=np.ones(3, F32)), VALUE, r"weight"),
    ("bn-weight-dtype", bn(weight=V.astype(F64)), TYPE, r"weight"),
    ("bn-bias-length", bn(bias=np.ones(5, F32)), VALUE, r"bias"),
    ("bn-bias-dtype", bn(bias=V.astype(np.int64)), TYPE, r"bias"),
    ("bn-momentum-str", bn(momentum="0.1"), TYPE, r"momentum"),
    ("bn-momentum-none", bn(momentum=None), TYPE, r"momentum"),
    ("bn-momentum-nan", bn(momentum=float("nan")), VALUE, r"momentum"),
    ("bn-eps-zero-training", bn(eps=0.0), VALUE, r"eps"),
    ("bn-eps-negative-eval", bn(eps=-1e-5, training=False), VALUE, r"eps"),
    ("bn-eps-str", bn(eps="1e-5"), TYPE, r"eps"),
    ("bn-training-str", bn(training="yes"), TYPE, r"training"),
    ("bn-one-value-per-channel", bn(x=np.zeros((1, 4), F32)), VALUE, r"more than 1 value per channel"),
    ("bn-one-value-per-channel-3d", bn(x=np.zeros((1, 4, 1, 1, 1), F32)), VALUE, r"more than 1 value"),
    ("bn-bw-grad-out-shape", bn_bw(grad_out=np.zeros((2, 4, 4), F32)), VALUE, r"grad_out"),
    ("bn-bw-grad-out-dtype", bn_bw(grad_out=X.astype(F64)), TYPE, r"grad_out"),
    ("bn-bw-grad-out-list", bn_bw(grad_out=X.tolist()), TYPE, r"grad_out"),
    ("bn-bw-needs-two", bn_bw(needs=(True, True)), EITHER, r"needs"),
    ("bn-bw-needs-ints", bn_bw(needs=(1, 1, 1)), EITHER, r"needs"),
    ("bn-bw-eval-without-stats", bn_bw(running_mean=None, running_var=None, training=False), VALUE,
     r"running_mean"),
    ("bn-bw-one-value-per-channel", bn_bw(x=np.zeros((1, 4), F32), grad_out=np.zeros((1, 4), F32)), VALUE,
     r"more than 1 value"),
    ("bn-bw-weight-length", bn_bw(weight=np.ones(2, F32)), VALUE, r"weight"),
    ("gn-x-ndim", gn(x=np.zeros(4, F32)), VALUE, r"\bx\b"),
    ("gn-x-dtype", gn(x=X.astype(np.float16)), TYPE, r"\bx\b"),
    ("gn-groups-not-dividing", gn(num_groups=3), VALUE, r"num_groups"),
    ("gn-groups-zero", gn(num_groups=0), VALUE, r"num_groups"),
    ("gn-groups-negative", gn(num_groups=-2), VALUE, r"num_groups"),
    ("gn-groups-float", gn(num_groups=2.0), TYPE, r"num_groups"),
    ("gn-groups-bool", gn(num_groups=True), TYPE, r"num_groups"),
    ("gn-weight-length", gn(weight=np.ones(8, F32)), VALUE, r"weight"),
    ("gn-bias-dtype", gn(bias=V.astype(F64)), TYPE, r"bias"),
    ("gn-eps-zero", gn(eps=0), VALUE, r"eps"),
    ("gn-eps-none", gn(eps=None), TYPE, r"eps"),
    ("gn-one-value", gn(x=np.zeros((1, 4), F32), num_groups=4), VALUE, r"more than 1 value"),
    ("gn-bw-grad-out-shape", gn_bw(grad_out=X[:1]), VALUE, r"grad_out"),
    ("gn-bw-needs-str", gn_bw(needs="xwb"), EITHER, r"needs"),
    ("gn-bw-groups", gn_bw(num_groups=5), VALUE, r"num_groups"),
    ("lrn-x-ndim-2", lrn(x=np.zeros((2, 4), F32)), VALUE, r"\bx\b"),
    ("lrn-x-list", lrn(x=X.tolist()), TYPE, r"\bx\b"),
    ("lrn-size-zero", lrn(size=0), VALUE, r"size"),
    ("lrn-size-float", lrn(size=3.0), TYPE, r"size"),
    ("lrn-alpha-str", lrn(alpha="1e-4"), TYPE, r"alpha"),
    ("lrn-beta-inf", lrn(beta=float("inf")), VALUE, r"beta"),
    ("lrn-k-none", lrn(k=None), TYPE, r"\bk\b"),
    ("lrn-bw-grad-out-shape", lrn_bw(grad_out=np.zeros((2, 3, 3), F32)), VALUE, r"grad_out"),
    ("lrn-bw-grad-out-dtype", lrn_bw(grad_out=X.astype(F64)), TYPE, r"grad_out"),
    ("lrn-bw-size-negative", lrn_bw(size=-1), VALUE, r"size"),
]


def test_baselines_are_valid():
    """The cases differ from these calls in one argument only, so each error is that argument's."""
    for make in (bn, gn, lrn, lrn_bw):
        assert make()().shape == X.shape
    for make in (bn_bw, gn_bw):
        assert all(g.shape == a.shape for g, a in zip(make()(), (X, V, V)))
    # the boundaries of the rules are accepted
    assert numbaconv.batch_norm(X, V, V, eps=0.0).shape == X.shape  # eval takes eps = 0, as PyTorch
    assert numbaconv.batch_norm(np.zeros((1, 4), F32), V, V).shape == (1, 4)  # one value is fine in eval
    assert numbaconv.batch_norm(np.zeros((2, 4), F32), None, None, training=True).shape == (2, 4)
    assert numbaconv.group_norm(np.zeros((2, 2), F32), 2).shape == (2, 2)  # PyTorch counts the batch
    assert numbaconv.local_response_norm(X, 1).shape == X.shape


@pytest.mark.parametrize("call, exception, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_the_argument(call, exception, match):
    with pytest.raises(exception, match=match):
        call()



def test_battery_in_a_subprocess():
    assert_battery_survives("test_norm")


@pytest.mark.parametrize("route", ["serial", "parallel"])
@pytest.mark.parametrize("training", [True, False])
def test_both_kernel_routes_match_naive(monkeypatch, route, training):
    """Each kernel runs as its serial twin below a size and in parallel above it; tests use small
    arrays, so both routes are forced here, through the threshold."""
    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1 << 40 if route == "serial" else 0)
    rng = np.random.default_rng(11)
    x, g = make_array(rng, (3, 4, 5, 2), np.float64), make_array(rng, (3, 4, 5, 2), np.float64)
    mean, var, w, b = rng.standard_normal(4), rng.random(4) + 0.5, rng.standard_normal(4), rng.standard_normal(4)
    y = numbaconv.batch_norm(x, mean.copy(), var.copy(), w, b, training=training)
    assert_close(y, naive.batch_norm(x, mean, var, w, b, training=training)[0], what=f"{route} batch_norm")
    got = numbaconv.batch_norm_backward(g, x, mean, var, w, b, training=training)
    for a, ref, what in zip(got, naive.batch_norm_backward(g, x, mean, var, w, training=training), ("x", "w", "b")):
        assert_close(a, ref, what=f"{route} batch_norm_backward grad_{what}")



@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["channel_backward", "plane_grad_input"])
def test_input_gradient_streams_large_outputs(kernel, dtype, offset):
    """An input gradient of ``STREAM_MIN_BYTES`` or more is written whole vectors at a time past
    the caches, in float64 and rounded once, the elements before the first aligned vector and
    after the last one at a time: an output of that size 0 to 3 elements past an allocation's
    start, in either dtype, planes of an odd length; against the formula in float64 from the
    coefficients the kernel used, and against the same kernel on one channel at a time (outputs
    small enough to be cached) within a few units in the last place of the terms."""
    from numbaconv.kernels.cpu import _simd, norm

    N, C = 2, 4
    S = _simd.STREAM_MIN_BYTES // np.dtype(dtype).itemsize // (N * C) + 37
    rng = np.random.default_rng(offset)
    x = (rng.standard_normal((N, C, S)) * 2 + 1).astype(dtype)
    go = rng.standard_normal((N, C, S)).astype(dtype)
    scale, given = rng.standard_normal(C), rng.standard_normal((4, N, C))
    eps = 1e-5

    def run(go, x, gx, c):
        """The kernel on channels c, into gx; its (center, a, b, d), each (N or 1, channels, 1):
        gx = go * a + (x - center) * b + d."""
        if kernel == "plane_grad_input":
            coefficients = [np.ascontiguousarray(v[:, c]) for v in given]
            norm.plane_grad_input(go, x, *coefficients, gx)
            return [v[:, :, None] for v in coefficients]
        mean, m2, sum_go, dot = (np.empty(x.shape[1]) for _ in range(4))
        norm.channel_backward(go, x, scale[c], eps, gx, mean, m2, sum_go, dot)
        invstd = 1 / np.sqrt(m2 / (N * S) + eps)
        a = invstd * scale[c]
        return [v[None, :, None] for v in (mean, a, -a * invstd * invstd * dot / (N * S), -a * sum_go / (N * S))]

    gx = np.full(N * C * S + 16, 7.0, dtype)[offset:offset + N * C * S].reshape(N, C, S)
    center, a, b, d = run(go, x, gx, slice(None))
    terms = np.abs(go * a) + np.abs((x - center) * b) + np.abs(d)
    check(gx, go * a + (x - center) * b + d, terms, dtype, f"{kernel}, streamed")
    for c in range(C):  # a channel a call: a quarter of the output, cached stores
        one = slice(c, c + 1)
        piece = np.empty((N, 1, S), dtype)
        run(np.ascontiguousarray(go[:, one]), np.ascontiguousarray(x[:, one]), piece, one)
        off = np.abs(gx[:, one].astype(np.float64) - piece) > 4 * np.finfo(dtype).eps * terms[:, one]
        assert not off.any(), f"{kernel}: channel {c}, {off.sum()} elements differ streamed and cached"
