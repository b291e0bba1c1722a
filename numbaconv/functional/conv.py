"""Convolution, with ``torch.nn.functional``'s names and semantics.

Each call flows one way: check the arguments and build the geometry (``_geometry``), choose the
algorithm, allocate the outputs, run a kernel (``kernels.cpu``). No loop over data is written
here. 1-D and 2-D calls are 3-D calls on views with singleton spatial dimensions.
"""

import functools
import math
from collections import namedtuple

import numpy as np

from .. import config
from .._device import CUDA, place
from .._geometry import (
    check_choice, check_grad_out, check_needs, conv_geometry, conv_transpose_geometry,
)
from .._padding import pad, pad_adjoint
from ..kernels.cpu import ALGORITHMS, candidates, conv_direct, conv_winograd
from ._autotune import tuned

#: "auto": the rules of ``choose_algorithm`` (or, in autotune mode, "tune"); "tune": time the
#: candidates on the first call of each shape and keep the fastest (``_autotune``); or a kernel.
ALGORITHM_CHOICES = ("auto", "tune", *ALGORITHMS)


#: The forward rule's bound on the output elements (batch x channels x positions) of a small
#: convolution that the direct loops run (see ``choose_algorithm``).
DIRECT_MAX_OUTPUTS = 1 << 16

#: The bounds within which the rules run a larger stride-1 convolution on the direct loops, every
#: direction (see ``choose_algorithm``): output channels per group, multiply-adds per output
#: position per group (32 channels into 32 at 3x3), and the share of the grid's positions that
#: are outputs.
DIRECT_MAX_OUT_PER_GROUP = 32
DIRECT_MAX_WORK = 32 * 32 * 9
DIRECT_MIN_FILL = 0.75

#: The wider bounds within which the rules run a stride-1 convolution on the direct loops where
#: Winograd's tiles do not pay (see ``choose_algorithm``): at most this many channels per group
#: on either side, at most ``DIRECT_MAX_WORK_WIDE`` multiply-adds per output position a group,
#: and at least ``DIRECT_MIN_PRODUCED`` channels a group out of the loops (the input channels
#: for the input gradient, the output channels otherwise).
DIRECT_MAX_CHANNELS = 64
DIRECT_MAX_WORK_WIDE = 64 * 64 * 9
DIRECT_MIN_PRODUCED = 16


def choose_algorithm(geom, direction="forward"):
    """The algorithm ``algorithm="auto"`` runs for one direction ("forward", "grad_input" or
    "grad_weight") of a convolution, chosen separately as cuDNN chooses its forward,
    backward-data and backward-filter algorithms.

    im2col runs one GEMM per group with a group's output channels as rows: with many channels
    per group the GEMM runs near the machine's peak and im2col wins. With few, the GEMM cannot
    pay for unfolding a column buffer ``taps`` times the size of the input, and the direct
    loops, which read the input once, win; at stride 1 they run as long vectorized loops over
    whole planes. ``bench/algorithms.py`` measures both on each direction; the rules below are
    read off its table (``bench/results/algorithms.md``), C/g and K/g being the input and output
    channels per group:

    - K/g <= 2 (depthwise and alike): direct, every direction, any stride (5-10x faster).
    - C/g == 1 and K/g <= 8 at stride 1 (a first layer of a few filters on one channel, as
      LeNet's c1): direct forward at any size. im2col's GEMM would have at most eight rows over
      a column buffer taps times the input. LeNet's c1 takes its weight gradient from the
      direct loops by the next rule, its input gradient by the rules below it.
    - one input channel into several at stride 1 (``conv_direct._single_input_channel``): the
      direct forward pass and weight gradient at any size, whose sums stay in registers while
      im2col's GEMM has a single column a tap. Measured, ms, direct / im2col, medians of bursts
      in turns, 2-core AVX-512, weight gradient: audio (1, 1, 16000) -> 64, k = 9, 0.18 / 0.53,
      at batch 8 2.40 / 4.12; (16, 1, 64x64) -> 64, 5x5, 2.01 / 2.95; (2, 1, 8x32x32) -> 32,
      3x3x3, 0.37 / 1.61; (256, 1, 9x9) -> 48, 3x3, 0.64 / 1.47, -> 6, 0.20 / 0.30; (1, 1,
      32x32) -> 64, 3x3, 0.053 / 0.050. Forward: audio 0.18 / 0.29, at batch 8 2.11 / 2.59;
      (16, 1, 64x64) -> 64 1.79 / 2.96; (4, 1, 128x128) -> 16, 7x7, 0.62 / 1.80; (2, 1,
      8x32x32) -> 32 0.33 / 0.55; (1, 1, 4000) -> 128, k = 9, 0.105 / 0.162; (8, 1, 28x28) ->
      32, 3x3, 0.11 / 0.15; the one loss (64, 1, 28x28) -> 32, 3x3, 0.57 / 0.53. The input
      gradient, with one channel to produce, stays with the rules below.
    - stride 1, at most ``DIRECT_MAX_OUT_PER_GROUP`` output channels per group, at most
      ``DIRECT_MAX_WORK`` multiply-adds per output position a group (C/g * K/g * taps, a
      kernel wider than 1x1) and ``DIRECT_MIN_FILL`` of the grid's positions outputs: direct,
      every direction. The stride-1 loops compute at every position of the padded grid (these
      measurements: two output channels and six taps per pass; since, four channels' sums in
      registers through every tap, ``conv_direct._correlate_stacked``); where most of
      the grid is output and a GEMM would have few rows, that beats unfolding. Measured, ms,
      direct / im2col, forward, input gradient, weight gradient (``bench/algorithms.py``, 2-core
      AVX2): (64, 3, 32x32) -> 16, 5x5, pad 2 (fill 0.79) 5.5 / 7.4, 6.9 / 8.4, 4.8 / 7.7;
      (8, 16, 32x32) -> 16, 3x3 1.2 / 1.9, 1.1 / 2.0, 1.1 / 1.9; (8, 32, 32x32) -> 32, 3x3 3.9 /
      4.3, 3.8 / 4.2, 3.8 / 4.3; (8, 64, 28x28) -> 64 in 4 groups of 16 3.6 / 5.4, 3.7 / 6.7,
      3.1 / 5.6; LeNet's c1 at batch 64 (fill 0.77) 0.56 / 1.34, 1.20 / 1.25, 0.69 / 1.94. Not:
      LeNet's c2 at batch 64 (fill 0.51: half the loops' work is dropped) 1.55 / 0.92 and
      alike; 64 channels into 64 a tie at batch 8 and im2col's at batch 1 (5.4 / 2.9); one
      channel into 64 (audio: (8, 1, 16000), k = 9) im2col's, 7.3 / 4.5.
      The forward pass takes the direct loops within the same bounds over a grid of any fill
      when its samples interleave (``conv_direct.samples_interleaved``: a batch whose output
      rows, side by side, make long loops), for they then skip the margin. Measured, forward
      ms, interleaved direct / im2col (median of 15 alternating bursts, 2-core AVX-512,
      numbaconv imported first): LeNet's c2 at batch 64 0.59 / 0.61; (64, 16, 16x16) -> 20,
      5x5, pad 2 3.5 / 11.4; (32, 16, 12x12) -> 24, 3x3 0.39 / 0.88; (64, 4, 12x12) -> 12,
      5x5 0.22 / 0.69; (16, 3, 28x28) -> 32, 5x5 0.70 / 1.55; (32, 8, 12x12) -> 16, 3x3 0.26 /
      0.27. With PyTorch imported first and its threads busy between calls (``numbaconv
      bench``'s default), LeNet's c2 read the other way, 0.78 / 0.56. So does the weight
      gradient, since its sums are in registers, though it computes the margin: ms, direct /
      im2col, medians of bursts in turns, same host: LeNet's c2 at batch 64 0.58 / 0.72; (64,
      16, 16x16) -> 20 2.46 / 5.73; (32, 16, 12x12) -> 24 0.27 / 0.44; (16, 3, 28x28) -> 32
      0.43 / 0.82; (64, 4, 12x12) -> 12 0.29 / 0.37; (32, 8, 12x12) -> 16 0.17 / 0.23.
    - stride 1, C/g * K/g <= 128 and at most ``DIRECT_MAX_OUTPUTS`` output elements: direct,
      every direction (LeNet's layers at batch 1: 1.2-1.5x faster, backward too).
    - stride 1, grouped, C/g * K/g <= 64: direct, every direction (the per-group GEMMs are tiny
      and the columns are unfolded for all of them: (8, 64, 28x28) in 16 groups of 4, 2.5-3.2
      against 6.7-7.1 ms; in 8 groups of 8, 3.5-3.9 against 6.0-6.2 ms).
    - a 3x3 kernel at unit stride and dilation, one group, forward or input gradient, at least
      ``conv_winograd.MIN_CHANNELS`` channels in and out and at least ``conv_winograd.MIN_TILES``
      tiles of 4x4 outputs (``MIN_TILES_LARGE_WEIGHT`` past 128 x 128 channels): Winograd's
      F(4x4, 3x3), a quarter of im2col's multiply-adds in its GEMMs (``conv_winograd.pays``:
      ResNet-18's first two stages, 0.68-0.75 of im2col's time at batch 8 and 0.78-0.95 at
      batch 1; VGG-16's layers at batch 1 up to 56x56). Its GEMMs are 36 a call, tiles x C by
      C x K, and each call transforms the weight: with few tiles (ResNet-18's last two stages
      at batch 1) the GEMMs are short, and im2col's one long GEMM wins.
    - stride 1, where Winograd's tiles do not pay: the direct loops within wider bounds, every
      direction: at most ``DIRECT_MAX_CHANNELS`` channels a group on either side, at most
      ``DIRECT_MAX_WORK_WIDE`` multiply-adds per output position a group, a kernel wider than
      1x1, ``DIRECT_MIN_FILL`` of the grid output, more than one channel a group into the loops
      and at least ``DIRECT_MIN_PRODUCED`` out of them (the input channels for the input
      gradient, the output channels otherwise). Long planes above all, whose column buffer
      (taps times the input) spills from the caches while the loops keep a block of the input
      in L2 for every output channel. Measured, ms, direct / im2col, forward, input gradient,
      weight gradient (2-core AVX-512, alternating calls, numbaconv imported first): audio
      (1, 64, 16000) -> 64, k = 9, 8.6 / 11.8, 8.3 / 10.1, 9.7 / 10.2; at batch 8 63 / 83,
      55 / 71, 82 / 79; video (1, 32, 16x56x56) -> 32, 3x3x3, 24 / 28, 24 / 25, 19 / 29;
      (64, 16, 32x32) -> 32, 5x5, 14 / 26, 16 / 29, 19 / 26; (8, 32, 32x32) -> 64, 3x3, 3.2 /
      3.8, 2.9 / 5.1, 3.1 / 3.5; VGG-16's first layer (8, 3, 224x224) -> 64 34 / 40 and 21 / 35
      forward and weight gradient, but its input gradient, 3 channels out of the loops, 29 /
      26. With NumPy's BLAS threads spinning after each GEMM (NumPy imported before numbaconv),
      a backward pass that mixes the loops and a GEMM paid for it: audio at batch 1, PyTorch
      first, whole backward 16.3 ms direct, 24.3 mixed, 25.1 im2col. Not past the bounds:
      (8, 64, 28x28) -> 64, 5x5 (64 x 64 x 25 a position) 11 / 12, 15 / 9.2, 12 / 13;
      (8, 48, 28x28) -> 48, 5x5 8.6 / 7.6, 8.7 / 5.9; ResNet-18's (1, 256, 14x14) -> 256
      3.1 / 2.0; VGG-16's (1, 128, 112x112) -> 128 33 / 27.
    - otherwise im2col, by 1.2x to 30x on larger channel counts and every strided shape.

    The rules are a fixed guess made on one machine; where they guess wrong for a shape, the
    autotune mode (``numbaconv.set_autotune(True)`` or ``algorithm="tune"``) measures instead.
    ``numbaconv bench --suite all`` shows, per shape, what "auto" chose and what each costs.
    """
    per_group_in, per_group_out = geom.in_channels // geom.groups, geom.out_channels // geom.groups
    if per_group_out <= 2:
        return "direct"
    if geom.stride == (1, 1, 1):
        if per_group_in == 1 and per_group_out <= 8 and direction == "forward":
            return "direct"
        if direction != "grad_input" and conv_direct._single_input_channel(geom):
            return "direct"
        work = per_group_in * per_group_out
        outputs = geom.batch * geom.out_channels * math.prod(geom.out_size)
        if work <= 128 and outputs <= DIRECT_MAX_OUTPUTS:
            return "direct"
        if geom.groups > 1 and work <= 64:
            return "direct"
        if (per_group_out <= DIRECT_MAX_OUT_PER_GROUP and 1 < math.prod(geom.kernel)
                and work * math.prod(geom.kernel) <= DIRECT_MAX_WORK
                and (math.prod(geom.out_size) >= DIRECT_MIN_FILL * math.prod(_grid(geom))
                     or direction != "grad_input" and conv_direct.samples_interleaved(geom) > 1)):
            return "direct"
        if conv_winograd.applies(geom, direction) and conv_winograd.pays(geom):  # never the weight gradient
            return "winograd"
        produced, consumed = ((per_group_in, per_group_out) if direction == "grad_input"
                              else (per_group_out, per_group_in))
        if (1 < math.prod(geom.kernel) and 1 < consumed and DIRECT_MIN_PRODUCED <= produced
                and max(produced, consumed) <= DIRECT_MAX_CHANNELS
                and work * math.prod(geom.kernel) <= DIRECT_MAX_WORK_WIDE
                and math.prod(geom.out_size) >= DIRECT_MIN_FILL * math.prod(_grid(geom))):
            return "direct"
    return "im2col"


def _grid(geom):
    """The stride-1 loops' grid: the output plus the dilated kernel's reach."""
    return tuple(o + d * (k - 1) for o, d, k in zip(geom.out_size, geom.dilation, geom.kernel))


def _kernel(op, algorithm, geom, direction):
    """The kernel entry point that runs ``direction`` of this convolution: the algorithm named,
    the rule's choice for "auto", or for "tune" (and "auto" in autotune mode) the fastest one,
    timed on the first call of this geometry, direction and dtype."""
    if algorithm == "tune" or (algorithm == "auto" and config.AUTOTUNE):
        return tuned(geom, direction, candidates(geom, direction), choose_algorithm(geom, direction))
    name = choose_algorithm(geom, direction) if algorithm == "auto" else algorithm
    return getattr(ALGORITHMS[name], direction)


def _as5(f, a, channels, size):
    """A C-contiguous (N, channels, D, H, W) view (a copy only when ``a`` is not contiguous)."""
    return f.contiguous(a).reshape(a.shape[0], channels, *size)


def _weight5(f, weight, geom):
    return f.contiguous(weight).reshape(*weight.shape[:2], *geom.kernel)


def _user(a5, geom):
    """Drop the singleton spatial dimensions a 1-D or 2-D call does not have."""
    return a5.reshape(*a5.shape[:2], *a5.shape[5 - geom.ndim:])


def _bias_sum(grad_out):
    return grad_out.sum(axis=(0, *range(2, grad_out.ndim)), dtype=grad_out.dtype)


def _add_bias(out, bias):
    out += bias.reshape(-1, 1, 1, 1)


#: The array operations of the flow below, for one device: the same flow runs on the host and on
#: the GPU.
_Flow = namedtuple("_Flow", "contiguous empty pad pad_adjoint bias_sum add_bias kernel")

_HOST = _Flow(
    contiguous=np.ascontiguousarray, empty=np.empty,
    pad=pad, pad_adjoint=lambda g, pads, mode: np.ascontiguousarray(pad_adjoint(g, pads, mode)),
    bias_sum=_bias_sum, add_bias=_add_bias,
    kernel=lambda op, algorithm, geom, direction: _kernel(op, algorithm, geom, direction),
)


def _cuda_kernel(op, algorithm, geom, direction):
    """The CUDA entry point for ``direction``. "auto" (and "tune", whose timings are the CPU's)
    takes direct for depthwise-like convolutions, K/g <= 2 (im2col's GEMM would have at most two
    rows), else im2col."""
    from ..kernels.cuda import ALGORITHMS as CUDA_ALGORITHMS

    if algorithm in ("auto", "tune"):
        algorithm = "direct" if geom.out_channels // geom.groups <= 2 else "im2col"
    if algorithm not in CUDA_ALGORITHMS:
        raise ValueError(f"{op}: algorithm {algorithm!r} runs on the CPU only; on the GPU choose one of "
                         f"{', '.join(['auto', 'tune', *CUDA_ALGORITHMS])}")
    return getattr(CUDA_ALGORITHMS[algorithm], direction)


@functools.cache
def _cuda_flow():
    """The flow's operations on the GPU; kernels.cuda (and numba.cuda) imported on first use.
    Device arrays in, numba device arrays out; the inputs are C-contiguous (checked by ``place``)."""
    from ..kernels.cuda import _launch, pad as cuda_pad

    return _Flow(
        contiguous=lambda a: a, empty=_launch.empty, pad=cuda_pad.pad,
        pad_adjoint=cuda_pad.pad_adjoint, bias_sum=_launch.channel_sum, add_bias=_launch.add_bias, kernel=_cuda_kernel,
    )


def _flow(op, **arrays):
    """(flow, arrays): the operations of the device the (non-None) arrays are on, one placement
    check for the call (a mix of host and GPU arrays is a ValueError naming each), and the
    arrays as that device's kernels take them, in the order given."""
    where, arrays = place(op, **arrays)
    return (_cuda_flow() if where == CUDA else _HOST), arrays


def _conv(op, ndim, x, weight, bias, stride, padding, dilation, groups, padding_mode, algorithm):
    f, (x, weight, bias) = _flow(op, x=x, weight=weight, bias=bias)
    geom = conv_geometry(op, x, weight, bias, stride, padding, dilation, groups, padding_mode, ndim)
    check_choice(op, "algorithm", algorithm, ALGORITHM_CHOICES)
    out = f.empty((geom.batch, geom.out_channels, *geom.out_size), dtype=x.dtype)
    b = None if bias is None else f.contiguous(bias)
    x5 = _as5(f, f.pad(x, geom.spatial(geom.mode_padding), padding_mode), geom.in_channels, geom.in_size)
    f.kernel(op, algorithm, geom, "forward")(x5, _weight5(f, weight, geom), b, out, geom, config.WORKSPACE_BYTES)
    return _user(out, geom)


def _conv_backward(op, ndim, grad_out, x, weight, stride, padding, dilation, groups, padding_mode, needs, algorithm):
    f, (grad_out, x, weight) = _flow(op, grad_out=grad_out, x=x, weight=weight)
    geom = conv_geometry(op, x, weight, None, stride, padding, dilation, groups, padding_mode, ndim)
    check_choice(op, "algorithm", algorithm, ALGORITHM_CHOICES)
    needs = check_needs(op, needs)
    check_grad_out(op, grad_out, (geom.batch, geom.out_channels, *geom.spatial(geom.out_size)), x.dtype)
    go5 = _as5(f, grad_out, geom.out_channels, geom.out_size)
    w5 = _weight5(f, weight, geom)
    grad_x = grad_weight = grad_bias = None
    if needs[0]:
        gx5 = f.empty((geom.batch, geom.in_channels, *geom.in_size), dtype=x.dtype)
        f.kernel(op, algorithm, geom, "grad_input")(go5, w5, gx5, geom, config.WORKSPACE_BYTES)
        grad_x = f.pad_adjoint(_user(gx5, geom), geom.spatial(geom.mode_padding), padding_mode)
    if needs[1]:
        x5 = _as5(f, f.pad(x, geom.spatial(geom.mode_padding), padding_mode), geom.in_channels, geom.in_size)
        grad_weight = f.empty(w5.shape, dtype=x.dtype)
        f.kernel(op, algorithm, geom, "grad_weight")(go5, x5, grad_weight, geom, config.WORKSPACE_BYTES)
        grad_weight = grad_weight.reshape(weight.shape)
    if needs[2]:
        grad_bias = f.bias_sum(grad_out)
    return grad_x, grad_weight, grad_bias


def _conv_transpose(op, ndim, x, weight, bias, stride, padding, output_padding, groups, dilation, algorithm):
    f, (x, weight, bias) = _flow(op, x=x, weight=weight, bias=bias)
    geom = conv_transpose_geometry(op, x, weight, bias, stride, padding, output_padding, groups, dilation, ndim)
    check_choice(op, "algorithm", algorithm, ALGORITHM_CHOICES)
    out = f.empty((geom.batch, geom.in_channels, *geom.in_size), dtype=x.dtype)
    # a transposed convolution is the input gradient of the convolution it transposes
    f.kernel(op, algorithm, geom, "grad_input")(_as5(f, x, geom.out_channels, geom.out_size), _weight5(f, weight, geom), out, geom, config.WORKSPACE_BYTES)
    if bias is not None:
        f.add_bias(out, bias)
    return _user(out, geom)


def _conv_transpose_backward(op, ndim, grad_out, x, weight, stride, padding, output_padding, groups, dilation, needs, algorithm):
    f, (grad_out, x, weight) = _flow(op, grad_out=grad_out, x=x, weight=weight)
    geom = conv_transpose_geometry(op, x, weight, None, stride, padding, output_padding, groups, dilation, ndim)
    check_choice(op, "algorithm", algorithm, ALGORITHM_CHOICES)
    needs = check_needs(op, needs)
    check_grad_out(op, grad_out, (geom.batch, geom.in_channels, *geom.spatial(geom.in_size)), x.dtype)
    go5 = _as5(f, grad_out, geom.in_channels, geom.in_size)
    w5 = _weight5(f, weight, geom)
    grad_x = grad_weight = grad_bias = None
    if needs[0]:  # ... and so its input gradient is that convolution's forward
        gx5 = f.empty((geom.batch, geom.out_channels, *geom.out_size), dtype=x.dtype)
        f.kernel(op, algorithm, geom, "forward")(go5, w5, None, gx5, geom, config.WORKSPACE_BYTES)
        grad_x = _user(gx5, geom)
    if needs[1]:  # ... and its weight gradient that convolution's, with the roles of x and grad_out swapped
        grad_weight = f.empty(w5.shape, dtype=x.dtype)
        f.kernel(op, algorithm, geom, "grad_weight")(_as5(f, x, geom.out_channels, geom.out_size), go5, grad_weight, geom, config.WORKSPACE_BYTES)
        grad_weight = grad_weight.reshape(weight.shape)
    if needs[2]:
        grad_bias = f.bias_sum(grad_out)
    return grad_x, grad_weight, grad_bias


_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def _public(ndim, name, doc, impl):
    """Name and document one dimensionality of an op: conv1d/2d/3d are one function, three views."""
    impl.__name__ = impl.__qualname__ = name
    impl.__doc__ = doc.format(n=ndim, s=_SPATIAL[ndim], k=_SPATIAL[ndim].replace("L", "kL").replace("D", "kD").replace("H", "kH").replace("W", "kW"))
    return impl


_CONV_DOC = """{n}-D convolution (cross-correlation, as in PyTorch).

    x: (N, C_in, {s}); weight: (C_out, C_in / groups, {k}); bias: (C_out,) or None.
    Returns (N, C_out, *out_size), the dtype of x (float32 or float64), C-contiguous.

    stride, dilation: int or tuple of {n} ints >= 1. padding: int or tuple of {n} ints >= 0, or
    "valid" (no padding) or "same" (output size = input size; stride 1 only). padding_mode:
    "zeros", "reflect", "replicate" or "circular". groups: split the channels into independent
    groups (groups == C_in is depthwise). algorithm: "direct", "im2col", "winograd" (3x3 at
    stride 1 and dilation 1, one group, on the CPU: Winograd's F(4x4, 3x3) tiles for the forward
    pass and the input gradient, im2col's GEMM for the weight gradient), "auto" (rules, or
    autotune mode when ``numbaconv.set_autotune(True)``) or "tune" (time those that can run it
    on the first call of each shape and keep the fastest).
    """

_CONV_BACKWARD_DOC = """Gradients of conv{n}d with respect to x, weight and bias.

    grad_out: (N, C_out, *out_size), the gradient of the loss with respect to conv{n}d's output;
    the other arguments are conv{n}d's. Returns (grad_x, grad_weight, grad_bias), shaped like x,
    weight and (C_out,), with None in place of each gradient that ``needs`` turns off.
    """

_CONV_TRANSPOSE_DOC = """{n}-D transposed convolution (the adjoint of conv{n}d, as in PyTorch).

    x: (N, C_in, {s}); weight: (C_in, C_out / groups, {k}); bias: (C_out,) or None.
    Output size per dimension: (in - 1) * stride - 2 * padding + dilation * (k - 1)
    + output_padding + 1, with output_padding < max(stride, dilation).
    """

_CONV_TRANSPOSE_BACKWARD_DOC = """Gradients of conv_transpose{n}d with respect to x, weight and bias.

    grad_out: (N, C_out, *out_size); the other arguments are conv_transpose{n}d's.
    Returns (grad_x, grad_weight, grad_bias), None where ``needs`` turns a gradient off.
    """


def _define(ndim):
    def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", algorithm="auto"):
        return _conv(f"conv{ndim}d", ndim, x, weight, bias, stride, padding, dilation, groups, padding_mode, algorithm)

    def conv_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                      needs=(True, True, True), algorithm="auto"):
        return _conv_backward(f"conv{ndim}d_backward", ndim, grad_out, x, weight, stride, padding, dilation,
                              groups, padding_mode, needs, algorithm)

    def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, algorithm="auto"):
        return _conv_transpose(f"conv_transpose{ndim}d", ndim, x, weight, bias, stride, padding, output_padding,
                               groups, dilation, algorithm)

    def conv_transpose_backward(grad_out, x, weight, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                                needs=(True, True, True), algorithm="auto"):
        return _conv_transpose_backward(f"conv_transpose{ndim}d_backward", ndim, grad_out, x, weight, stride, padding,
                                        output_padding, groups, dilation, needs, algorithm)

    return (
        _public(ndim, f"conv{ndim}d", _CONV_DOC, conv),
        _public(ndim, f"conv{ndim}d_backward", _CONV_BACKWARD_DOC, conv_backward),
        _public(ndim, f"conv_transpose{ndim}d", _CONV_TRANSPOSE_DOC, conv_transpose),
        _public(ndim, f"conv_transpose{ndim}d_backward", _CONV_TRANSPOSE_BACKWARD_DOC, conv_transpose_backward),
    )


conv1d, conv1d_backward, conv_transpose1d, conv_transpose1d_backward = _define(1)
conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward = _define(2)
conv3d, conv3d_backward, conv_transpose3d, conv_transpose3d_backward = _define(3)

__all__ = [
    f"{op}{n}d{suffix}" for n in (1, 2, 3) for op in ("conv", "conv_transpose") for suffix in ("", "_backward")
]
