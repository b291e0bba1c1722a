"""The CUDA twins of the activation, softmax, pooling, normalization, dropout and loss kernels,
each against its CPU twin, forward and backward, float32 and float64.

The CPU ops are tested against the naive references, finite differences and PyTorch in their
own files; here every public op runs once on host arrays and once on the same arrays copied to
the GPU, and the GPU's result (a device array) must match. Shapes are tiny and odd (5, 7: no
block or warp size divides them), because Numba's CUDA simulator (the default, see conftest)
runs a Python thread per CUDA thread; NUMBA_ENABLE_CUDASIM=0 runs the same tests on a real GPU.
"""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DTYPES, assert_close, numerical_grad
from numbaconv import functional as F
from numbaconv._device import cuda_status, is_device_array, to_host

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not cuda_status()[0], reason=f"CUDA: {cuda_status()[1]}"),
]


def gpu(a):
    """A host array copied to the GPU (with numba's own copy, which keeps a 0-d array 0-d);
    anything else as it is."""
    from numba import cuda
    return cuda.to_device(a) if isinstance(a, np.ndarray) else a


def same_on_gpu(fn, *args, what=None, **kwargs):
    """Run ``fn`` on host arrays and on their GPU copies; every result of the GPU call must be a
    device array (None where the host gave None) equal to the host's within the float tolerance
    (exactly, for integer and bool results). Returns the host results."""
    ref = fn(*args, **kwargs)
    got = fn(*map(gpu, args), **{k: gpu(v) for k, v in kwargs.items()})
    refs, gots = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
    assert len(refs) == len(gots)
    for i, (r, g) in enumerate(zip(refs, gots)):
        name = f"{what or fn.__name__} result {i}"
        if r is None:
            assert g is None, name
            continue
        assert is_device_array(g), f"{name}: {type(g).__name__} is not a GPU array"
        g = to_host(g)
        if r.dtype.kind == "f":  # NaN where the host has NaN, the rest within the tolerance
            nan = np.isnan(r)
            np.testing.assert_array_equal(np.isnan(g), nan, err_msg=f"{name}: NaN positions")
            assert_close(np.where(nan, 0, g), np.where(nan, 0, r).astype(np.float64), dtype=r.dtype, what=name)
        else:
            assert g.dtype == r.dtype and g.shape == r.shape, name
            np.testing.assert_array_equal(g, r, err_msg=name)
    return ref


# --------------------------------------------------------------------------- activations, softmax

ACTIVATIONS = [
    (F.relu, F.relu_backward, {}, "x"),
    (F.leaky_relu, F.leaky_relu_backward, {"negative_slope": 0.2}, "x"),
    (F.elu, F.elu_backward, {"alpha": 0.7}, "x"),
    (F.sigmoid, F.sigmoid_backward, {}, "y"),
    (F.tanh, F.tanh_backward, {}, "y"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("forward, backward, kw, saved", ACTIVATIONS, ids=lambda v: getattr(v, "__name__", None))
def test_activation(rng, dtype, forward, backward, kw, saved):
    x = rng.standard_normal((3, 7, 5)).astype(dtype)
    x[0, 0, :3] = 0  # the kink: relu's gradient is 0 there, elu's the x <= 0 branch
    y = same_on_gpu(forward, x, **kw)
    g = rng.standard_normal(x.shape).astype(dtype)
    same_on_gpu(backward, g, x if saved == "x" else y, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", [
    ((3, 7), 1), ((2, 5, 3, 3), 1), ((2, 3, 5), -1), ((2, 3, 5), 0), ((), 0),
    ((3, 45), 1), ((2, 37), -1),  # rows of a warp or more: a block per row
])
@pytest.mark.parametrize("log", [False, True])
def test_softmax(rng, dtype, shape, dim, log):
    forward, backward = (F.log_softmax, F.log_softmax_backward) if log else (F.softmax, F.softmax_backward)
    x = np.asarray(3 * rng.standard_normal(shape), dtype=dtype)
    y = same_on_gpu(forward, x, dim)
    same_on_gpu(backward, np.asarray(rng.standard_normal(shape), dtype=dtype), y, dim)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's NumPy scalars warn on inf - inf
def test_activations_propagate_nan_and_inf():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0], dtype=np.float32)
    for fn in (F.relu, F.leaky_relu, F.elu, F.tanh):
        ref, got = fn(x), to_host(fn(gpu(x)))
        np.testing.assert_array_equal(got, ref, err_msg=fn.__name__)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(ref), err_msg=fn.__name__)
    for width in (3, 40):  # a thread per row, a block per row
        rows = np.random.default_rng(width).standard_normal((4, width))
        rows[0, 1], rows[1, 1], rows[2] = np.nan, np.inf, -np.inf
        got, ref = to_host(F.softmax(gpu(rows), 1)), F.softmax(rows, 1)
        assert np.isnan(got[:3]).all() and np.isnan(ref[:3]).all()
        assert_close(got[3:], ref[3:])


@pytest.mark.parametrize("call", [
    lambda x: F.relu(x),
    lambda x: F.max_pool1d(x[None], 2),
    lambda x: F.batch_norm(x, None, None, training=True),
    lambda x: F.mse_loss(x, x),
])
def test_strided_gpu_input_is_refused(rng, call):
    """The kernels index contiguous memory; a strided view is named, not silently copied."""
    x = gpu(rng.standard_normal((4, 6)).astype(np.float32))[:, ::2]
    with pytest.raises(ValueError, match=r"must be C-contiguous on the GPU"):
        call(x)


@pytest.mark.parametrize("call", [
    lambda x: F.relu_backward(gpu(x), x),
    lambda x: F.softmax_backward(x, gpu(x), 1),
])
def test_mixed_devices_are_refused(call):
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"on the GPU.*on the host|on the host.*on the GPU"):
        call(x)


# --------------------------------------------------------------------------- pooling

POOL_SHAPES = {1: (2, 3, 7), 2: (2, 3, 5, 7), 3: (1, 2, 5, 4, 3)}

SLIDING = [  # (ndim, kernel_size, stride, padding, dilation, ceil_mode)
    (1, 3, 2, 1, 1, True),
    (2, (3, 2), (2, 1), (1, 0), (1, 2), False),
    (2, 3, 2, 1, 1, True),
    (3, 2, 1, 1, 1, False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim, kernel_size, stride, padding, dilation, ceil_mode", SLIDING)
def test_max_pool(rng, dtype, ndim, kernel_size, stride, padding, dilation, ceil_mode):
    forward, backward = getattr(F, f"max_pool{ndim}d"), getattr(F, f"max_pool{ndim}d_backward")
    x = rng.standard_normal(POOL_SHAPES[ndim]).astype(dtype)
    x.reshape(-1)[::4] = x.reshape(-1)[1]  # ties: the first maximum in window order wins
    kw = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    y, idx = same_on_gpu(forward, x, kernel_size, return_indices=True, **kw)
    g = rng.standard_normal(y.shape).astype(dtype)
    same_on_gpu(backward, g, x, kernel_size, indices=idx, **kw)
    same_on_gpu(backward, g, x, kernel_size, **kw)  # indices recomputed


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim, kernel_size, stride, padding, _, ceil_mode", SLIDING)
@pytest.mark.parametrize("count_include_pad, divisor_override", [(True, None), (False, None), (False, 5)])
def test_avg_pool(rng, dtype, ndim, kernel_size, stride, padding, _, ceil_mode, count_include_pad, divisor_override):
    forward, backward = getattr(F, f"avg_pool{ndim}d"), getattr(F, f"avg_pool{ndim}d_backward")
    x = rng.standard_normal(POOL_SHAPES[ndim]).astype(dtype)
    kw = dict(stride=stride, padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
              divisor_override=divisor_override)
    y = same_on_gpu(forward, x, kernel_size, **kw)
    same_on_gpu(backward, rng.standard_normal(y.shape).astype(dtype), x, kernel_size, **kw)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN from powers of negative x, on both sides
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim, norm_type, kernel_size, stride, ceil_mode", [
    (1, 2, 3, 2, True), (2, 1.5, 2, 1, False), (2, float("inf"), (3, 2), 2, True), (3, 3, 2, None, False),
])
def test_lp_pool(rng, dtype, ndim, norm_type, kernel_size, stride, ceil_mode):
    forward, backward = getattr(F, f"lp_pool{ndim}d"), getattr(F, f"lp_pool{ndim}d_backward")
    x = rng.standard_normal(POOL_SHAPES[ndim]).astype(dtype)
    if norm_type not in (1.5,):
        x.reshape(-1)[:3] = 0  # a window of zeros: its sum of powers has gradient zero
    else:
        x = np.abs(x)  # a fractional power of a negative number is NaN on both sides
    kw = dict(stride=stride, ceil_mode=ceil_mode)
    y = same_on_gpu(forward, x, norm_type, kernel_size, **kw)
    same_on_gpu(backward, rng.standard_normal(y.shape).astype(dtype), x, norm_type, kernel_size, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim, output_size", [(1, 3), (2, (3, None)), (2, 1), (3, (2, 3, 2))])
def test_adaptive_pool(rng, dtype, ndim, output_size):
    x = rng.standard_normal(POOL_SHAPES[ndim]).astype(dtype)
    y = same_on_gpu(getattr(F, f"adaptive_avg_pool{ndim}d"), x, output_size)
    g = rng.standard_normal(y.shape).astype(dtype)
    same_on_gpu(getattr(F, f"adaptive_avg_pool{ndim}d_backward"), g, x, output_size)
    y, idx = same_on_gpu(getattr(F, f"adaptive_max_pool{ndim}d"), x, output_size, return_indices=True)
    same_on_gpu(getattr(F, f"adaptive_max_pool{ndim}d_backward"), g, x, output_size, indices=idx)


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_pool2d_geometries(data):
    """Any 2-D max or average pooling geometry, on a small input."""
    size = data.draw(st.tuples(st.integers(1, 6), st.integers(1, 6)), label="size")
    kernel = tuple(data.draw(st.integers(1, n + 1)) for n in size)
    stride = tuple(data.draw(st.integers(1, 3)) for _ in size)
    padding = tuple(data.draw(st.integers(0, k // 2)) for k in kernel)
    ceil_mode = data.draw(st.booleans(), label="ceil_mode")
    if any(n + 2 * p < k for n, k, p in zip(size, kernel, padding)):
        return
    x = np.random.default_rng(data.draw(st.integers(0, 2**16))).standard_normal((1, 2, *size))
    kw = dict(stride=stride, padding=padding, ceil_mode=ceil_mode)
    y, idx = same_on_gpu(F.max_pool2d, x, kernel, return_indices=True, **kw)
    same_on_gpu(F.max_pool2d_backward, np.ones_like(y), x, kernel, indices=idx, **kw)
    y = same_on_gpu(F.avg_pool2d, x, kernel, **kw)
    same_on_gpu(F.avg_pool2d_backward, np.ones_like(y), x, kernel, **kw)


def test_gpu_indices_are_checked(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    idx[0, 1, 1, 1] = 16
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\).*to 16"):
        F.max_pool2d_backward(gpu(np.ones_like(y)), gpu(x), 2, indices=gpu(idx))
    with pytest.raises(TypeError, match="indices must have dtype int64"):
        F.max_pool2d_backward(gpu(np.ones_like(y)), gpu(x), 2, indices=gpu(idx.astype(np.int32)))
    with pytest.raises(ValueError, match=r"max_pool2d_backward: all arrays must be on one device.*indices on the host"):
        F.max_pool2d_backward(gpu(np.ones_like(y)), gpu(x), 2, indices=idx)


# --------------------------------------------------------------------------- normalization

NEEDS = (True, True, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 2), (2, 2, 5, 5)])  # few planes: the simulator takes ~40 ms a block
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(rng, dtype, shape, training):
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    weight, bias = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    mean, var = rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)
    gpu_mean, gpu_var = gpu(mean), gpu(var)
    ref = F.batch_norm(x, mean, var, weight, bias, training=training, momentum=0.3)
    got = F.batch_norm(gpu(x), gpu_mean, gpu_var, gpu(weight), gpu(bias), training=training, momentum=0.3)
    assert is_device_array(got)
    assert_close(to_host(got), ref.astype(np.float64), dtype=dtype, what="batch_norm")
    # the running statistics are updated in place on the GPU (training) or left alone
    assert_close(to_host(gpu_mean), mean.astype(np.float64), dtype=dtype, what="running_mean")
    assert_close(to_host(gpu_var), var.astype(np.float64), dtype=dtype, what="running_var")
    g = rng.standard_normal(shape).astype(dtype)
    same_on_gpu(F.batch_norm_backward, g, x, mean, var, weight, bias, training=training, needs=NEEDS)
    same_on_gpu(F.batch_norm_backward, g, x, mean, var, None, None, training=training, needs=(True, False, False))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups", [((2, 4, 5), 2), ((1, 3, 3, 3), 1), ((1, 4, 7), 4)])
def test_group_norm(rng, dtype, shape, groups):
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 - 1).astype(dtype)
    weight, bias = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    same_on_gpu(F.group_norm, x, groups, weight, bias)
    same_on_gpu(F.group_norm, x, groups)
    g = rng.standard_normal(shape).astype(dtype)
    same_on_gpu(F.group_norm_backward, g, x, groups, weight, bias, needs=NEEDS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, size", [((2, 7, 5), 3), ((2, 5, 3, 3), 4), ((1, 3, 2), 7)])
def test_local_response_norm(rng, dtype, shape, size):
    x = rng.standard_normal(shape).astype(dtype)
    kw = dict(alpha=0.3, beta=0.75, k=2.0)
    same_on_gpu(F.local_response_norm, x, size, **kw)
    same_on_gpu(F.local_response_norm_backward, rng.standard_normal(shape).astype(dtype), x, size, **kw)


def test_norm_mixed_devices_are_refused(rng):
    x = rng.standard_normal((2, 3, 4))
    with pytest.raises(ValueError, match="batch_norm: all arrays must be on one device.*running_mean on the host"):
        F.batch_norm(gpu(x), np.zeros(3), gpu(np.ones(3)), training=True)


# --------------------------------------------------------------------------- losses, dropout

REDUCTIONS = ("mean", "sum", "none")


def _loss_grad_out(rng, reduction, shape, dtype):
    """A grad_out for each reduction: a 0-d array ("mean"), a real number ("sum"), an array ("none")."""
    if reduction == "none":
        return rng.standard_normal(shape).astype(dtype)
    return np.array(1.7, dtype=dtype) if reduction == "mean" else 0.6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 5)])
def test_class_losses(rng, dtype, reduction, shape):
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    target = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    g = _loss_grad_out(rng, reduction, target.shape, dtype)
    same_on_gpu(F.cross_entropy, logits, target, reduction)
    same_on_gpu(F.cross_entropy_backward, g, logits, target, reduction)
    log_probs = F.log_softmax(logits, 1)
    same_on_gpu(F.nll_loss, log_probs, target, reduction)
    same_on_gpu(F.nll_loss_backward, g, log_probs, target, reduction)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss(rng, dtype, reduction):
    x, y = rng.standard_normal((3, 7)).astype(dtype), rng.standard_normal((3, 7)).astype(dtype)
    same_on_gpu(F.mse_loss, x, y, reduction)
    same_on_gpu(F.mse_loss_backward, _loss_grad_out(rng, reduction, x.shape, dtype), x, y, reduction)


def test_loss_target_checked_on_gpu(rng):
    logits = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 3\), got values in \[0, 3\]"):
        F.cross_entropy(gpu(logits), gpu(np.array([0, 1, 2, 3])))
    with pytest.raises(ValueError, match="nll_loss: all arrays must be on one device.*target on the host"):
        F.nll_loss(gpu(logits), np.array([0, 1, 2, 0]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7), ()])
def test_dropout(rng, dtype, shape):
    x = np.asarray(rng.standard_normal(shape), dtype=dtype)
    out, mask = same_on_gpu(F.dropout, x, 0.4, True, 123)  # one seed: the same mask on both devices
    assert mask.shape == x.shape
    same_on_gpu(F.dropout_backward, np.asarray(rng.standard_normal(shape), dtype=dtype), mask, 0.4)
    same_on_gpu(F.dropout, x, 0.4, False, 123)
    with pytest.raises(ValueError, match="dropout_backward: all arrays must be on one device.*mask on the host"):
        F.dropout_backward(gpu(x), mask, 0.4)


EMPTY = np.zeros((0, 3, 4, 4))
EMPTY_TARGET = np.zeros((0,), np.int64)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the mean of no loss is 0 / 0, NaN on both devices
@pytest.mark.parametrize("fn, args", [
    (F.relu_backward, (EMPTY, EMPTY)),
    (F.softmax, (EMPTY, 1)),
    (F.max_pool2d_backward, (EMPTY[:, :, :2, :2], EMPTY, 2)),
    (F.avg_pool2d_backward, (EMPTY[:, :, :2, :2], EMPTY, 2)),
    (F.lp_pool2d, (EMPTY, 2, 2)),
    (F.group_norm_backward, (EMPTY, EMPTY, 3, np.ones(3), np.ones(3))),
    (F.local_response_norm_backward, (EMPTY, EMPTY, 2)),
    (F.cross_entropy, (EMPTY[:, :, 0, 0], EMPTY_TARGET)),
    (F.cross_entropy_backward, (1.0, EMPTY[:, :, 0, 0], EMPTY_TARGET)),
    (F.mse_loss, (EMPTY, EMPTY, "sum")),
    (F.dropout_backward, (EMPTY, EMPTY.astype(bool), 0.5)),
], ids=lambda v: getattr(v, "__name__", ""))
def test_empty_batch(fn, args):
    same_on_gpu(fn, *(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a for a in args))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("forward, backward", [
    (lambda x: F.lp_pool2d(x, 2, 2, 1), lambda g, x: F.lp_pool2d_backward(g, x, 2, 2, 1)),
    (lambda x: F.lp_pool2d(x, float("inf"), (2, 3)), lambda g, x: F.lp_pool2d_backward(g, x, float("inf"), (2, 3))),
    (lambda x: F.batch_norm(x, None, None, training=True), lambda g, x: F.batch_norm_backward(g, x, None, None,
                                                                                              training=True)[0]),
], ids=["lp_pool", "lp_pool_inf", "batch_norm"])
def test_gpu_backward_matches_finite_differences(rng, forward, backward):
    """The GPU's own composition (lp pooling's kernels, batch norm's device path) against central
    differences of the GPU forward, in float64."""
    x = rng.standard_normal((1, 2, 2, 3))  # few elements: two GPU forwards each
    y = to_host(forward(gpu(x)))
    g = rng.standard_normal(y.shape)
    numeric = numerical_grad(lambda: float((to_host(forward(gpu(x))) * g).sum()), x)
    err = np.max(np.abs(to_host(backward(gpu(g), gpu(x))) - numeric))
    S = float(np.sum(np.abs(g) * np.abs(y)))  # the loss's scale, as in test_gradcheck
    assert err <= 1e-8 * S, f"max |analytic - numerical| = {err:.3g} > {1e-8 * S:.3g}"


# --------------------------------------------------------------------------- PyTorch CUDA tensors


def _torch_cuda():
    """torch, when it can run on a real GPU next to numba (not on the simulator); else None."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


@pytest.mark.skipif(_torch_cuda() is None, reason="needs PyTorch with CUDA and a real GPU (NUMBA_ENABLE_CUDASIM=0)")
def test_torch_cuda_tensors_in_and_parity(rng):
    """PyTorch CUDA tensors go in without a copy (``__cuda_array_interface__``), and the results
    match PyTorch's own on the GPU."""
    torch = _torch_cuda()
    tf = torch.nn.functional
    x = torch.from_numpy(rng.standard_normal((2, 3, 5, 5)).astype(np.float32)).cuda()
    target = torch.from_numpy(rng.integers(0, 3, (2, 5, 5))).cuda()
    mean, var = torch.zeros(3, device="cuda"), torch.ones(3, device="cuda")
    theirs_mean, theirs_var = mean.clone(), var.clone()
    pairs = [
        (F.relu(x), tf.relu(x)),
        (F.log_softmax(x, 1), tf.log_softmax(x, 1)),
        (F.max_pool2d(x, 3, 2, 1, ceil_mode=True), tf.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
        (F.avg_pool2d(x, 2, count_include_pad=False, padding=1), tf.avg_pool2d(x, 2, count_include_pad=False, padding=1)),
        (F.adaptive_avg_pool2d(x, (2, 3)), tf.adaptive_avg_pool2d(x, (2, 3))),
        (F.group_norm(x, 3), tf.group_norm(x, 3)),
        (F.local_response_norm(x, 3), tf.local_response_norm(x, 3)),
        (F.batch_norm(x, mean, var, training=True), tf.batch_norm(x, theirs_mean, theirs_var, training=True)),
        (F.cross_entropy(x, target), tf.cross_entropy(x, target)),
    ]
    pairs += [(mean, theirs_mean), (var, theirs_var)]  # updated in place, in the tensors' own memory
    for i, (ours, theirs) in enumerate(pairs):
        assert_close(to_host(ours) if is_device_array(ours) else ours.cpu().numpy(),
                     theirs.double().cpu().numpy(), dtype=np.float32, what=f"pair {i}")
