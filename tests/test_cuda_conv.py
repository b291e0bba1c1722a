"""The CUDA convolution, GEMM and linear kernels, against the naive references and their CPU twins.

Every call runs on host arrays (the CPU kernels) and on the same arrays copied to the GPU; the
GPU's result must be a C-contiguous device array equal, within the float tolerance of
conftest, to the naive float64 reference and to the CPU's result, and the device inputs must be
unchanged. Both algorithms, forward and the three gradients, convolutions and transposed ones,
1-D to 3-D. Shapes are tiny and odd (5, 7: no block or tile size divides them), because Numba's
CUDA simulator (the default, see conftest) runs a Python thread per CUDA thread;
``NUMBA_ENABLE_CUDASIM=0 python -m pytest -m cuda`` runs the same tests on a real GPU.

The simulator cannot wrap objects that only expose ``__cuda_array_interface__`` (CuPy arrays,
PyTorch CUDA tensors), so that path, and parity with PyTorch's CUDA convolutions, run on a real
GPU only.
"""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
import numbaconv
from conftest import assert_close, make_array
from numbaconv import functional as F
from numbaconv._geometry import conv_geometry
from numbaconv._device import cuda_status, is_device_array, to_device, to_host

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not cuda_status()[0], reason=f"CUDA: {cuda_status()[1]}"),
]

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
ALGORITHMS = ("direct", "im2col")


def _abs(a):
    return None if a is None else np.abs(a.astype(np.float64))


def _snapshot(arrays):
    return [None if a is None else to_host(a).copy() for a in arrays]


def check_gpu(got, ref, scale, cpu, dtype, what):
    """``got`` is a C-contiguous device array, close to the naive ``ref`` and to the CPU's ``cpu``."""
    assert is_device_array(got), f"{what}: {type(got).__name__} is not a GPU array"
    assert got.is_c_contiguous(), f"{what} is not C-contiguous"
    host = to_host(got)
    assert_close(host, ref, scale, dtype, what)
    assert_close(host, cpu.astype(np.float64), scale, dtype, f"{what} (against the CPU kernels)")


def run_op(op, nd, shape, weight_shape, kwargs, bias, dtype, algorithms=ALGORITHMS, seed=0):
    """``op`` ("conv" or "conv_transpose") in nd dimensions, and its backward, on the GPU against
    the naive reference and the CPU; the device inputs must come back unchanged."""
    rng = np.random.default_rng(seed)
    x, w = make_array(rng, shape, dtype), make_array(rng, weight_shape, dtype)
    channels = weight_shape[0] if op == "conv" else weight_shape[1] * kwargs.get("groups", 1)
    b = make_array(rng, (channels,), dtype) if bias else None
    fn, backward = getattr(numbaconv, f"{op}{nd}d"), getattr(numbaconv, f"{op}{nd}d_backward")
    reference, reference_backward = getattr(naive, op), getattr(naive, f"{op}_backward")
    ref, scale = reference(x, w, b, **kwargs), reference(_abs(x), _abs(w), _abs(b), **kwargs)
    go = make_array(rng, ref.shape, dtype)
    refs = reference_backward(go, x, w, **kwargs)
    scales = reference_backward(_abs(go), _abs(x), _abs(w), **kwargs)
    cpu, cpu_grads = fn(x, w, b, **kwargs), backward(go, x, w, **kwargs)
    dx, dw, db, dgo = (None if a is None else to_device(a) for a in (x, w, b, go))
    before = _snapshot((dx, dw, db, dgo))
    for algorithm in algorithms:
        what = f"{op}{nd}d {kwargs} algorithm={algorithm}"
        check_gpu(fn(dx, dw, db, algorithm=algorithm, **kwargs), ref, scale, cpu, dtype, what)
        grads = backward(dgo, dx, dw, algorithm=algorithm, **kwargs)
        for name, got, r, s, c in zip(("grad_x", "grad_weight", "grad_bias"), grads, refs, scales, cpu_grads):
            check_gpu(got, r, s, c, dtype, f"{what} {name}")
    for a, copy in zip((dx, dw, db, dgo), before):
        if a is not None:
            np.testing.assert_array_equal(to_host(a), copy, err_msg="a device input was modified")


def run_conv(nd, shape, weight_shape, kwargs, bias, dtype, algorithms=ALGORITHMS, seed=0):
    """convNd and convNd_backward on the GPU against the naive reference and the CPU."""
    run_op("conv", nd, shape, weight_shape, kwargs, bias, dtype, algorithms, seed)


CONV_CASES = [
    # nd, x shape, weight shape, kwargs, bias, dtype
    (1, (2, 3, 9), (2, 3, 3), dict(stride=2, padding=1), True, np.float32),
    (2, (1, 4, 5, 7), (6, 2, 3, 3), dict(padding=1, groups=2), True, np.float64),  # K/g = 3: a short channel tile
    (2, (1, 3, 6, 5), (3, 1, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3), False, np.float32),
    (2, (1, 2, 5, 6), (3, 2, 3, 3), dict(padding=(1, 2), padding_mode="reflect"), True, np.float64),
    (2, (1, 2, 4, 5), (2, 2, 2, 3), dict(padding=(2, 1), stride=(1, 2), padding_mode="circular"), False, np.float64),
    (2, (1, 2, 5, 5), (2, 2, 2, 4), dict(padding="same", dilation=(2, 1), padding_mode="replicate"), True, np.float32),
    (2, (1, 3, 4, 5), (5, 3, 1, 1), dict(), True, np.float64),  # pointwise: im2col needs no columns
    (2, (1, 2, 4, 3), (10, 2, 2, 2), dict(padding=1), True, np.float32),  # K > 8: two channel tiles per block row
    (3, (1, 2, 3, 4, 5), (2, 2, 2, 2, 3), dict(stride=(1, 2, 1), padding=(1, 0, 1), dilation=(1, 1, 2)), True, np.float64),
    (3, (1, 2, 2, 3, 3), (2, 1, 2, 1, 2), dict(groups=2, padding=1, padding_mode="replicate"), False, np.float32),
]


@pytest.mark.parametrize("nd, shape, weight_shape, kwargs, bias, dtype", CONV_CASES)
def test_conv(nd, shape, weight_shape, kwargs, bias, dtype):
    run_conv(nd, shape, weight_shape, kwargs, bias, dtype)


def test_conv_long_sums_split_the_weight_gradient():
    """More (sample, position) terms than a block's threads: the direct weight gradient sums
    slices of the output rows in two kernels."""
    from numbaconv.kernels.cuda import conv_direct

    geom = conv_geometry("conv2d", np.ones((1, 1, 20, 20)), np.ones((1, 1, 3, 3)), None, 1, 1, 1, 1, "zeros", 2)
    assert conv_direct._splits(geom, 9) > 1
    run_conv(2, (1, 1, 20, 20), (1, 1, 3, 3), dict(padding=1), True, np.float64, algorithms=("direct",))


def test_conv_unstaged_direct_forward(monkeypatch):
    """A patch too large for shared memory: the direct forward reads global memory instead."""
    from numbaconv.kernels.cuda import conv_direct

    monkeypatch.setattr(conv_direct, "SHARED_BYTES", 0)
    run_conv(2, (1, 2, 5, 6), (3, 2, 3, 2), dict(stride=(1, 2), padding=1, dilation=(2, 1)), True, np.float32,
             algorithms=("direct",))


def test_conv_direct_forward_stages_channels_in_groups(monkeypatch):
    """Input channels staged two at a time: three channels are a full group and a short one."""
    from numbaconv.kernels.cuda import conv_direct

    monkeypatch.setattr(conv_direct, "MAX_CB", 2)
    run_conv(2, (1, 3, 4, 5), (2, 3, 2, 3), dict(padding=(1, 0)), True, np.float64, algorithms=("direct",))


def test_conv_im2col_in_chunks(monkeypatch):
    """A workspace smaller than one sample's columns: one chunk per sample, and the weight
    gradient accumulated over the chunks."""
    monkeypatch.setattr(numbaconv.config, "WORKSPACE_BYTES", 1)
    run_conv(2, (3, 2, 4, 5), (3, 2, 2, 2), dict(padding=1, stride=(2, 1)), True, np.float64, algorithms=("im2col",))


def test_conv_launches_split_a_batch_too_large_for_the_grid(monkeypatch):
    """Launches whose grid y counts samples x depth go in slices of the batch when that count
    would pass the hardware's limit (65,535; here made 4, so a batch of 3 at depth 2 splits)."""
    from numbaconv.kernels.cuda import _launch

    monkeypatch.setattr(_launch, "MAX_GRID_Y", 4)
    plane_grid, outers = _launch.plane_grid, []

    def checked(plane, outer, count):
        outers.append(outer)
        return plane_grid(plane, outer, count)

    monkeypatch.setattr(_launch, "plane_grid", checked)
    run_conv(3, (3, 2, 2, 3, 3), (2, 2, 1, 2, 2), dict(padding=(0, 1, 0)), False, np.float64)
    assert outers and max(outers) <= 4, outers


@st.composite
def conv_cases(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 3))
    size = {1: 7, 2: 5, 3: 3}[nd]
    spatial = tuple(draw(st.integers(2, size)) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, s)) for s in spatial)
    kwargs = dict(stride=tuple(draw(st.integers(1, 2)) for _ in range(nd)),
                  padding=tuple(draw(st.integers(0, k - 1)) for k in kernel), groups=groups)
    dtype = draw(st.sampled_from((np.float32, np.float64)))
    return nd, (draw(st.integers(1, 2)), c_in, *spatial), (c_out, c_in // groups, *kernel), kwargs, draw(st.booleans()), dtype


@given(conv_cases(), st.integers(0, 2**16))
@settings(max_examples=4, deadline=None)
def test_conv_random(case, seed):
    run_conv(*case, seed=seed)


TRANSPOSE_CASES = [
    (1, (2, 2, 4), (2, 3, 3), dict(stride=3, dilation=2, padding=1, output_padding=1), True, np.float32),
    (2, (1, 4, 3, 4), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1, groups=2), True, np.float64),
    (3, (1, 2, 2, 3, 2), (2, 2, 2, 2, 3), dict(stride=(2, 1, 2), padding=(0, 1, 1)), False, np.float64),
]


@pytest.mark.parametrize("nd, shape, weight_shape, kwargs, bias, dtype", TRANSPOSE_CASES)
def test_conv_transpose(nd, shape, weight_shape, kwargs, bias, dtype):
    run_op("conv_transpose", nd, shape, weight_shape, kwargs, bias, dtype, seed=1)


def test_needs_turns_gradients_off():
    rng = np.random.default_rng(2)
    x, w, go = (to_device(make_array(rng, s, np.float64)) for s in ((1, 2, 4), (3, 2, 2), (1, 3, 3)))
    grads = numbaconv.conv1d_backward(go, x, w, needs=(False, True, False))
    assert grads[0] is None and grads[2] is None and is_device_array(grads[1])


def test_winograd_is_refused_on_the_gpu():
    """Winograd's tiles are CPU kernels: asked for on GPU arrays, the call says so."""
    x, w = to_device(np.ones((1, 2, 6, 6), np.float32)), to_device(np.ones((3, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="'winograd' runs on the CPU only"):
        numbaconv.conv2d(x, w, padding=1, algorithm="winograd")


# --------------------------------------------------------------------------- GEMM


@pytest.mark.parametrize("tile_index, trans_a, trans_b, dtype", [
    (0, False, True, np.float32), (1, True, False, np.float64), (2, True, True, np.float32), (3, False, False, np.float64),
])
def test_gemm_every_tile(tile_index, trans_a, trans_b, dtype):
    """Each tile and transpose on sizes that no tile divides (and M, N larger than the 16 tile)."""
    from numbaconv.kernels.cuda.gemm import TILES, gemm

    rng = np.random.default_rng(tile_index)
    Z, M, N, K = 2, 19, 21, 11
    a = make_array(rng, (Z, K, M) if trans_a else (Z, M, K), dtype)
    b = make_array(rng, (Z, N, K) if trans_b else (Z, K, N), dtype)
    c = to_device(np.zeros((Z, M, N), dtype))
    gemm(to_device(a), to_device(b), c, trans_a, trans_b, tile=TILES[tile_index])
    A, B = (a.swapaxes(1, 2) if trans_a else a), (b.swapaxes(1, 2) if trans_b else b)
    ref = np.matmul(A.astype(np.float64), B.astype(np.float64))
    assert_close(to_host(c), ref, np.matmul(np.abs(A).astype(np.float64), np.abs(B).astype(np.float64)), dtype, "gemm")


@pytest.mark.parametrize("split", [1, 2])
def test_gemm_shared_operand_reduce_accumulate(split):
    """The modular batch index: a (2, ...) a shared by a (6, ...) batch, summed over 3 rounds
    into the 2 matrices of c, added to what c held; in one slice or split over two (split-K)."""
    from numbaconv.kernels.cuda.gemm import gemm

    rng = np.random.default_rng(3)
    a, b, c0 = (make_array(rng, s, np.float64) for s in ((2, 5, 3), (6, 3, 7), (2, 5, 7)))
    c = to_device(c0)
    gemm(to_device(a), to_device(b), c, reduce=3, accumulate=True, split=split)
    ref = c0 + sum(a[(r * 2 + np.arange(2)) % 2] @ b[r * 2 + np.arange(2)] for r in range(3))
    assert_close(to_host(c), ref, what="gemm reduce")


def test_gemm_long_sum_splits_k(monkeypatch):
    """One block's worth of output and a long K: the sum is split over slices of blocks."""
    from numbaconv.kernels.cuda import gemm as module

    rng = np.random.default_rng(7)
    a, b = make_array(rng, (5, 203), np.float32), make_array(rng, (7, 203), np.float32)
    slices = []
    add = module.sum_rows
    monkeypatch.setattr(module, "sum_rows", lambda partial, *args: slices.append(partial.shape[0]) or add(partial, *args))
    c = to_device(np.zeros((5, 7), np.float32))
    module.gemm(to_device(a), to_device(b), c, trans_b=True)
    assert slices and slices[0] > 1, "the sum was not split"
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert_close(to_host(c), a64 @ b64.T, np.abs(a64) @ np.abs(b64).T, np.float32, "split-K gemm")


@pytest.mark.parametrize("split", [1, 2])
def test_gemm_more_row_blocks_than_a_grid_has(monkeypatch, split):
    """More row blocks than grid y may count (65,535: a linear layer over millions of rows; here
    the limit made 2, for 5 row blocks of 16): each block strides over the row blocks."""
    from numbaconv.kernels.cuda import _launch
    from numbaconv.kernels.cuda.gemm import TILES, gemm

    monkeypatch.setattr(_launch, "MAX_GRID_Y", 2)
    rng = np.random.default_rng(11)
    a, b = make_array(rng, (1, 75, 40), np.float64), make_array(rng, (1, 40, 9), np.float64)
    c = to_device(np.zeros((1, 75, 9), np.float64))
    gemm(to_device(a), to_device(b), c, tile=TILES[3], split=split)
    assert_close(to_host(c), a @ b, np.abs(a) @ np.abs(b), np.float64, "gemm past the grid's rows")


@pytest.mark.parametrize("batch, M, N, expected", [(1, 3, 35, 3), (64, 64, 3136, 1), (1, 2048, 2048, 0), (1, 40, 40, 3)])
def test_gemm_tile_follows_the_problem(batch, M, N, expected):
    from numbaconv.kernels.cuda.gemm import TILES, choose_tile

    assert choose_tile(batch, M, N) == TILES[expected]


# --------------------------------------------------------------------------- linear


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear(dtype):
    rng = np.random.default_rng(4)
    x, w, b = make_array(rng, (2, 3, 5), dtype), make_array(rng, (7, 5), dtype), make_array(rng, (7,), dtype)
    go = make_array(rng, (2, 3, 7), dtype)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref, scale = x64 @ w64.T + b, np.abs(x64) @ np.abs(w64).T + np.abs(b)
    check_gpu(F.linear(to_device(x), to_device(w), to_device(b)), ref, scale, F.linear(x, w, b), dtype, "linear")
    check_gpu(F.linear(to_device(x), to_device(w)), x64 @ w64.T, scale, F.linear(x, w), dtype, "linear without bias")
    g64, ag = go.astype(np.float64), np.abs(go.astype(np.float64))
    refs = (g64 @ w64, g64.reshape(-1, 7).T @ x64.reshape(-1, 5), g64.sum(axis=(0, 1)))
    scales = (ag @ np.abs(w64), ag.reshape(-1, 7).T @ np.abs(x64).reshape(-1, 5), ag.sum(axis=(0, 1)))
    grads = F.linear_backward(to_device(go), to_device(x), to_device(w))
    for name, got, r, s, c in zip(("grad_x", "grad_weight", "grad_bias"), grads, refs, scales, F.linear_backward(go, x, w)):
        check_gpu(got, r, s, c, dtype, f"linear_backward {name}")


def test_flatten_of_a_device_array_is_its_reshape():
    x = np.arange(24.0).reshape(2, 3, 4)
    y = F.flatten(to_device(x))
    assert is_device_array(y) and tuple(y.shape) == (2, 12)
    np.testing.assert_array_equal(to_host(y), x.reshape(2, 12))


# --------------------------------------------------------------------------- placement errors


def _mixed_calls():
    x, w, b = np.ones((1, 2, 5)), np.ones((3, 2, 2)), np.ones(3)
    go, xt, wt = np.ones((1, 3, 4)), np.ones((1, 3, 4)), np.ones((3, 2, 2))
    return [
        ("conv1d", lambda: numbaconv.conv1d(to_device(x), w, b), "x on the GPU, weight on the host, bias on the host"),
        ("conv1d_backward", lambda: numbaconv.conv1d_backward(go, to_device(x), w), "grad_out on the host, x on the GPU"),
        ("conv_transpose1d", lambda: numbaconv.conv_transpose1d(xt, wt, to_device(np.ones(2))), "bias on the GPU"),
        ("conv_transpose1d_backward", lambda: numbaconv.conv_transpose1d_backward(to_device(np.ones((1, 2, 5))), xt, wt),
         "grad_out on the GPU"),
        ("linear", lambda: F.linear(np.ones((2, 5)), to_device(np.ones((3, 5)))), "x on the host, weight on the GPU"),
        ("linear_backward", lambda: F.linear_backward(to_device(np.ones((2, 3))), np.ones((2, 5)), np.ones((3, 5))),
         "grad_out on the GPU, x on the host"),
    ]


@pytest.mark.parametrize("op, call, said", _mixed_calls(), ids=[c[0] for c in _mixed_calls()])
def test_mixed_devices_say_which_argument_is_where(op, call, said):
    with pytest.raises(ValueError, match=f"{op}: all arrays must be on one device") as info:
        call()
    assert said in str(info.value)


def test_strided_device_input_is_refused_by_name():
    x = to_device(np.ones((1, 2, 10)))[:, :, ::2]
    w = to_device(np.ones((3, 2, 2)))
    with pytest.raises(ValueError, match="conv1d: x must be C-contiguous on the GPU"):
        numbaconv.conv1d(x, w)
    with pytest.raises(ValueError, match="linear: x must be C-contiguous on the GPU"):
        F.linear(x, to_device(np.ones((3, 5))))


def test_device_geometry_errors_are_the_hosts():
    """The same validation runs before any kernel, with the same message."""
    x, w = np.ones((1, 3, 5, 5)), np.ones((4, 2, 3, 3))
    with pytest.raises(ValueError) as host:
        numbaconv.conv2d(x, w)
    with pytest.raises(ValueError) as device:
        numbaconv.conv2d(to_device(x), to_device(w))
    assert str(device.value) == str(host.value)


# --------------------------------------------------------------------------- real GPU only


@pytest.mark.skipif(SIMULATED, reason="the CUDA simulator cannot wrap __cuda_array_interface__ objects")
def test_cuda_array_interface_objects_are_taken_without_copy():
    class Foreign:
        """What CuPy or PyTorch hands over: nothing but the interface."""

        def __init__(self, a):
            self.__cuda_array_interface__ = a.__cuda_array_interface__
            self.keep = a

    rng = np.random.default_rng(5)
    x, w, b = make_array(rng, (2, 3, 6, 5), np.float32), make_array(rng, (4, 3, 3, 3), np.float32), make_array(rng, (4,), np.float32)
    got = numbaconv.conv2d(Foreign(to_device(x)), Foreign(to_device(w)), Foreign(to_device(b)), padding=1)
    check_gpu(got, naive.conv(x, w, b, padding=1), naive.conv(_abs(x), _abs(w), _abs(b), padding=1),
              numbaconv.conv2d(x, w, b, padding=1), np.float32, "conv2d on __cuda_array_interface__ inputs")


def _torch_cuda():
    if SIMULATED:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


@pytest.mark.skipif(_torch_cuda() is None, reason="needs PyTorch with CUDA and NUMBA_ENABLE_CUDASIM=0")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_torch_cuda_parity(algorithm):
    """conv2d and its backward on PyTorch CUDA tensors (taken zero-copy) against cuDNN in FP32."""
    torch = _torch_cuda()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(6)
    x = torch.randn(4, 16, 15, 13, device="cuda", generator=gen, requires_grad=True)
    w = torch.randn(32, 8, 3, 3, device="cuda", generator=gen, requires_grad=True)
    b = torch.randn(32, device="cuda", generator=gen, requires_grad=True)
    kw = dict(stride=2, padding=1, groups=2)
    y = torch.nn.functional.conv2d(x, w, b, **kw)
    go = torch.randn(y.shape, device="cuda", generator=gen)
    y.backward(go)
    got = numbaconv.conv2d(x.detach(), w.detach(), b.detach(), algorithm=algorithm, **kw)
    grads = numbaconv.conv2d_backward(go, x.detach(), w.detach(), algorithm=algorithm, **kw)
    for name, mine, theirs in zip(("y", "grad_x", "grad_weight", "grad_bias"), (got, *grads), (y, x.grad, w.grad, b.grad)):
        ref = theirs.detach().cpu().numpy().astype(np.float64)
        assert_close(to_host(mine), ref, np.full(ref.shape, np.abs(ref).max() * 10), np.float32, f"torch parity {name}")
