"""cross_entropy, nll_loss and mse_loss, forward and backward, every reduction: randomized parity
with the naive reference and with PyTorch, float64 finite differences, NaN and inf as in PyTorch,
and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
import numbaconv
from conftest import DTYPES, LAYOUTS, assert_battery_survives, check, make_array, numerical_grad

EXAMPLES = settings(max_examples=60, deadline=None)
REDUCTIONS = ("mean", "sum", "none")
CLASS_LOSSES = ("cross_entropy", "nll_loss")
TARGET_DTYPES = (np.int64, np.int32, np.uint8, np.int16)


def grad_out_for(rng, reduction, shape, dtype, spelling):
    """The upstream gradient of a loss output: an array for "none"; a float or 0-d array otherwise."""
    if reduction == "none":
        return rng.standard_normal(shape).astype(dtype)
    g = float(rng.standard_normal())
    return g if spelling == "float" else np.array(g, dtype)


@st.composite
def class_cases(draw):
    """(scores, target, reduction, grad_out): scores (N, C, *extra) in any layout."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    extra = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2))))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scores = make_array(rng, (n, c) + extra, dtype, draw(st.sampled_from(LAYOUTS)))
    target = rng.integers(0, c, (n,) + extra).astype(draw(st.sampled_from(TARGET_DTYPES)))
    reduction = draw(st.sampled_from(REDUCTIONS))
    grad_out = grad_out_for(rng, reduction, target.shape, dtype, draw(st.sampled_from(("float", "array"))))
    return scores, target, reduction, grad_out


@st.composite
def mse_cases(draw):
    shape = tuple(draw(st.integers(1, 4)) for _ in range(draw(st.integers(0, 3))))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layouts = [draw(st.sampled_from(LAYOUTS)) if shape else "contiguous" for _ in range(2)]
    x, t = (make_array(rng, shape, dtype, layout) for layout in layouts)
    reduction = draw(st.sampled_from(REDUCTIONS))
    return x, t, reduction, grad_out_for(rng, reduction, shape, dtype, draw(st.sampled_from(("float", "array"))))


def check_loss(got, ref, dtype, reduction, what, scale=None):
    if reduction != "none":
        assert isinstance(got, np.ndarray) and got.shape == (), f"{what}: a 0-d array expected, got {got!r}"
    check(got, np.asarray(ref, np.float64), scale, dtype, what)


def _abs(a):
    return np.abs(np.asarray(a, np.float64))


# --------------------------------------------------------------------------- parity with naive


@EXAMPLES
@given(case=class_cases(), name=st.sampled_from(CLASS_LOSSES))
def test_class_losses_match_naive(case, name):
    scores, target, reduction, grad_out = case
    copies = scores.copy(), target.copy()
    got = getattr(numbaconv, name)(scores, target, reduction)
    check_loss(got, getattr(naive, name)(scores, target, reduction), scores.dtype, reduction, name)
    got = getattr(numbaconv, f"{name}_backward")(grad_out, scores, target, reduction)
    ref = getattr(naive, f"{name}_backward")(grad_out, scores, target, reduction)
    check(got, ref, None, scores.dtype, f"{name}_backward")
    np.testing.assert_array_equal(scores, copies[0])
    np.testing.assert_array_equal(target, copies[1])


@EXAMPLES
@given(case=mse_cases())
def test_mse_matches_naive(case):
    x, t, reduction, grad_out = case
    scale = naive.mse_loss(_abs(x), -_abs(t), reduction)  # (|x| + |t|)**2, reduced
    check_loss(numbaconv.mse_loss(x, t, reduction), naive.mse_loss(x, t, reduction), x.dtype, reduction, "mse_loss",
               np.maximum(scale, 1e-30))
    ref = naive.mse_loss_backward(grad_out, x, t, reduction)
    scale = naive.mse_loss_backward(_abs(grad_out), _abs(x), -_abs(t), reduction)
    check(numbaconv.mse_loss_backward(grad_out, x, t, reduction), ref, scale + 1e-30, x.dtype, "mse_loss_backward")


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e30, 1e30, 0.0]], np.float32)
    target = np.array([1, 1])
    np.testing.assert_allclose(numbaconv.cross_entropy(logits, target, "none"), [1e4, 0.0])
    grad = numbaconv.cross_entropy_backward(1.0, logits, target, "sum")
    np.testing.assert_allclose(grad, [[1, -1, 0], [0, 0, 0]])


# --------------------------------------------------------------------------- finite differences



@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, shape", [("cross_entropy", (4, 5)), ("cross_entropy", (2, 3, 2, 2)),
                                         ("nll_loss", (3, 4)), ("nll_loss", (2, 3, 2)),
                                         ("mse_loss", (3, 4)), ("mse_loss", ())])
def test_backward_matches_finite_differences(name, shape, reduction):
    rng = np.random.default_rng(len(shape))
    scores = np.array(rng.standard_normal(shape) * 2)  # an array even when 0-d
    if name == "mse_loss":
        target = np.array(rng.standard_normal(shape))
    else:
        target = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    r = rng.standard_normal(np.shape(target)) if reduction == "none" else np.array(1.7)
    forward = getattr(numbaconv, name)
    numerical = numerical_grad(lambda: float((forward(scores, target, reduction) * r).sum()), scores)
    got = getattr(numbaconv, f"{name}_backward")(r, scores, target, reduction)
    np.testing.assert_allclose(got, numerical, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- PyTorch


def torch_loss(torch, name, scores, target, reduction, grad_out):
    """(loss, d loss / d scores) from torch.nn.functional."""
    st_ = torch.tensor(np.array(scores, order="C"), requires_grad=True)  # torch's nll_loss2d backward needs C order
    if name == "mse_loss":
        tt = torch.tensor(np.array(target, order="C"))
    else:
        tt = torch.tensor(target.astype(np.int64))
    loss = getattr(torch.nn.functional, name)(st_, tt, reduction=reduction)
    loss.backward(torch.tensor(np.array(grad_out, dtype=scores.dtype)))
    return loss.detach().numpy(), st_.grad.numpy()


@settings(max_examples=40, deadline=None)
@given(case=class_cases(), name=st.sampled_from(CLASS_LOSSES))
def test_class_losses_match_torch(case, name):
    torch = pytest.importorskip("torch")
    scores, target, reduction, grad_out = case
    loss, grad = torch_loss(torch, name, scores, target, reduction, grad_out)
    check_loss(getattr(numbaconv, name)(scores, target, reduction), loss.astype(np.float64), scores.dtype,
               reduction, f"{name} vs torch")
    got = getattr(numbaconv, f"{name}_backward")(grad_out, scores, target, reduction)
    check(got, grad.astype(np.float64), None, scores.dtype, f"{name}_backward vs torch")


@settings(max_examples=40, deadline=None)
@given(case=mse_cases())
def test_mse_matches_torch(case):
    torch = pytest.importorskip("torch")
    x, t, reduction, grad_out = case
    loss, grad = torch_loss(torch, "mse_loss", x, t, reduction, grad_out)
    scale = np.maximum(naive.mse_loss(_abs(x), -_abs(t), reduction), 1e-30)
    check_loss(numbaconv.mse_loss(x, t, reduction), loss.astype(np.float64), x.dtype, reduction, "mse vs torch", scale)
    scale = naive.mse_loss_backward(_abs(grad_out), _abs(x), -_abs(t), reduction) + 1e-30
    check(numbaconv.mse_loss_backward(grad_out, x, t, reduction), grad.astype(np.float64), scale, x.dtype,
          "mse_loss_backward vs torch")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ("cross_entropy", "nll_loss", "mse_loss"))
def test_nan_inf_and_empty_batches_as_torch(name, reduction):
    torch = pytest.importorskip("torch")
    inf, nan = np.inf, np.nan
    scores = np.array([[0.0, 1.0, 2.0], [nan, 0.0, 1.0], [inf, 0.0, 1.0], [-inf, 0.0, 1.0], [2.0, -inf, 1.0]])
    target = np.array([0, 1, 0, 1, 0]) if name != "mse_loss" else np.array([[0.0, 1.0, inf]] * 5)
    for s, t in [(scores, target), (scores[:0], target[:0])]:
        g = np.ones(t.shape[:1]) if reduction == "none" else 1.0
        if name == "mse_loss" and reduction == "none":
            g = np.ones(t.shape)
        loss, grad = torch_loss(torch, name, s, t, reduction, g)
        np.testing.assert_allclose(getattr(numbaconv, name)(s, t, reduction), loss, rtol=1e-12, equal_nan=True)
        got = getattr(numbaconv, f"{name}_backward")(g, s, t, reduction)
        np.testing.assert_allclose(got, grad, rtol=1e-12, atol=1e-15, equal_nan=True)


def test_scalar_losses_are_0d_arrays_of_the_input_dtype():
    for dtype in DTYPES:
        logits = np.zeros((3, 4), dtype)
        target = np.array([0, 1, 3])
        for reduction in ("mean", "sum"):
            for loss in (numbaconv.cross_entropy(logits, target, reduction), numbaconv.nll_loss(logits, target, reduction),
                         numbaconv.mse_loss(logits, logits, reduction)):
                assert type(loss) is np.ndarray and loss.shape == () and loss.dtype == dtype
        grad = numbaconv.cross_entropy_backward(np.array(2.0, dtype), logits, target)
        assert grad.dtype == dtype and grad.flags.c_contiguous


# --------------------------------------------------------------------------- bad input

F32, F64 = np.float32, np.float64
VALUE, TYPE = ValueError, TypeError
L = np.zeros((3, 4), F32)
T = np.array([0, 3, 1])
L4 = np.zeros((2, 4, 5, 5), F32)
T4 = np.zeros((2, 5, 5), np.int64)


def ce(**kw):
    args = dict(logits=L, target=T)
    args.update(kw)
    return lambda: numbaconv.cross_entropy(**args)


def ce_bw(**kw):
    args = dict(grad_out=1.0, logits=L, target=T)
    args.update(kw)
    return lambda: numbaconv.cross_entropy_backward(**args)


def nll(**kw):
    args = dict(log_probs=L, target=T)
    args.update(kw)
    return lambda: numbaconv.nll_loss(**args)


def mse(**kw):
    args = dict(input=L, target=L)
    args.update(kw)
    return lambda: numbaconv.mse_loss(**args)


def mse_bw(**kw):
    args = dict(grad_out=1.0, input=L, target=L)
    args.update(kw)
    return lambda: numbaconv.mse_loss_backward(**args)


CASES = [
    ("ce-logits-list", ce(logits=L.tolist()), TYPE, r"cross_entropy: logits must be a numpy.ndarray"),
    ("ce-logits-int", ce(logits=L.astype(np.int32)), TYPE, r"cross_entropy: logits must have dtype"),
    ("ce-logits-1d", ce(logits=L[0]), VALUE, r"logits must have shape \(N, C\)"),
    ("ce-target-float", ce(target=T.astype(F32)), TYPE, r"target must have an integer dtype"),
    ("ce-target-bool", ce(target=T.astype(bool)), TYPE, r"target must have an integer dtype"),
    ("ce-target-list", ce(target=[0, 3, 1]), TYPE, r"target must be a numpy.ndarray"),
    ("ce-target-too-large", ce(target=np.array([0, 4, 1])), VALUE, r"target must hold class indices in \[0, 4\)"),
    ("ce-target-negative", ce(target=np.array([0, -1, 1])), VALUE, r"target must hold class indices"),
    ("ce-target-ignore-index", ce(target=np.array([0, -100, 1])), VALUE, r"target"),
    ("ce-target-shape", ce(target=T[:2]), VALUE, r"target must have shape \(3,\)"),
    ("ce-target-2d", ce(target=T[:, None]), VALUE, r"target must have shape"),
    ("ce-target-spatial", ce(logits=L4, target=T4[:, :4]), VALUE, r"target must have shape \(2, 5, 5\)"),
    ("ce-reduction", ce(reduction="average"), VALUE, r"reduction must be one of 'mean', 'sum', 'none'"),
    ("ce-reduction-none-object", ce(reduction=None), VALUE, r"reduction"),
    ("ce-bw-grad-str", ce_bw(grad_out="1"), TYPE, r"grad_out"),
    ("ce-bw-grad-bool", ce_bw(grad_out=True), TYPE, r"grad_out"),
    ("ce-bw-grad-1d-for-mean", ce_bw(grad_out=np.ones(3, F32)), VALUE, r"grad_out must have the output's shape \(\)"),
    ("ce-bw-grad-dtype", ce_bw(grad_out=np.array(1.0, F64)), TYPE, r"grad_out"),
    ("ce-bw-grad-scalar-for-none", ce_bw(grad_out=1.0, reduction="none"), TYPE, r"grad_out"),
    ("ce-bw-grad-shape-for-none", ce_bw(grad_out=np.ones(4, F32), reduction="none"), VALUE, r"grad_out"),
    ("ce-bw-target", ce_bw(target=np.array([5, 0, 0])), VALUE, r"target"),
    ("ce-bw-reduction", ce_bw(reduction="max"), VALUE, r"reduction"),
    ("nll-log-probs-list", nll(log_probs=L.tolist()), TYPE, r"nll_loss: log_probs"),
    ("nll-log-probs-0d", nll(log_probs=np.array(1.0, F32)), VALUE, r"log_probs"),
    ("nll-target-float", nll(target=T.astype(F64)), TYPE, r"nll_loss: target"),
    ("nll-target-range", nll(target=np.array([0, 1, 9], np.uint8)), VALUE, r"target.*\[0, 4\)"),
    ("nll-reduction", nll(reduction="Mean"), VALUE, r"reduction"),
    ("nll-bw-grad", lambda: numbaconv.nll_loss_backward([1.0], L, T), TYPE, r"grad_out"),
    ("mse-input-list", mse(input=L.tolist()), TYPE, r"mse_loss: input"),
    ("mse-target-dtype", mse(target=L.astype(F64)), TYPE, r"target"),
    ("mse-target-int", mse(target=L.astype(np.int64)), TYPE, r"target"),
    ("mse-target-shape", mse(target=L[:2]), VALUE, r"target must have input's shape"),
    ("mse-target-broadcast", mse(target=L[:1]), VALUE, r"target"),
    ("mse-reduction", mse(reduction=""), VALUE, r"reduction"),
    ("mse-bw-grad-none-shape", mse_bw(grad_out=np.ones(4, F32), reduction="none"), VALUE, r"grad_out"),
    ("mse-bw-grad-none-dtype", mse_bw(grad_out=L.astype(F64), reduction="none"), TYPE, r"grad_out"),
    ("mse-bw-grad-list", mse_bw(grad_out=[1.0]), TYPE, r"grad_out"),
]


@pytest.mark.parametrize("call, exception, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_the_argument(call, exception, match):
    with pytest.raises(exception, match=match):
        call()


def test_battery_in_a_subprocess():
    assert_battery_survives("test_loss")
