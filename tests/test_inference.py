"""Inference graphs: numbaconv.compile of nn models, the load-time rewrites (batch norm folded
into convolutions, activations fused into the kernels' epilogue, weights packed), and the run
plan (activations freed after their last reader, element-wise ops in place).

References: the convolution epilogue against tests/naive.py's convolution followed by the
activation in float64, with the conftest tolerance (1e-4 of each element's sum of absolute
terms; the activations are 1-Lipschitz, so the bound carries over); compiled models against
the nn model's own forward in eval mode, and against PyTorch when it is importable.
"""

import math
import os
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
import numbaconv as nc
from conftest import assert_close, tile_scale
from numbaconv import models, nn
from numbaconv._geometry import conv_geometry
from numbaconv.kernels.cpu import ALL_ALGORITHMS, candidates
from numbaconv.kernels.cpu.conv_direct import IDENTITY

EPILOGUES = {"identity": IDENTITY, "relu": (1.0, 0.0, np.inf), "relu6": (1.0, 0.0, 6.0),
             "leaky": (0.1, -np.inf, np.inf), "clip": (1.0, -0.5, 0.25)}


def _activate(y, epilogue):
    slope, lo, hi = epilogue
    with np.errstate(invalid="ignore"):
        return np.clip(np.where(y < 0, y * slope, y), lo, hi)


# --------------------------------------------------------------------------- the kernels' epilogue


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_conv_epilogue_matches_naive(data):
    ndim = data.draw(st.integers(1, 3), label="ndim")
    groups = data.draw(st.sampled_from([1, 2]), label="groups")
    c_in, c_out = groups * data.draw(st.integers(1, 3)), groups * data.draw(st.integers(1, 3))
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    size = tuple(data.draw(st.integers(k, k + 4)) for k in kernel)
    stride = data.draw(st.sampled_from([1, 2]), label="stride")
    padding = data.draw(st.integers(0, 1), label="padding")
    name = data.draw(st.sampled_from(sorted(EPILOGUES)), label="epilogue")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    with_bias = data.draw(st.booleans(), label="bias")
    with_residual = data.draw(st.booleans(), label="residual")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = rng.standard_normal((2, c_in, *size)).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups, *kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if with_bias else None
    geom = conv_geometry("conv", x, w, b, stride, padding, 1, groups, "zeros", ndim)
    algorithm = data.draw(st.sampled_from(sorted(candidates(geom, "forward"))), label="algorithm")
    out = np.empty((2, c_out, *geom.out_size), dtype)
    r = rng.standard_normal(out.shape).astype(dtype) if with_residual else None
    x5, w5 = x.reshape(2, c_in, *geom.in_size), w.reshape(*w.shape[:2], *geom.kernel)
    ALL_ALGORITHMS[algorithm].forward(x5, w5, b, out, geom, 1 << 20, EPILOGUES[name], r)
    shape = (2, c_out, *geom.spatial(geom.out_size))
    got = out.reshape(shape)
    y = naive.conv(x, w, b, stride, padding, 1, groups)
    scale = naive.conv(np.abs(x), np.abs(w), None if b is None else np.abs(b), stride, padding, 1, groups)
    if with_residual:
        y, scale = y + r.reshape(shape), scale + np.abs(r.reshape(shape))
    if algorithm == "winograd":
        scale = tile_scale(scale)
    assert_close(got, _activate(y, EPILOGUES[name]), np.maximum(scale, 1e-30),
                 what=f"{algorithm} conv{ndim}d + {'residual + ' * with_residual}{name}")


@pytest.mark.parametrize("name", sorted(EPILOGUES))
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_epilogue_on_whole_planes(name, multiplier):
    """MobileNet's depthwise 3x3 (padding 1) over planes long enough that each task computes one
    plane in place in the output (``depthwise._same3`` with a stack of one), which it then
    activates where it lies; with a depth multiplier too."""
    from numbaconv.kernels.cpu import depthwise

    rng = np.random.default_rng(multiplier)
    x = rng.standard_normal((2, 3, 12, 13)).astype(np.float32)
    w = rng.standard_normal((3 * multiplier, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3 * multiplier).astype(np.float32)
    geom = conv_geometry("conv", x, w, b, 1, 1, 1, 3, "zeros", 2)
    assert depthwise._is_same3(geom) and depthwise._stacked(geom) == 1
    out = np.full((2, 3 * multiplier, *geom.out_size), np.nan, np.float32)
    ALL_ALGORITHMS["direct"].forward(x.reshape(2, 3, *geom.in_size), w.reshape(*w.shape[:2], *geom.kernel), b, out,
                                     geom, 1 << 20, EPILOGUES[name])
    y = naive.conv(x, w, b, 1, 1, 1, 3)
    scale = naive.conv(np.abs(x), np.abs(w), np.abs(b), 1, 1, 1, 3)
    assert_close(out.reshape(y.shape), _activate(y, EPILOGUES[name]), scale, what=f"depthwise 3x3 + {name}")


@pytest.mark.parametrize("algorithm, stride", [("direct", 1), ("direct", 2), ("im2col", 1), ("im2col", 2),
                                               ("winograd", 1), ("blocked", 1), ("blocked", 2)])
def test_conv_epilogue_keeps_nan_and_inf(algorithm, stride):
    """x and -x through a kernel that copies each input: 1x1, or for Winograd's tiles (3x3 only)
    a 3x3 with its centre tap one and padding 1 (whose zero taps give NaN to the neighbours of
    NaN and inf, as in the reference). The blocked loops activate in vector registers."""
    x = np.ones((1, 1, 1, 5, 5), np.float32)
    x[0, 0, 0, 0, 0] = np.nan
    x[0, 0, 0, 4, 4] = np.inf
    k = 3 if algorithm == "winograd" else 1
    w = np.zeros((2, 1, 1, k, k), np.float32)
    w[0, 0, 0, k // 2, k // 2], w[1, 0, 0, k // 2, k // 2] = 1, -1
    geom = conv_geometry("conv", x, w, None, stride, (0, k // 2, k // 2), 1, 1, "zeros", 3)
    out = np.empty((1, 2, *geom.out_size), np.float32)
    ALL_ALGORITHMS[algorithm].forward(x, w, None, out, geom, 1 << 20, EPILOGUES["relu6"])
    with np.errstate(invalid="ignore"):  # the 3x3 kernel's zero taps times NaN and inf: NaN
        ref = _activate(naive.conv(x, w, None, stride, (0, k // 2, k // 2)), EPILOGUES["relu6"])
    np.testing.assert_array_equal(out, ref)  # NaN stays NaN, inf clips to 6, -inf to 0


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_blocked_conv_matches_naive(data):
    """The inference graph's loops with vectors along the output channels (``conv_blocked``):
    1-D to 3-D, strides, dilations and paddings, output channels across a block's edge, bias,
    residual and activation written out with the sums; the one-thread and the parallel route;
    the input read as given or from its channels-last copy, whose rows are copied in chunks of
    a few columns here."""
    from numbaconv.kernels.cpu import conv_blocked

    ndim = data.draw(st.integers(1, 3), label="ndim")
    c_in = data.draw(st.integers(1, 5), label="c_in")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    block = conv_blocked.block(dtype)
    c_out = data.draw(st.sampled_from([1, block - 1, block, block + 3, 2 * block + 1]), label="c_out")
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    dilation = data.draw(st.integers(1, 2), label="dilation")
    padding = data.draw(st.integers(0, 2), label="padding")
    size = tuple(data.draw(st.integers(max(1, (k - 1) * dilation + 1 - 2 * padding), 9)) for k in kernel)
    stride = data.draw(st.integers(1, 3), label="stride")
    batch = data.draw(st.integers(1, 2), label="batch")
    name = data.draw(st.sampled_from(sorted(EPILOGUES)), label="epilogue")
    with_bias, with_residual = data.draw(st.booleans(), label="bias"), data.draw(st.booleans(), label="residual")
    parallel = data.draw(st.booleans(), label="parallel")
    channels_last = data.draw(st.booleans(), label="channels_last")
    chunk = data.draw(st.integers(1, 4), label="chunk columns")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = rng.standard_normal((batch, c_in, *size)).astype(dtype)
    w = rng.standard_normal((c_out, c_in, *kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if with_bias else None
    geom = conv_geometry("conv", x, w, b, stride, padding, dilation, 1, "zeros", ndim)
    out = np.full((batch, c_out, *geom.out_size), np.nan, dtype)
    r = rng.standard_normal(out.shape).astype(dtype) if with_residual else None
    copies = [a.copy() for a in (x, w)]
    saved = nc.config.PARALLEL_MIN_ELEMENTS, conv_blocked.CHANNELS_LAST_MIN_CHANNELS, conv_blocked.CHUNK_COLUMNS
    nc.config.PARALLEL_MIN_ELEMENTS = 1 if parallel else 1 << 40
    conv_blocked.CHANNELS_LAST_MIN_CHANNELS = 1 if channels_last else 1 << 30
    conv_blocked.CHUNK_COLUMNS = chunk
    conv_blocked._plan.cache_clear()  # plans are by geometry: made again under these settings
    try:
        conv_blocked.forward(x.reshape(batch, c_in, *geom.in_size),
                             conv_blocked.pack(w.reshape(c_out, c_in, *geom.kernel)), b, out, geom, EPILOGUES[name], r)
        assert conv_blocked._plan(geom)[3] is (channels_last and math.prod(kernel) > 1)
    finally:
        nc.config.PARALLEL_MIN_ELEMENTS, conv_blocked.CHANNELS_LAST_MIN_CHANNELS, conv_blocked.CHUNK_COLUMNS = saved
        conv_blocked._plan.cache_clear()
    shape = (batch, c_out, *geom.spatial(geom.out_size))
    y = naive.conv(x, w, b, stride, padding, dilation)
    scale = naive.conv(np.abs(x), np.abs(w), None if b is None else np.abs(b), stride, padding, dilation)
    if with_residual:
        y, scale = y + r.reshape(shape), scale + np.abs(r.reshape(shape))
    assert_close(out.reshape(shape), _activate(y, EPILOGUES[name]), np.maximum(scale, 1e-30),
                 what=f"blocked conv{ndim}d + {'residual + ' * with_residual}{name}")
    for a, copy in zip((x, w), copies):
        np.testing.assert_array_equal(a, copy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(20, 5, 3, 3), (33, 40, 3, 3), (17, 64, 1, 1), (9, 32, 3), (5, 32, 2, 2, 2),
                                   (40, 256, 5, 5)])  # the last large enough for the parallel packing
def test_blocked_weight_packs_and_unpacks(shape, dtype):
    """``conv_blocked.pack``: block b's row e holds w[b * block + j, c, t] in lane j, zeros past
    K, with e = t * C + c where the loops read the input channels-last (many channels, a kernel
    wider than 1x1), else c * taps + t; ``unpack`` gives the weight back."""
    from numbaconv.kernels.cpu import conv_blocked

    w = np.random.default_rng(len(shape)).standard_normal(shape).astype(dtype)
    K, C, T = shape[0], shape[1], math.prod(shape[2:])
    KB = conv_blocked.block(w.dtype)
    wp = conv_blocked.pack(w)
    assert wp.shape == (-(-K // KB), C * T, KB) and wp.flags.c_contiguous
    by_tap = conv_blocked.channels_last(C, T)
    assert by_tap is (C >= 32 and T > 1)
    flat = w.reshape(K, C, T)
    expected = np.zeros_like(wp)
    for k in range(K):
        for c in range(C):
            for t in range(T):
                expected[k // KB, t * C + c if by_tap else c * T + t, k % KB] = flat[k, c, t]
    np.testing.assert_array_equal(wp, expected)
    np.testing.assert_array_equal(conv_blocked.unpack(wp, shape), w)


def test_compiled_model_runs_the_blocked_loops_where_they_pay(monkeypatch):
    """A convolution over few output positions whose weight is the graph's constant runs the
    blocked loops, its weight packed once; over many positions (a larger batch), the rules'
    algorithm. Either way the model's own output. The rule is set here, so that hosts whose
    rules never take these loops (AVX-512, where they were not measured) test them too."""
    from numbaconv.functional.conv import RULES
    from numbaconv.inference import ops
    from numbaconv.kernels.cpu import conv_blocked

    monkeypatch.setattr(ops, "RULES", RULES._replace(blocked_max_positions=100, blocked_max_work=None,
                                                     blocked_max_columns=None))
    monkeypatch.setattr(ops, "_CONV_PLANS", {})
    packs, calls = [], []
    pack, forward = conv_blocked.pack, conv_blocked.forward
    monkeypatch.setattr(conv_blocked, "pack", lambda w: packs.append(w.shape) or pack(w))
    monkeypatch.setattr(conv_blocked, "forward", lambda *a: calls.append(a[3].shape) or forward(*a))
    model = nn.Sequential(nn.Conv2d(5, 20, 3, padding=1), nn.ReLU(),
                          nn.Residual(nn.Sequential(nn.Conv2d(20, 20, 3, padding=1), nn.BatchNorm2d(20))), nn.ReLU(),
                          nn.Conv2d(20, 7, 1), nn.Conv2d(7, 9, 1, stride=2))
    _randomize_batch_norm(model)
    compiled = nc.compile(model, input_shape=(5, 7, 7))
    weights = [compiled.graph.constants[n.inputs[1]] for n in compiled.graph.nodes if n.op == "Conv"]
    assert [w.held for w in weights] == [("as given",)] * 4
    assert packs == [] and calls == []  # the load-time check at batch 1 packs nothing
    rng = np.random.default_rng(3)
    # a packed weight is held packed only until a call needs it as given (batch 3); then both ways
    packed, both = [("packed",)] * 3, [("as given", "packed")] * 3
    for batch, blocked, held in ((1, True, packed), (2, True, packed), (3, False, both), (1, True, both)):
        del calls[:]  # 49, 98, 147 and 49 positions; the 1x1/2 16 a sample
        x = rng.standard_normal((batch, 5, 7, 7)).astype(np.float32)
        assert_close(compiled(x), model(x), what=f"batch {batch}")
        # the 3x3s and the 1x1 by the rule; the 1x1/2 at every batch here
        expected = [(batch, 20, 1, 7, 7)] * 2 * blocked + [(batch, 7, 1, 7, 7)] * blocked + [(batch, 9, 1, 4, 4)]
        assert calls == expected, calls
        assert [w.held for w in weights] == [*held, ("packed",)], batch
    # once each (not by the load-time check), for every call after
    assert packs == [(20, 5, 3, 3), (20, 20, 3, 3), (7, 20, 1, 1), (9, 7, 1, 1)]


@pytest.mark.parametrize("x_shape, w_shape, stride, groups, max_positions, max_work, strided, pays", [
    ((1, 8, 7, 7), (16, 8, 3, 3), 1, 1, 49, None, None, True),  # 49 positions
    ((2, 8, 7, 7), (16, 8, 3, 3), 1, 1, 49, None, None, False),  # 98
    ((2, 8, 7, 7), (16, 8, 3, 3), 1, 1, 49, 2 * 49 * 16 * 8 * 9, None, True),  # few multiply-adds in all
    ((2, 8, 7, 7), (16, 8, 3, 3), 1, 1, 49, 2 * 49 * 16 * 8 * 9 - 1, None, False),
    ((1, 8, 7, 7), (16, 8, 1, 1), 1, 1, 49, None, None, True),  # a 1x1 at unit stride too
    ((2, 8, 7, 7), (16, 8, 1, 1), 1, 1, 49, None, None, False),
    ((1, 8, 7, 7), (16, 8, 1, 1), 2, 1, 49, None, None, True),  # 1x1/2
    ((1, 8, 7, 7), (16, 4, 3, 3), 1, 2, 49, 1 << 30, None, False),  # groups
    ((1, 8, 7, 7), (16, 8, 3, 3), 1, 1, None, None, None, False),  # no rule (AVX-512)
    ((4, 8, 13, 13), (32, 8, 3, 3), 2, 1, None, None, 72, True),  # a stem: strided, 8 x 9 channel-taps
    ((4, 8, 13, 13), (32, 8, 3, 3), 2, 1, None, None, 71, False),  # more channel-taps than the bound
    ((4, 8, 13, 13), (32, 8, 3, 3), 1, 1, None, None, 72, False),  # unit stride
    ((4, 8, 13, 13), (20, 8, 3, 3), 2, 1, None, None, 72, False),  # a block of output channels part idle
    ((4, 8, 13, 13), (32, 8, 1, 1), 2, 1, None, None, 72, False),  # a 1x1/2 shortcut is no stem
])
def test_blocked_loops_rule(x_shape, w_shape, stride, groups, max_positions, max_work, strided, pays):
    from numbaconv.kernels.cpu import conv_blocked

    x, w = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
    geom = conv_geometry("conv", x, w, None, stride, w_shape[-1] // 2, 1, groups, "zeros", 2)  # 7x7 out at stride 1
    assert 32 % conv_blocked.block(np.float32) == 0 and 20 % conv_blocked.block(np.float32)  # 8, 16 or 32 lanes
    assert conv_blocked.pays(geom, np.float32, max_positions, max_work, strided) is pays


@pytest.mark.parametrize("x_shape, w_shape, stride, max_columns, pays", [
    ((2, 8, 9, 9), (16, 8, 3, 3), 1, 2 * 81 * 8 * 9, True),  # 1,458 positions x 72 channel-taps
    ((2, 8, 9, 9), (16, 8, 3, 3), 1, 2 * 81 * 8 * 9 - 1, False),
    ((2, 8, 9, 9), (16, 8, 3, 3), 2, 2 * 25 * 8 * 9, True),  # strided: the output's positions
    ((2, 8, 9, 9), (16, 8, 1, 1), 2, 1 << 30, False),  # a 1x1 kernel
    ((2, 8, 9, 9), (16, 8, 3, 3), 1, None, False),  # no rule
])
def test_blocked_loops_column_rule(x_shape, w_shape, stride, max_columns, pays):
    """The blocked loops where im2col's column matrix (positions x input channels x taps) would
    be small, a kernel wider than 1x1."""
    from numbaconv.kernels.cpu import conv_blocked

    x, w = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
    geom = conv_geometry("conv", x, w, None, stride, w_shape[-1] // 2, 1, 1, "zeros", 2)
    assert conv_blocked.pays(geom, np.float32, None, None, None, max_columns) is pays


# --------------------------------------------------------------------------- compile


def _randomize_batch_norm(model, seed=0):
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            n = m.num_features
            m.running_mean[:] = rng.uniform(-1, 1, n)
            m.running_var[:] = rng.uniform(0.5, 2, n)
            m.weight.data[:] = rng.uniform(0.5, 1.5, n)
            m.bias.data[:] = rng.uniform(-0.5, 0.5, n)
    return model.eval()


def _mobile_block():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
                                  nn.LeakyReLU(0.1), nn.Conv2d(8, 8, 1))),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(32, 5), nn.LogSoftmax(dim=1))


def _layer_zoo():
    return nn.Sequential(
        nn.Conv2d(2, 4, 4, padding="same", padding_mode="reflect"), nn.ELU(0.5),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), nn.Tanh(),
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid(),
        nn.LocalResponseNorm(3, alpha=0.5), nn.LPPool2d(2, 2), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
        nn.MaxPool2d(2, ceil_mode=True), nn.Dropout(0.3), nn.Identity(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(start_dim=2), nn.Flatten(), nn.Linear(3, 4), nn.Softmax(dim=-1))


COMPILED = {
    "lenet5": (lambda: models.lenet5(), (1, 32, 32)),
    "resnet18": (lambda: models.resnet18(num_classes=10), (3, 32, 32)),
    "audio_cnn1d": (lambda: models.audio_cnn1d(channels=8), (1, 400)),
    "cnn3d": (lambda: models.cnn3d(channels=4), (1, 6, 7, 5)),
    "mobile_block": (_mobile_block, (3, 16, 16)),
    "layer_zoo": (_layer_zoo, (2, 12, 10)),
    "conv3d_transpose": (lambda: nn.Sequential(nn.ConvTranspose3d(2, 3, 2, stride=2), nn.BatchNorm3d(3), nn.ReLU(),
                                               nn.Conv3d(3, 2, 3), nn.AvgPool3d(2)), (2, 3, 4, 4)),
}


@pytest.mark.parametrize("name", list(COMPILED))
def test_compile_matches_the_model(name):
    nc.manual_seed(0)
    make, shape = COMPILED[name]
    model = _randomize_batch_norm(make())
    compiled = nc.compile(model, shape)
    assert [i.shape for i in compiled.inputs] == [(None, *shape)]
    rng = np.random.default_rng(1)
    for batch in (1, 3):  # any batch size runs through the one model
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        ref = model(x).astype(np.float64)
        assert_close(compiled(x), ref, np.full(ref.shape, np.abs(ref).max()), what=f"{name}, batch {batch}")
    assert compiled.outputs[0].shape == (None, *ref.shape[1:])
    assert not any(n.op in ("BatchNormalization", "Identity") for n in compiled.graph.nodes)


def test_compile_without_input_shape_checks_at_run_time():
    model = models.lenet5().eval()
    compiled = nc.compile(model)
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="node 'classifier.0' \\(Linear\\)"):
        compiled(np.zeros((2, 1, 36, 36), np.float32))


def test_compile_is_a_snapshot_of_the_weights():
    model = models.lenet5().eval()
    compiled = nc.compile(model, (1, 32, 32))
    x = np.ones((1, 1, 32, 32), np.float32)
    before = compiled(x)
    model.classifier[4].bias.data += 1
    np.testing.assert_array_equal(compiled(x), before)


def test_compile_errors():
    with pytest.raises(TypeError, match="layer 1 \\(GroupNorm\\) has no inference form"):
        nc.compile(nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4)))
    with pytest.raises(TypeError, match="keeps no running statistics"):
        nc.compile(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)))
    with pytest.raises(TypeError, match="numbaconv.nn.Module"):
        nc.compile(lambda x: x)
    with pytest.raises(TypeError, match="input_shape"):
        nc.compile(models.lenet5(), (1, 32.0, 32))
    with pytest.raises(ValueError, match="cannot run on inputs of the declared shapes: node 'features.0' \\(Conv\\).*2 channels"):
        nc.compile(models.lenet5(), (2, 32, 32))  # conv1 takes 1 channel; fails at compile time


def test_compile_matches_pytorch():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.dirname(__file__))
    import torch_ref

    nc.manual_seed(0)
    model = _randomize_batch_norm(models.resnet18(num_classes=10))
    twin, _ = torch_ref.resnet18(num_classes=10)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    twin.eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 40, 40)).astype(np.float32)
    with torch.no_grad():
        ref = twin(torch.from_numpy(x)).numpy().astype(np.float64)
    assert_close(nc.compile(model, (3, 40, 40))(x), ref, np.full(ref.shape, np.abs(ref).max()))


# --------------------------------------------------------------------------- rewrites


def test_batch_norm_folds_into_the_convolution():
    nc.manual_seed(0)
    model = _randomize_batch_norm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=1e-3), nn.ReLU()))
    compiled = nc.compile(model, (3, 6, 6))
    (conv,) = compiled.graph.nodes
    assert conv.op == "Conv" and conv.attrs["epilogue"] == (1.0, 0.0, np.inf)
    conv_layer, bn = model[0], model[1]
    s = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + 1e-3)
    w, b = (compiled.graph.constants[n] for n in conv.inputs[1:])
    np.testing.assert_allclose(w, conv_layer.weight.data * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(b, (conv_layer.bias.data - bn.running_mean) * s + bn.bias.data, rtol=1e-5, atol=1e-6)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_activations_fuse_into_linear_layers():
    """A ReLU or leaky ReLU after a Linear is applied to its result in place (a node less); one
    whose input another node reads too stays a node. The results are the model's own."""
    nc.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 7), nn.LeakyReLU(0.2), nn.Linear(7, 5))
    compiled = nc.compile(model, (3, 4))
    assert [n.op for n in compiled.graph.nodes] == ["Flatten", "Linear", "Linear", "Linear"]
    assert [n.attrs.get("epilogue") for n in compiled.graph.nodes[1:]] == [(1.0, 0.0, np.inf), (0.2, -np.inf, np.inf),
                                                                           None]
    x = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32) * 3
    assert_close(compiled(x), model(x))
    shared = nn.Sequential(nn.Linear(5, 5), nn.Residual(nn.ReLU()))  # relu(y) + y: y read twice
    compiled = nc.compile(shared, (5,))
    y = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    assert [n.op for n in compiled.graph.nodes] == ["Linear", "Relu", "Add"]
    assert "epilogue" not in compiled.graph.nodes[0].attrs
    assert_close(compiled(y), shared(y))


def test_resnet18_graph_after_rewrites():
    """20 convolutions, each with its batch norm folded in; the 9 before a ReLU with it fused, the
    8 before a residual addition with the addition and the ReLU after it fused; then a pool, a
    flatten, a linear."""
    compiled = nc.compile(models.resnet18(num_classes=10).eval(), (3, 32, 32))
    ops = [n.op for n in compiled.graph.nodes]
    convs = [n for n in compiled.graph.nodes if n.op == "Conv"]
    assert len(convs) == 20 and sum(n.attrs.get("epilogue") == (1.0, 0.0, np.inf) for n in convs) == 17
    assert sum(len(n.inputs) == 4 for n in convs) == 8
    assert ops == ["Conv", "MaxPool", *["Conv"] * 19, "GlobalAveragePool", "Flatten", "Linear"], ops


def test_residual_fusion_falls_back_when_the_shortcut_broadcasts():
    """Add(conv, r) with an r that broadcasts: the same result as the Add written out."""
    nc.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    from numbaconv.inference import Graph, InferenceModel, Node, TensorInfo

    for r_shape in [(2, 4, 5, 5), (1, 4, 1, 1), (4, 5, 5)]:
        r = np.random.default_rng(1).standard_normal(r_shape).astype(np.float32)
        nodes = [Node("Conv", ["x", "w", "b"], ["c"], dict(pads=[1, 1, 1, 1]), "conv"),
                 Node("Add", ["c", "r"], ["s"], {}, "add"), Node("LeakyRelu", ["s"], ["y"], dict(alpha=0.2), "act")]
        constants = {"w": conv.weight.data.copy(), "b": conv.bias.data.copy(), "r": r}
        graph = Graph(nodes, [TensorInfo("x", (2, 3, 5, 5), np.dtype(np.float32))], [TensorInfo("y", None, None)],
                      constants)
        model = InferenceModel(graph)
        assert [n.op for n in model.graph.nodes] == ["Conv"]
        x = np.random.default_rng(2).standard_normal((2, 3, 5, 5)).astype(np.float32)
        s = conv(x) + r
        ref = np.where(s < 0, 0.2 * s, s).astype(np.float64)
        assert_close(model(x), ref, np.full(ref.shape, np.abs(ref).max()), what=f"residual {r_shape}")


# --------------------------------------------------------------------------- memory plan


def test_activations_are_freed_after_their_last_reader():
    """A chain of 12 same-sized convolutions keeps a few activations alive, not 12."""
    nc.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
    compiled = nc.compile(nn.Sequential(*layers).eval(), (16, 48, 48))
    x = np.random.default_rng(0).standard_normal((2, 16, 48, 48)).astype(np.float32)
    compiled(x)  # warm: compiled kernels loaded, per-thread scratch allocated
    tracemalloc.start()
    try:
        compiled(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * x.nbytes, f"peak {peak / x.nbytes:.1f} activations"


def test_inputs_are_never_modified_by_in_place_ops():
    model = nc.compile(nn.Sequential(nn.ReLU(), nn.Sigmoid()), (3,))
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    y = model(x)
    np.testing.assert_array_equal(x, [[-1.0, 0.5, 2.0]])
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-6)
