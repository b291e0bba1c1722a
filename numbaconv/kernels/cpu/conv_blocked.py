"""Direct convolution with vectors along the output channels, for few output positions.

The other direct loops (``conv_direct``) put their vectors along the output positions of a row
(of a grid of rows laid end to end): at batch 1 a 7x7 or 14x14 plane leaves lanes and whole
vectors idle on its margins, and a strided convolution is split into stride phases first. Here
each vector holds ``block`` consecutive output channels of one position (``block`` = two
vectors' lanes: 16 in float32 with AVX2), so the shape of the plane does not matter. A task
keeps the sums of ``POSITIONS`` output positions by those two vectors in registers (12 of
AVX2's 16) and, for every input channel and tap, loads the block's two weight vectors once and
each position's input element once (a broadcast): 12 fused multiply-adds for 8 loads. This is
the layout of ONNX Runtime's NCHWc convolutions, with the activations left as they are between
layers and the weight rearranged once: ``pack`` lays it out as (output blocks, taps x input
channels, block), zero-padded to whole blocks.

Where it pays (``Rules.blocked_max_positions`` in ``functional/conv.py``: an inference graph,
whose weights are constants packed once; outside one, where the weight is packed on every
call, only the stems' rule and, within ``functional.conv.PACKING_MAX_WEIGHTS``, the columns
rule, both below), measured on the 2-core AVX2 host (Zen 3) through ``inference.ops.conv``, ms, packed /
the rules' choice (im2col) / PyTorch, medians of bursts taking turns (``numbaconv bench``'s
policy): at batch 1, (256, 14x14) -> 256, 3x3 1.55 / 1.87 / 1.48; (512, 7x7) -> 512 1.97 /
2.57 / 2.13; (256, 14x14) -> 512, 3x3/2 0.99 / 1.38 / 1.08; (128, 28x28) -> 256, 3x3/2 (196
positions) 1.21 / 1.23 / 1.17. Where it does not (minima of rounds taking turns, GFLOP/s,
this kernel / the rules' / PyTorch): with many positions, whose weights a GEMM or Winograd's
tiles share better, (1, 64, 56x56) -> 64, 3x3 88 / 97 / 116, (8, 256, 14x14) -> 256 98 / 147 /
111, (8, 128, 28x28) -> 128 129 / 176 / 155, about even at (8, 512, 7x7) -> 512 (392
positions) 111 / 112 / 100; ResNet's stem at batch 1, (3, 224x224) -> 64, 7x7/2, 1.97 ms
against the loops' 1.93 and im2col's 2.29 (PyTorch 1.64). ResNet's 1x1/2 shortcuts at batch 1,
ms, packed / im2col / PyTorch: (256, 14x14) -> 512 (49 positions) 0.18 / 0.26 / 0.20, (128,
28x28) -> 256 (196) 0.28 / 0.31 / 0.22, but (64, 56x56) -> 128 (784) 0.42 / 0.35 / 0.31.

Small layers are the other case (``Rules.blocked_max_work``: few multiply-adds in all, however
many positions), where the other paths' fixed costs outweigh their loops. Through
``inference.ops.conv``, us, the rules' path / packed: LeNet's c1 (1, 1, 32x32) -> 6, 5x5 (784
positions, 118 thousand multiply-adds) 70 / 24, its c2 (1, 6, 14x14) -> 16, 5x5 42 / 19, at
batch 8 121 / 63, at batch 64 (15 million) 477 / 395; (1, 3, 32x32) -> 8, 3x3 53 / 42; (1, 16,
8x8) -> 16, 3x3 39 / 24; a conv1d (1, 32, 16) -> 64, k = 5 59 / 47 and a conv3d (1, 4, 4x6x4)
-> 8 38 / 23; LeNet's c1 at batch 8 (940 thousand) 200 / 77, a conv3d (16, 1, 8x12x8) -> 8,
3x3x3 (2.7 million) 418 / 174, a MobileNet stem (1, 3, 112x112) -> 16, 3x3/2 122 / 90; even
at (1, 8, 32x32) -> 8 (590 thousand) 74 / 72. Past 4 million, where a task's few channels and
taps leave its loops short and a block's lanes idle, they lose: LeNet's c1 at batch 64 (7.5
million) 570 / 875, the MobileNet stem at batch 8 (10.8 million) 575 / 816, (64, 3, 32x32) ->
8, 3x3 (14 million) 369 / 900; the bound forgoes LeNet's c2 at batch 64 (15 million, 477 /
395). (Those figures predate the epilogue in registers, below.)

Layers whose im2col column matrix is small, however many positions, are the fourth case
(``Rules.blocked_max_columns``: positions x input channels x taps, a kernel wider than 1x1),
with the input read channels-last (below). Through ``inference.ops.conv``, ms, medians of
bursts taking turns, packed / the rules' choice: (1, 64, 56x56) -> 128, 3x3/2 (452 thousand
elements) 1.25 / 1.49 and 1.66 / 2.34; (1, 128, 28x28) -> 128 (903 thousand) 1.70 / 1.98, 1.84
/ 2.57 and 1.92 / 2.01; (1, 64, 32x32) -> 64 0.55 / 0.94; (1, 32, 32x32) -> 64 0.45 / 0.76; (2,
256, 14x14) -> 256 3.4 / 5.9. Past a million it does not pay: (1, 128, 32x32) -> 128 (1.2
million) 2.01 / 1.94, (4, 256, 14x14) -> 256 (1.8 million) 7.0 / 7.0, (16, 512, 7x7) -> 512
(3.6 million) 29.5 / 24.0; nor for 1x1 kernels, which im2col runs on a strided copy ((1, 64,
56x56) -> 128, 1x1/2, 784 positions: 0.42 / 0.35 before the channels-last reads below; after
them 0.27 / 0.40 at batch 1, but 3.28 / 2.52 at batch 8, where the first two rules leave it).

A 1x1 kernel at unit stride, which im2col runs as one GEMM on the input itself, takes these
loops too under the first two rules: at a few hundred positions, or a few million
multiply-adds, the GEMM's fixed costs and its bias pass outweigh its better loops. Medians, us,
packed / im2col / PyTorch: MobileNet-style (1, 96, 14x14) -> 24 35 / 72 / 24, (1, 144, 7x7) ->
48 31 / 58 / 25, (1, 384, 14x14) -> 64 147 / 259 / 232, (1, 256, 14x14) -> 256 330 / 416 /
364, (1, 32, 16x16) -> 64 45 / 67 / 29, (1, 16, 56x56) -> 8 65 / 79 / 153, (1, 32, 56x56) -> 8
76 / 93 / 117; even at (1, 960, 7x7) -> 160 255 / 244 / 297; not past them, (1, 16, 112x112)
-> 96 (19 million) 1489 / 1175 / 884.

The stems are the third case (``Rules.blocked_strided_max_channel_taps``): strided, few
channels x taps an output, whole blocks of output channels, however many positions. With the
bias and activation applied in registers (they had taken 30% of the stem's time, applied one
sum at a time), through ``inference.ops.conv``, ms, packed / the rules' choice, minima of
bursts taking turns: ResNet's stem (1, 3, 224x224) -> 64, 7x7/2 1.65 / 1.99, at batch 8 13.3 /
14.1; AlexNet's (1, 3, 227x227) -> 96, 11x11/4 1.22 / 1.62, at batch 8 10.1 / 12.7; the
MobileNet stem at batch 8 0.39 / 0.47. Not at unit stride, where the direct loops stream whole
rows: VGG's (1, 3, 224x224) -> 64, 3x3 2.34 / 1.40; nor into part of a block: LeNet's c1 at
batch 64 (6 channels of 16 lanes) 0.39 / 0.29, (64, 3, 32x32) -> 8, 3x3 0.66 / 0.39; nor for
ResNet's 1x1/2 shortcuts (64 to 256 channel-taps, which the rule had taken in too) past batch 1,
where their GEMMs win, ms, packed on each call / im2col / PyTorch, medians, batch 8: (64,
56x56) -> 128 3.28 / 2.52 / 2.08, (256, 14x14) -> 512 2.43 / 1.83 / 1.42, (128, 28x28) -> 256
1.57 / 1.80 / 0.95 (at batch 1 the first two rules take them, 0.16-0.27 / 0.25-0.40).

A layer of many input channels and a kernel wider than 1x1 reads a copy of its input made at
each call, zero-padded and channels-last (``_padded_copy``), so that one tap's reads over the
channels are one contiguous run rather than a plane apart: 7-24% faster on ResNet's 3x3 layers
at batch 1 (``CHANNELS_LAST_MIN_CHANNELS``). Other layers read the input as it is, or a
zero-padded copy where the convolution pads; either way every tap of every output position
reads inside the array. The sums start from the bias; the activation is applied to
them in registers, but where a residual is added first, one sum at a time as they are written
out. A forward pass with one group only, which the inference graph runs with its packed weights
(``inference/ops.py``); outside a graph it is the algorithm "blocked", the weight packed on each
call, which "auto" takes for the stems and, under bounds on the packing, the columns rule
(``functional.conv.choose_algorithm``).
"""

import functools
import math

import numpy as np
from numba import njit, prange

from ._simd import lanes, vactivate, vfma, vload, vsplat, vstore
from ._window import IDENTITY, U, activate, is_identity, parallel_kernel, scratch_array

#: Output positions a task sums at once: 6 x 2 vectors of sums, 2 weight vectors and the
#: broadcast input fill 15 of AVX2's 16 vector registers.
POSITIONS = 6


def block(dtype):
    """Output channels a vector pair holds: ``pack``'s block for ``dtype``."""
    from ._simd import VECTOR_BYTES
    return 2 * VECTOR_BYTES // np.dtype(dtype).itemsize


def channels_last(channels, taps):
    """Whether the loops read a channels-last copy of the input (``CHANNELS_LAST_MIN_CHANNELS``),
    which also sets the order of the packed weight's rows: a function of the weight's shape."""
    return channels >= CHANNELS_LAST_MIN_CHANNELS and taps > 1


def pack(w):
    """w (K, C, *kernel) as (ceil(K / block), C x taps, block), C-contiguous: block b's row e
    holds w[b * block + j, c, t] in lane j, zeros past K, e = t * C + c where the loops read the
    input channels-last (``channels_last``: one tap's channels in a row), else c * taps + t (one
    channel's taps in a row, which lie close together in the input as given)."""
    K, C = w.shape[:2]
    KB = block(w.dtype)
    rows = np.ascontiguousarray(w).reshape(K, C, -1)
    wp = np.empty((-(-K // KB), C * rows.shape[2], KB), dtype=w.dtype)
    _pack(rows, wp, channels_last(C, rows.shape[2]))
    return wp


@parallel_kernel(streaming=True)
def _pack(rows, wp, transposed):
    """``pack``'s layout, a task per block of output channels and input channel: for each tap,
    one row of ``block`` lanes (a cache line in float32 with AVX2) from the block's output
    channels, the lanes past K zero. Measured, 2-core AVX2, (512, 256, 3x3): 0.33 ms, where
    transposes of NumPy views took 1.0-1.2 (a plain copy of the weight: 0.14), as did this loop
    with K's bound checked per lane and signed indices."""
    K, C, T = rows.shape
    B, _, KB = wp.shape
    for task in prange(B * C):
        b, c = task // C, task % C
        n = min(KB, K - b * KB)
        for t in range(T):
            e = t * C + c if transposed else c * T + t
            for j in range(n):
                wp[U(b), U(e), U(j)] = rows[U(b * KB + j), U(c), U(t)]
            for j in range(n, KB):
                wp[U(b), U(e), U(j)] = 0


def unpack(wp, shape):
    """The weight of ``shape`` (K, C, *kernel) that ``pack`` made ``wp`` from, C-contiguous."""
    K, C = shape[:2]
    blocks, rows, KB = wp.shape
    T = rows // C
    w = wp.transpose(0, 2, 1).reshape(blocks * KB, rows)[:K]
    if channels_last(C, T):
        w = w.reshape(K, T, C).transpose(0, 2, 1)
    return np.ascontiguousarray(w).reshape(shape)


def workspace_bytes(geom, itemsize):
    """The most scratch a call packing its weight holds (``numbaconv bench`` quotes peak memory
    against it): the packed weight, whole blocks of output channels, and the input's padded or
    channels-last copy where the loops read one (``_plan``)."""
    padded, _, _, transposed = _plan(geom)
    copy = geom.batch * geom.in_channels * math.prod(padded) if transposed or padded != geom.in_size else 0
    KB = block(np.float32 if itemsize == 4 else np.float64)
    packed = -(-geom.out_channels // KB) * KB * geom.in_channels * math.prod(geom.kernel)
    return (copy + packed) * itemsize


def applies(geom, direction):
    """Whether these loops are a candidate for ``direction`` of this convolution: a forward pass
    with one group."""
    return direction == "forward" and geom.groups == 1


def pays(geom, dtype, max_positions, max_work=None, strided_max_channel_taps=None, max_columns=None):
    """Whether an inference graph runs these loops with its packed weight (see the module's
    figures): where they apply, at most ``max_positions`` output positions over the batch, or at
    most ``max_work`` multiply-adds in all, or a stride past 1 and a kernel wider than 1x1 with at
    most ``strided_max_channel_taps`` input channels x taps an output into whole blocks of output
    channels (a stem), or a kernel wider than 1x1 whose im2col column matrix (positions x input channels x
    taps) has at most ``max_columns`` elements (each bound None: no such rule). The third rule's
    weights are small enough to pack on every call, so "auto" takes it outside a graph too
    (``functional.conv.choose_algorithm``)."""
    taps = math.prod(geom.kernel)
    if not applies(geom, "forward"):
        return False
    positions = geom.batch * math.prod(geom.out_size)
    if max_positions is not None and positions <= max_positions:
        return True
    if (strided_max_channel_taps is not None and max(geom.stride) > 1 and taps > 1
            and geom.in_channels * taps <= strided_max_channel_taps and geom.out_channels % block(dtype) == 0):
        return True
    if max_columns is not None and taps > 1 and positions * geom.in_channels * taps <= max_columns:
        return True
    work = positions * geom.out_channels * geom.in_channels * taps
    return max_work is not None and work <= max_work


class _PackingEachCall:
    """These loops as the algorithm "blocked" (``kernels.cpu.ALL_ALGORITHMS``), with the other
    algorithms' signatures, the weight packed on every call: "auto"'s forward pass where its rules
    send a stem here (a few thousand weights: microseconds to pack) or a layer whose packing is a
    small share of the call (``functional.conv.PACKING_MAX_WEIGHTS``), a candidate of the
    autotune mode, or named. Forward passes with one group only."""

    @staticmethod
    def forward(x, w, b, out, geom, workspace, epilogue=IDENTITY, residual=None):
        _require(geom, "forward")
        forward(x, pack(w), b, out, geom, epilogue, residual)

    @staticmethod
    def grad_input(go, w, gx, geom, workspace):
        _require(geom, "grad_input")

    @staticmethod
    def grad_weight(go, x, gw, geom, workspace):
        _require(geom, "grad_weight")


def _require(geom, direction):
    if direction != "forward":
        what = {"grad_input": "input gradient", "grad_weight": "weight gradient"}[direction]
        raise ValueError(f"algorithm 'blocked' runs forward passes of convolutions with one group, not the {what}; "
                         "choose 'auto', 'direct', 'im2col' or 'winograd' for a backward pass")
    if geom.groups != 1:
        raise ValueError(f"algorithm 'blocked' runs forward passes of convolutions with one group, "
                         f"got groups {geom.groups}")


PACKING_EACH_CALL = _PackingEachCall()


def forward(x, wp, b, out, geom, epilogue=IDENTITY, residual=None):
    """out (N, K, OD, OH, OW) = epilogue(conv(x, w) + b + residual) for one group, w packed by
    ``pack`` (wp); x (N, C, D, H, W) C-contiguous; b and residual (out's shape) may be None."""
    N, K = out.shape[:2]
    if out.size == 0:
        return
    padded, offsets, steps, transposed = _plan(geom)
    if transposed or padded != geom.in_size:
        xp = scratch_array("blocked", (N, math.prod(padded) * x.shape[1]), x.dtype)
        _padded_copy(x, xp, geom.padding, _chunk(padded[2]), transposed)
    else:
        xp = x
    bias = np.zeros(wp.shape[0] * wp.shape[2], dtype=out.dtype)  # whole blocks: the sums start from it
    if b is not None:
        bias[:K] = b
    r = np.empty((0, 0, 0), out.dtype) if residual is None else np.ascontiguousarray(residual).reshape(N, K, -1)
    slope, lo, hi = (out.dtype.type(v) for v in epilogue)
    _forward(xp.reshape(N, -1), wp, bias, r, out.reshape(N, K, -1), offsets, geom.out_size, steps, slope, lo, hi)


#: The fewest input channels for which the loops read a channels-last copy of the input
#: (``_padded_copy``) rather than the input as it is (zero-padded where the convolution pads):
#: there one tap's reads over the channels are one contiguous run, where as given they are a
#: plane apart, each in a cache line of its own. Measured, ms, channels-last / as given, 2-core
#: AVX2, one process taking turns, batch 1: (64, 56x56) -> 128, 3x3/2 1.09 / 1.16; (128, 28x28)
#: -> 256, 3x3/2 0.75 / 0.99; (256, 14x14) -> 512, 3x3/2 0.99 / 1.21 and 1.52 / 1.72; (256,
#: 14x14) -> 256, 3x3 1.72 / 2.08 and 1.78 / 2.11; (64, 56x56) -> 64, 3x3 1.90 / 2.05; about
#: even at (512, 7x7) -> 512, 3x3 1.92 / 1.83 and 2.48 / 2.48. Not for a 1x1 kernel, whose
#: copy reads the whole input where the loops read a stride's share of it: (64, 56x56) -> 128,
#: 1x1/2 0.32 / 0.23; nor for a few channels, which a copy only delays: ResNet's stem (3,
#: 224x224) 2.53 / 2.42, LeNet's c1 and c2 (1 and 6 channels) 0.044 / 0.030 and 0.035 / 0.023.
CHANNELS_LAST_MIN_CHANNELS = 32


@functools.lru_cache(maxsize=256)
def _plan(geom):
    """(the padded input's spatial size, the offset of each of the packed weight's rows (an
    input channel and a tap, in ``pack``'s order) from an output position's first input element
    in a padded sample, the offsets of one output step along D, H and W, whether the sample is
    channels-last (else as given)): per geometry, built once (a served model repeats a few)."""
    Dp, Hp, Wp = padded = tuple(n + 2 * p for n, p in zip(geom.in_size, geom.padding))
    C = geom.in_channels
    (kd, kh, kw), (dd, dh, dw), (sd, sh, sw) = geom.kernel, geom.dilation, geom.stride
    taps = np.array([(a * dd * Hp + b * dh) * Wp + c * dw for a in range(kd) for b in range(kh) for c in range(kw)],
                    dtype=np.int64)
    channels = np.arange(C, dtype=np.int64)
    transposed = channels_last(C, taps.size)
    if transposed:  # rows t * C + c (``pack``)
        position = C  # the step from one position to the next
        offsets = (taps[:, None] * C + channels).reshape(-1)
    else:  # rows c * taps + t
        position = 1
        offsets = (channels[:, None] * (Dp * Hp * Wp) + taps).reshape(-1)
    offsets.flags.writeable = False  # shared by every call with this geometry
    return padded, offsets, (sd * Hp * Wp * position, sh * Wp * position, sw * position), transposed


#: Columns of a padded row a task of ``_padded_copy`` copies: rows of a long 1-D signal are
#: split so that every thread has some.
CHUNK_COLUMNS = 512


def _chunk(width):
    """Columns per task of ``_padded_copy``: the row in equal parts of at most CHUNK_COLUMNS."""
    return -(-width // -(-width // CHUNK_COLUMNS))


@parallel_kernel(streaming=True)
def _padded_copy(x, xp, padding, chunk, transposed):
    """Each sample of x zero-padded into a row of xp: channels-last where ``transposed``,
    xp[n, ((d * Hp + h) * Wp + w) * C + c] = x[n, c, d - pd, h - ph, w - pw], so that the loops'
    reads of one tap over the input channels are one contiguous run; else channel by channel,
    xp[n, ((c * Dp + d) * Hp + h) * Wp + w]. A task copies ``chunk`` columns of one padded row,
    every channel's. The layout as given had been a NumPy fill and slice assignment, on one
    thread: ResNet's stem input (3, 224x224) padded by 3, 33 -> 23 us, at batch 8 0.40 -> 0.12
    ms; (1, 16, 7) padded by 1, 2.2 -> 1.9 us."""
    N, C, D, H, W = x.shape
    pd, ph, pw = padding
    Dp, Hp, Wp = D + 2 * pd, H + 2 * ph, W + 2 * pw
    chunks = (Wp + chunk - 1) // chunk
    for task in prange(N * Dp * Hp * chunks):
        n, r, k = task // (Dp * Hp * chunks), task // chunks % (Dp * Hp), task % chunks
        d, h = r // Hp - pd, r % Hp - ph
        l0, l1 = k * chunk, min(Wp, (k + 1) * chunk)
        inside = 0 <= d < D and 0 <= h < H
        w0 = min(max(l0, pw), l1) if inside else l1  # the chunk's columns inside the input: w0 <= l < w1
        w1 = max(min(l1, pw + W), w0)
        if transposed:  # element (l, c) at row + l * C + c
            row = r * Wp * C
            for i in range(l0 * C, w0 * C):
                xp[n, U(row + i)] = 0
            for i in range(w1 * C, l1 * C):
                xp[n, U(row + i)] = 0
            for c in range(C):
                for l in range(w0, w1):
                    xp[n, U(row + l * C + c)] = x[n, c, d, h, U(l - pw)]
        else:  # element (l, c) at row + c * Dp * Hp * Wp + l
            for c in range(C):
                row = (c * Dp * Hp + r) * Wp
                for l in range(l0, w0):
                    xp[n, U(row + l)] = 0
                for l in range(w0, w1):
                    xp[n, U(row + l)] = x[n, c, d, h, U(l - pw)]
                for l in range(w1, l1):
                    xp[n, U(row + l)] = 0


#: Runs of ``POSITIONS`` positions a task takes in turn: its two small buffers are allocated
#: once a task, and ResNet's stem at batch 1 has 2,091 runs a block of output channels.
RUNS = 16


@parallel_kernel
def _forward(xp, wp, bias, residual, out, offsets, out_size, steps, slope, lo, hi):
    """out[n, k, q] = activate(bias[k] + residual[n, k, q] + the sum over the packed weight's rows
    e of wp[k // KB, e, k % KB] * xp[n, base(q) + offsets[e]]), base(q) = od * steps[0] + oh *
    steps[1] + ow * steps[2] for output position q = (od, oh, ow), xp a sample a row
    (channels-last or not, ``_plan``). A task: one sample, one block of output channels, up to
    ``RUNS`` runs of ``POSITIONS`` consecutive positions (a last run short of positions repeats
    its last one, unwritten)."""
    N, L = xp.shape
    K, P = out.shape[1], out.shape[2]
    NB, CT, KB = wp.shape
    V = lanes(wp)
    OD, OH, OW = out_size
    per_task = RUNS * POSITIONS
    spans = (P + per_task - 1) // per_task
    xf, wf, outf = xp.reshape(-1), wp.reshape(-1), out.reshape(-1)
    with_residual = residual.size > 0
    in_registers = not with_residual and not is_identity(slope, lo, hi)  # activated before the sums leave them
    for task in prange(N * NB * spans):
        n, kb, q = task // (NB * spans), (task // spans) % NB, (task % spans) * per_task
        q_end = min(P, q + per_task)
        base = np.empty(POSITIONS, dtype=np.int64)
        sums = np.empty(POSITIONS * KB, dtype=out.dtype)  # position-major: sums[i * KB + j]
        od, oh, ow = q // (OH * OW), q // OW % OH, q % OW
        while q < q_end:
            q0, m = q, min(POSITIONS, q_end - q)
            for i in range(POSITIONS):  # the positions' offsets, counted on (no division a position)
                if i < m:
                    base[i] = n * L + od * steps[0] + oh * steps[1] + ow * steps[2]
                    ow += 1
                    if ow == OW:
                        ow, oh = 0, oh + 1
                        if oh == OH:
                            oh, od = 0, od + 1
                else:
                    base[i] = base[m - 1]
            q += m
            _run(xf, wf, kb * CT * KB, offsets, base, sums, V, KB, bias, kb * KB, in_registers, slope, lo, hi)
            # the sums leave as they are, but for a residual (added, then activated, one by one):
            # the bias and activation one by one here took 30% of ResNet's stem (147 sums a run)
            row = (n * K + kb * KB) * P + q0
            for j in range(min(KB, K - kb * KB)):
                if with_residual:
                    for i in range(m):
                        v = sums[i * KB + j] + residual[n, kb * KB + j, q0 + i]
                        outf[row + j * P + i] = activate(v, slope, lo, hi)
                else:
                    for i in range(m):
                        outf[row + j * P + i] = sums[i * KB + j]


@njit(inline="always", cache=True)
def _run(xf, wf, wi, offsets, base, sums, V, KB, bias, bi, activated, slope, lo, hi):
    """sums[i * KB + j] = bias[bi + j] + the sum over the rows e (channels and taps) of the
    packed weight's wf[wi + e * KB + j] * xf[base[i] + offsets[e]], for the ``POSITIONS``
    positions of ``base``, then ``activate``d if ``activated``: the sums in twelve vector
    registers throughout. One loop over channels and taps: a loop
    over taps inside one over channels spent a tenth of its time between the two (the taps' odd
    count left a remainder after LLVM's unrolling by two, and the outer loop's values went to
    the stack)."""
    p0, p1, p2, p3, p4, p5 = base[0], base[1], base[2], base[3], base[4], base[5]
    low, high = vload(bias, bi), vload(bias, bi + V)
    a0, a1, a2, a3, a4, a5 = low, low, low, low, low, low
    c0, c1, c2, c3, c4, c5 = high, high, high, high, high, high
    for e in range(offsets.shape[0]):
        s = offsets[U(e)]
        w0, w1 = vload(wf, wi), vload(wf, wi + V)
        wi += KB
        v = vsplat(xf[U(p0 + s)])
        a0, c0 = vfma(w0, v, a0), vfma(w1, v, c0)
        v = vsplat(xf[U(p1 + s)])
        a1, c1 = vfma(w0, v, a1), vfma(w1, v, c1)
        v = vsplat(xf[U(p2 + s)])
        a2, c2 = vfma(w0, v, a2), vfma(w1, v, c2)
        v = vsplat(xf[U(p3 + s)])
        a3, c3 = vfma(w0, v, a3), vfma(w1, v, c3)
        v = vsplat(xf[U(p4 + s)])
        a4, c4 = vfma(w0, v, a4), vfma(w1, v, c4)
        v = vsplat(xf[U(p5 + s)])
        a5, c5 = vfma(w0, v, a5), vfma(w1, v, c5)
    for i, (low, high) in enumerate(((a0, c0), (a1, c1), (a2, c2), (a3, c3), (a4, c4), (a5, c5))):
        if activated:
            low, high = vactivate(low, slope, lo, hi), vactivate(high, slope, lo, hi)
        vstore(sums, i * KB, low)
        vstore(sums, i * KB + V, high)
