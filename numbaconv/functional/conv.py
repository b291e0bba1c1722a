"""Convolution, with ``torch.nn.functional``'s names and semantics.

Each call flows one way: check the arguments and build the geometry (``_geometry``), choose the
algorithm, allocate the outputs, run a kernel (``kernels.cpu``). No loop over data is written
here. 1-D and 2-D calls are 3-D calls on views with singleton spatial dimensions.
"""

import functools
import math
from collections import namedtuple
from typing import NamedTuple

import numpy as np

from .. import config
from .._device import CUDA, place
from .._geometry import (
    check_choice, check_grad_out, check_needs, conv_geometry, conv_transpose_geometry,
)
from .._padding import pad, pad_adjoint
from ..kernels.cpu import ALL_ALGORITHMS, candidates, conv_blocked, conv_direct, conv_winograd, norm
from ._autotune import tuned

#: "auto": the rules of ``choose_algorithm`` (or, in autotune mode, "tune"); "tune": time the
#: candidates on the first call of each shape and keep the fastest (``_autotune``); or a kernel.
ALGORITHM_CHOICES = ("auto", "tune", *ALL_ALGORITHMS)


#: The input gradient of fewer input channels a group than the direct loops sum at once
#: (``conv_direct.QUAD``), from at least this many output channels a group, runs im2col (see
#: ``choose_algorithm``).
FEW_PRODUCED_MIN_CONSUMED = 32

#: The gradients over fewer output positions (batch x plane) than this, with at least
#: ``SMALL_PLANE_MIN_WORK`` channel pairs a group, run im2col (see ``choose_algorithm``), and
#: the forward pass too where ``Rules.small_plane_forward``.
SMALL_PLANE_POSITIONS = 512
SMALL_PLANE_MIN_WORK = 64 * 64

#: A strided convolution's gradients run on its stride phases at most this many times the
#: multiply-adds (see ``choose_algorithm`` and ``Rules.phases_max_channels``).
PHASES_MAX_OVERHEAD = 1.5

#: Outside an inference graph the blocked loops pack the weight on every call (``conv_blocked.pack``,
#: about 0.1 ms for 256 x 128 x 3x3 on the AVX2 host), so "auto" takes their columns rule
#: (``Rules.blocked_max_columns``) there only for weights of at most ``PACKING_MAX_WEIGHTS``
#: elements, over at least ``PACKING_MIN_POSITIONS`` output positions in all (the packing a
#: small share of the call), with at least ``PACKING_MIN_CHANNEL_TAPS`` input channels x taps
#: (fewer leave each task's loop over them short). See ``choose_algorithm``.
PACKING_MAX_WEIGHTS = 1 << 20
PACKING_MIN_POSITIONS = 196
PACKING_MIN_CHANNEL_TAPS = 100


class Rules(NamedTuple):
    """The thresholds of ``choose_algorithm`` that differ with the host's vector registers.
    The direct loops keep 24 sums in AVX-512's 32 registers (``conv_direct.SIX_VECTORS``) and
    12 in AVX2's 16: a third fewer loads a multiply-add, against a GEMM (NumPy's BLAS) that
    runs near the core's peak on either. So with AVX2 the loops win fewer shapes."""

    #: A strided convolution's forward pass runs the direct loops, as a stride-1 one over its
    #: input's stride phases (``conv_direct.phases``), while a block of the loops' input (a
    #: group's phase channels over ``conv_direct.STACK_BLOCK`` positions, or all there are) has
    #: at most this many elements: every quad of output channels reads its block again.
    phases_max_block: int
    #: Its gradients, whose phases' kernels are padded with zeros, run there with at most this
    #: many input channels a group (and ``PHASES_MAX_OVERHEAD``).
    phases_max_channels: int
    #: Whether the small-plane rule (``SMALL_PLANE_POSITIONS``) covers the forward pass too.
    small_plane_forward: bool
    #: Winograd's tiles pay from this many channels in x out (``conv_winograd.pays``) ...
    winograd_min_channel_pairs: int
    #: ... and from this many on, over at least ``winograd_large_weight_min_tiles`` tiles of 4x4
    #: outputs (``conv_winograd.MIN_TILES`` below it).
    winograd_large_weight: int
    winograd_large_weight_min_tiles: int
    #: A stride-1 forward pass and input gradient with at least this many output channels a
    #: group run im2col rather than the loops (None: no such rule).
    im2col_min_out_channels: int | None
    #: Where the weight is packed already (an inference graph's constant), a forward pass over at
    #: most this many output positions in all runs the blocked loops (``conv_blocked.pays``;
    #: None: no such rule) ...
    blocked_max_positions: int | None
    #: ... and one of at most this many multiply-adds in all ...
    blocked_max_work: int | None
    #: ... and a strided one of at most this many input channels x taps an output, into whole
    #: blocks of output channels, however many positions (the stems: ResNet's 7x7/2, AlexNet's
    #: 11x11/4, MobileNet's 3x3/2) ...
    blocked_strided_max_channel_taps: int | None
    #: ... and, where the weight is packed already, one with a kernel wider than 1x1 whose im2col
    #: column matrix (positions x input channels x taps) has at most this many elements.
    blocked_max_columns: int | None


#: Read off ``bench/algorithms.py`` on a 2-core AVX-512 host (Zen 4).
AVX512_RULES = Rules(phases_max_block=1 << 19, phases_max_channels=16, small_plane_forward=False,
                     winograd_min_channel_pairs=128 * 64, winograd_large_weight=256 * 256,
                     winograd_large_weight_min_tiles=128, im2col_min_out_channels=None,
                     blocked_max_positions=None, blocked_max_work=None, blocked_strided_max_channel_taps=None,
                     blocked_max_columns=None)

#: Read off ``bench/algorithms.py`` on a 2-core AVX2 host (Zen 3), also for hosts with narrower
#: vectors. Measured, ms, direct / im2col (/ Winograd), medians of 9 rounds: forward, (1, 64,
#: 56x56) -> 128, 3x3/2 (a block of 215,040) 2.05 / 1.22, (1, 256, 14x14) -> 512, 3x3/2
#: (65,536) 1.87 / 1.47, ResNet's stem (1, 3, 224x224) -> 64, 7x7/2 (49,152) 2.31 / 2.43 and
#: 3.14 / 3.34, AlexNet's (8, 3, 224x224) -> 96, 11x11/4 (196,608) 24.4 / 24.0; the stem's
#: gradients on the phases, input 3.29 / 2.80, weight 2.94 / 2.71, AlexNet's 16.5 / 15.0 and
#: 28.6 / 24.6; short planes,
#: forward, (8, 512, 7x7) -> 512 22.0 / 13.8, (1, 512, 14x14) -> 512 8.8 / 7.3, (1, 256,
#: 14x14) -> 256 3.4 / 3.0, but (1, 128, 28x28) -> 128 (784 positions) 2.40 / 2.63; Winograd at
#: 64 x 64 channels, (8, 64, 56x56) -> 64 18.5 / 19.8 / 12.9, at batch 1 2.14 / 2.52 / 1.98;
#: Winograd over 49 tiles (a 28x28 plane), forward and input gradient, (1, 128, 28x28) -> 128
#: 1.65 / 1.74 / 1.33 and 1.72 / 1.78 / 1.70, (1, 256) -> 256 7.0 / 7.2 / 4.7 and 7.0 / 6.9 /
#: 5.8, (1, 512) -> 512 27.6 / 22.2 / 18.9 and 26.0 / 21.8 / 20.8, 98 tiles, (2, 128, 28x28)
#: -> 128, 4.3 / 4.3 / 2.6 and 4.5 / 4.3 / 3.1; but not over 49 with fewer channels, (1, 96)
#: -> 96 1.10 / 1.28 / 1.02, (1, 64) -> 128 0.86 / 1.00 / 0.88, nor over 32 or fewer, (2,
#: 256, 14x14) -> 256 5.1 / 4.4 / 4.5 and 5.2 / 4.3 / 5.1, (1, 384, 13x13) -> 384 (16 tiles)
#: 3.4 / 3.7 / 6.4; into 256 output channels, forward and input gradient (weight gradient),
#: AlexNet's (1, 96, 27x27) -> 256, 5x5, 9.2 / 7.6 and 10.2 / 7.9 (8.9 / 8.5), at batch 4 38.7
#: / 30.4 and 37.1 / 29.7 (32.6 / 31.8), (1, 64, 27x27) -> 256, 5x5, 6.1 / 5.9 and 7.6 / 5.7
#: (6.9 / 6.3), (1, 256, 28x28) -> 256, 3x3, - and 10.4 / 8.7 (8.9 / 9.2), a signal (1, 128,
#: 2000) -> 256, k = 9, 10.9 / 10.0; into 128, (1, 96, 27x27) -> 128, 5x5, 4.7 / 6.0. The
#: blocked loops' figures are in ``kernels/cpu/conv_blocked.py``: 0.71-0.83x the time of the
#: rules' choice on ResNet's 3x3 layers of 49 and 196 output positions at batch 1, even at 392;
#: 0.35-0.75x on small layers (LeNet's, up to 4 million multiply-adds), behind past 7 million;
#: with the input channels-last, 0.58-0.87x up to a million elements of im2col's columns.
#: They were not measured on AVX-512.
AVX2_RULES = Rules(phases_max_block=3 << 14, phases_max_channels=0, small_plane_forward=True,
                   winograd_min_channel_pairs=64 * 64, winograd_large_weight=128 * 128,
                   winograd_large_weight_min_tiles=48, im2col_min_out_channels=256,
                   blocked_max_positions=256, blocked_max_work=1 << 22, blocked_strided_max_channel_taps=400,
                   blocked_max_columns=1 << 20)

#: The rules for this host.
RULES = AVX512_RULES if conv_direct.SIX_VECTORS else AVX2_RULES


def choose_algorithm(geom, direction="forward"):
    """The algorithm ``algorithm="auto"`` runs for one direction ("forward", "grad_input" or
    "grad_weight") of a convolution, chosen separately as cuDNN chooses its forward,
    backward-data and backward-filter algorithms.

    The stride-1 direct loops (``conv_direct._correlate_stacked``) keep four output channels'
    sums over six vectors of positions (three with AVX2) in registers through every channel and
    tap, and read the input once, from a grid the output plus the kernel's reach; im2col
    unfolds a column buffer taps times the input and runs NumPy's GEMM on it. On a 2-core
    AVX-512 host the loops reach 260-380 GFLOP/s on ResNet's and VGG's 3x3 layers, where the
    BLAS's GEMM reaches 150-230; on a 2-core AVX2 host 80-120 against 140-150. So they win
    wherever their margin and their quads' leftovers cost less than that, and the thresholds
    that moved between the two hosts are ``RULES`` (``Rules``: ``AVX512_RULES``,
    ``AVX2_RULES``). ``bench/algorithms.py`` measures every candidate on each direction; the
    rules below are read off its table (``bench/results/algorithms.md``) and off bursts taking
    turns in one process, C/g and K/g being the input and output channels per group. Measured,
    ms, direct / im2col (/ Winograd), AVX-512, forward: ResNet-18's (1, 256, 14x14) -> 256 0.71
    / 1.28 (PyTorch 0.86), (8, 512, 7x7) -> 512 7.3 / 9.4, (1, 64, 56x56) -> 64 0.69 / 1.32 /
    0.84; VGG-16's (1, 512, 14x14) -> 512 2.9 / 4.8; AlexNet's (1, 192, 13x13) -> 384 0.72 /
    1.22; audio (1, 64, 16000) -> 64, k = 9, 3.3 / 7.6; video (1, 32, 16x56x56) -> 32 8.5 /
    20.5. AVX2's are at ``AVX2_RULES``.

    - K/g <= 2 (depthwise and alike): direct, every direction, any stride (5-10x faster).
    - stride 1, a 1x1 kernel: im2col, a GEMM on the input itself ((1, 256, 14x14) -> 256 0.14
      / 0.15; (8, 64, 56x56) -> 256 4.4 / 5.1, input gradient 4.6 / 6.7).
    - stride 1, a 3x3 kernel where Winograd's F(4x4, 3x3) pays (``conv_winograd.pays``), forward
      and input gradient: Winograd (VGG-16's (1, 128, 112x112) 11.6 / 19.6 / 9.0; (8, 512,
      14x14) -> 512, 28.9 / - / 23.2).
    - stride 1, with AVX2 (``Rules.im2col_min_out_channels``), the forward pass and input
      gradient into at least 256 output channels a group: im2col, whose GEMM over that many
      rows runs near the BLAS's peak, a third above the loops' (AlexNet's (1, 96, 27x27) ->
      256, 5x5, 9.2 / 7.6 and 10.2 / 7.9). The weight gradient stays with the loops (8.9 / 8.5,
      a tie across such shapes).
    - stride 1, the input gradient of fewer than ``conv_direct.QUAD`` input channels a group
      (the loops would repeat one to fill their quad) from at least
      ``FEW_PRODUCED_MIN_CONSUMED`` output channels a group: im2col (VGG-16's first layer,
      (1, 3, 224x224) -> 64, 5.1 / 1.8; audio (8, 1, 16000) -> 64 2.7 / 2.2; from fewer, as
      (64, 3, 32x32) -> 16, 5x5, the loops, 1.9 / 3.5).
    - stride 1, the gradients (and with ``Rules.small_plane_forward`` the forward pass) over
      fewer than ``SMALL_PLANE_POSITIONS`` output positions with at least
      ``SMALL_PLANE_MIN_WORK`` channel pairs a group: im2col. Each of the weight
      gradient loops' tasks sums one quad and one input channel over every position, and a
      short plane leaves its horizontal sums and stores unpaid ((1, 512, 14x14) -> 512 12.6 /
      10.8, (1, 256, 14x14) -> 256 1.74 / 1.51, (8, 512, 7x7) -> 512 10.2 / 9.9; at 28x28,
      (1, 128) -> 128, 0.85 / 1.29). The input gradient there takes im2col too: alone the
      loops tie or win by a little ((1, 256, 14x14) -> 256 0.82 / 1.28, (8, 512, 7x7) -> 512
      9.8 / 9.7), but a backward pass that runs both the loops and a GEMM waits on NumPy's BLAS
      threads, which spin after each GEMM where PyTorch was imported first (``numbaconv
      bench``, AlexNet's (1, 192, 13x13) -> 384, backward: 5.6 ms mixed, 3.9 im2col).
    - stride 1 otherwise: direct, every direction.
    - forward, with AVX2, a kernel wider than 1x1 whose im2col columns hold at most
      ``Rules.blocked_max_columns`` elements, under the bounds of ``PACKING_MAX_WEIGHTS``, ahead
      of every rule above but the depthwise, pointwise and Winograd ones and of the stride
      phases below: the blocked loops, the weight packed on each call. Medians, ms,
      blocked / the other rules' choice / PyTorch: ResNet-18's (1, 64, 56x56) -> 128, 3x3/2
      1.32 / 1.86 / 1.27, (1, 128, 28x28) -> 256, 3x3/2 1.12 / 1.37 / 1.25, (1, 256, 14x14) ->
      256 1.50 / 2.01 / 1.50, LeNet's c2 at batch 64 0.34 / 0.49 / 0.39. Not past the bounds:
      (8, 256, 14x14) -> 512, 3x3/2 (1.2 million weights) 7.4 / 6.7, VGG-16's (1, 512, 14x14)
      -> 512 6.6 / 6.6; LeNet's c1 (one channel, 25 taps) 0.042 / 0.035, audio (1, 1, 16000)
      -> 64, k = 9, 0.59 / 0.30.
    - a larger stride and a kernel wider than 1x1, forward, with AVX2, a stem (at most
      ``Rules.blocked_strided_max_channel_taps`` input channels x taps an output, one group,
      whole blocks of output channels): the blocked loops (``conv_blocked``, vectors along the
      output channels), the weight packed on each call (ResNet's stem 1.65 ms against 1.99 on
      the phases, AlexNet's 11x11/4 1.22 against im2col's 1.62).
    - a larger stride and a kernel wider than 1x1, forward: direct on the input's stride phases
      (``conv_direct.phases``: each phase a channel of its own under the taps that land on it,
      the weight read in place, so the loops do the convolution's own multiply-adds) within
      ``Rules.phases_max_block``. ResNet-18's stem (1, 3, 224x224) -> 64, 7x7/2 0.90 / 1.77 (PyTorch
      0.67), at batch 8 7.6 / 16.2; AlexNet's (1, 3, 227x227) -> 64, 11x11/4 0.54 / 1.09; a
      video stem (2, 3, 16x112x112) -> 64, 3x7x7/(1, 2, 2) 31 / 65; ResNet-18's 3x3/2 layers at
      batch 1, (1, 64, 56x56) -> 128 0.52 / 0.78, (1, 128, 28x28) -> 256 0.54 / 0.76, (1, 256,
      14x14) -> 512 0.68 / 0.95; (8, 32, 32x32) -> 64, 3x3/2 0.65 / 0.79. Past the bound, (8,
      64, 56x56) -> 128 (blocks of 256 phase channels by 4096 positions) 7.2 / 6.2.
    - a larger stride, the gradients: direct on the phases, whose kernels are padded with zeros
      to the same taps, with at most ``Rules.phases_max_channels`` input channels a group and at most
      ``PHASES_MAX_OVERHEAD`` times the multiply-adds (a stem's large kernel over few channels):
      ResNet-18's stem, input gradient 1.12 / 1.68, weight gradient 0.96 / 1.66; AlexNet's 0.62
      / 1.08 and 0.63 / 1.00. Not a 3x3 at stride 2 (16/9 of the multiply-adds): (1, 256,
      14x14) -> 512 2.2 / 0.77 and 5.5 / 0.96.
    - otherwise im2col.

    The rules are a fixed guess made on two machines; where they guess wrong for a shape, the
    autotune mode (``numbaconv.set_autotune(True)`` or ``algorithm="tune"``) measures instead.
    ``numbaconv bench --suite all`` shows, per shape, what "auto" chose and what each costs.
    """
    per_group_in, per_group_out = geom.in_channels // geom.groups, geom.out_channels // geom.groups
    taps = math.prod(geom.kernel)
    if per_group_out <= 2:
        return "direct"
    if geom.stride != (1, 1, 1):
        if taps == 1:
            return "im2col"
        if direction == "forward" and (conv_blocked.pays(geom, np.float32, None, None,
                                                         RULES.blocked_strided_max_channel_taps)
                                       or _packing_pays(geom)):
            return "blocked"
        plan = conv_direct.phases(geom)
        if direction == "forward":
            positions = min(conv_direct.STACK_BLOCK, geom.batch * math.prod(plan.geom.in_size))
            return "direct" if per_group_in * plan.count * positions <= RULES.phases_max_block else "im2col"
        overhead = plan.count * math.prod(plan.geom.kernel) / taps
        return "direct" if per_group_in <= RULES.phases_max_channels and overhead <= PHASES_MAX_OVERHEAD else "im2col"
    if taps == 1:
        return "im2col"
    if conv_winograd.applies(geom, direction) and conv_winograd.pays(  # never the weight gradient
            geom, RULES.winograd_min_channel_pairs, RULES.winograd_large_weight, RULES.winograd_large_weight_min_tiles):
        return "winograd"
    if direction == "forward" and _packing_pays(geom):
        return "blocked"
    if (direction != "grad_weight" and RULES.im2col_min_out_channels is not None
            and per_group_out >= RULES.im2col_min_out_channels):
        return "im2col"
    if direction == "grad_input" and per_group_in < conv_direct.QUAD and per_group_out >= FEW_PRODUCED_MIN_CONSUMED:
        return "im2col"
    if ((direction != "forward" or RULES.small_plane_forward) and geom.batch * math.prod(geom.out_size) < SMALL_PLANE_POSITIONS
            and per_group_in * per_group_out >= SMALL_PLANE_MIN_WORK):
        return "im2col"
    return "direct"


def _packing_pays(geom):
    """Whether the blocked loops' columns rule takes a forward pass whose weight is packed on the
    call (``PACKING_MAX_WEIGHTS``)."""
    taps = math.prod(geom.kernel)
    return (conv_blocked.pays(geom, np.float32, None, max_columns=RULES.blocked_max_columns)
            and geom.out_channels * geom.in_channels * taps <= PACKING_MAX_WEIGHTS
            and geom.batch * math.prod(geom.out_size) >= PACKING_MIN_POSITIONS
            and geom.in_channels * taps >= PACKING_MIN_CHANNEL_TAPS)


def _kernel(op, algorithm, geom, direction):
    """The kernel entry point that runs ``direction`` of this convolution: the algorithm named,
    the rule's choice for "auto", or for "tune" (and "auto" in autotune mode) the fastest one,
    timed on the first call of this geometry, direction and dtype."""
    if algorithm == "tune" or (algorithm == "auto" and config.AUTOTUNE):
        return tuned(geom, direction, candidates(geom, direction), choose_algorithm(geom, direction))
    name = choose_algorithm(geom, direction) if algorithm == "auto" else algorithm
    return getattr(ALL_ALGORITHMS[name], direction)


def _as5(f, a, channels, size):
    """A C-contiguous (N, channels, D, H, W) view (a copy only when ``a`` is not contiguous)."""
    return f.contiguous(a).reshape(a.shape[0], channels, *size)


def _weight5(f, weight, geom):
    return f.contiguous(weight).reshape(*weight.shape[:2], *geom.kernel)


def _user(a5, geom):
    """Drop the singleton spatial dimensions a 1-D or 2-D call does not have."""
    return a5.reshape(*a5.shape[:2], *a5.shape[5 - geom.ndim:])


def _bias_sum(grad_out):
    """grad_out (N, K, ...) C-contiguous summed over every axis but K's: each plane in float64
    (``kernels.cpu.norm.plane_totals``), then the batch."""
    N, K = grad_out.shape[:2]
    totals = np.zeros((N, K))
    if grad_out.size:
        norm.plane_totals(grad_out.reshape(N, K, math.prod(grad_out.shape[2:])), totals)
    return totals.sum(axis=0).astype(grad_out.dtype)


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
        grad_bias = f.bias_sum(go5)
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
        grad_bias = f.bias_sum(go5)
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
