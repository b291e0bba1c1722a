"""The direct loops for depthwise convolution: one input channel per group (C/g == 1), each
read by K/g == m output channels (m, the depth multiplier, is 1 in MobileNet).

With one input channel behind each output there is no sum over channels to share a pass over
the output: the general direct loops (``conv_direct``) add one tap per pass over a row, two
loads and a store per multiply-add, after a full padded copy of the input. Here each task copies
its one input plane into a zero-bordered buffer of its own, which stays in cache (the borders are
zeroed once per chunk of tasks: every plane writes the same interior), and takes a kernel of
whole 3x3 blocks nine taps at a time (other kernels one tap at a time). Measured on one core,
(8, 256, 28x28) 3x3: 0.77 ms with nine taps per pass over a row, 1.86 ms with three, 1.36 ms
in PyTorch.

LLVM does not vectorize across channels here (a channels-last block of 16 with a constant trip
count came out as scalar code, the loads and stores not provably apart). So each block of taps
is one loop over a whole plane of outputs on the buffer's flat grid (``_correlate``), which
vectorizes whatever the row length; at strides past 1 the buffer holds the input split into
stride phases, in which each tap's reads are again one contiguous run. MobileNet's 3x3 with
padding 1 at unit stride has kernels of its own that need no gap columns (``_same3``,
``_weight_same3``).

The same kernels serve the forward pass and, at unit stride, the input gradient: the
correlation of ``grad_out`` with the flipped kernel at the complementary padding
``dilation * (k - 1) - padding``, which may be negative (a crop). At larger strides the input
gradient splits into the stride's phases instead (``_gather_phases``), each a unit-stride
correlation of ``grad_out`` with the few taps that reach it. The weight gradient, ``_weight``,
takes nine dot products per pass over the same flat grid as the forward pass.

Tasks are handed out in chunks, a few per thread, so that each chunk allocates its buffer once:
small planes (7x7 at 1024 channels) would otherwise spend more on allocation than arithmetic.

With a few multiply-adds per element the kernels run on one thread up to about half a million
elements, where handing the work to the others costs more than it saves (``SERIAL_FACTOR``).
"""

import functools
import itertools
import math

import numba
import numpy as np
from numba import njit, prange

from ._window import U, activate, is_identity, parallel_kernel

#: The kernels run on one thread below this many times ``config.PARALLEL_MIN_ELEMENTS``
#: elements (``parallel_kernel``), twice the plain streaming kernels' threshold: on the flat
#: grid one thread is fast enough that handing the work to the other threads costs more than it
#: saves up to about half a million elements. Measured medians, 2 cores, one thread against two:
#: (1, 32, 112x112) 0.30 against 0.48 ms, (1, 128, 56x56) 0.26 against 0.45, (8, 1024, 7x7)
#: 0.49 against 0.65. Past that two threads win: 3x3/2 over (1, 64, 112x112), 0.27 against 0.50.
SERIAL_FACTOR = 32

#: Chunks per thread: enough for the threads to even out, few enough that allocating each
#: chunk's buffer once costs nothing.
CHUNKS_PER_THREAD = 4


def is_depthwise(geom):
    """One input channel per group."""
    return geom.in_channels == geom.groups


@njit(inline="always", cache=True)
def _source_range(v0, v1, pad, n):
    """Source indices i in [0, n) whose grid position i + pad lies in [v0, v1)."""
    i0 = max(0, v0 - pad)
    i1 = min(n, v1 - pad)
    return i0, max(i0, i1)


@njit(inline="always", cache=True)
def _fill_ranges(ext, src_size, pad):
    """The source index range [lo, hi) of each dimension that lands on a buffer of extents
    ``ext``, computed once per call rather than per plane."""
    i0, i1 = _source_range(0, ext[0], pad[0], src_size[0])
    j0, j1 = _source_range(0, ext[1], pad[1], src_size[1])
    l0, l1 = _source_range(0, ext[2], pad[2], src_size[2])
    return i0, i1, j0, j1, l0, l1


@njit(inline="always", cache=True)
def _fill(xf, rows, width, src, n, c, ranges, pad):
    """Buffer position (i, j, l) + pad = src[n, c, i, j, l] over ``ranges``
    (``_fill_ranges``), the buffer flat: xf[(a * rows + r) * width + column].

    Flat, because a kernel that also made a view of its buffer (a reshape, even one never
    written through) ran its loops 1.5x slower, (8, 1024, 7x7): LLVM no longer kept the
    buffer's address in a register. Positions not written keep what they held: the zeros every
    buffer starts with, as every plane writes the same positions."""
    i0, i1, j0, j1, l0, l1 = ranges
    for i in range(i0, i1):
        for j in range(j0, j1):
            r0 = ((i + pad[0]) * rows + j + pad[1]) * width + pad[2]
            for l in range(l0, l1):
                xf[U(r0 + l)] = src[n, c, i, j, U(l)]


@njit(inline="always", cache=True)
def _phases(stride, ext):
    """The layout of a buffer split into stride phases: (phases per depth step, rows and width
    of a phase, positions of a phase). Padded position (a, r, l) lies in phase
    ((a % sd) * sh + r % sh) * sw + l % sw of depth step a // sd, at row r // sh, column l // sw,
    so that one tap's reads for consecutive outputs are consecutive at any stride."""
    sd, sh, sw = stride
    rows, width = -(-ext[1] // sh), -(-ext[2] // sw)
    return sd * sh * sw, rows, width, rows * width


@njit(inline="always", cache=True)
def _fill_phases(xf, src, n, c, ranges, pad, stride, layout):
    """``_fill`` into the phase layout of ``_phases``: each source row is
    written phase by phase, so that no element needs a division.

    At column stride 2 each row is one pass over pairs of neighbouring sources (padded column
    2k to the even phase's k, 2k + 1 to the odd phase's): contiguous loads, where phase by
    phase the stride-2 loads ran one at a time ((1, 64, 112x112) 3x3/2 spent 0.27 of its
    0.44 ms filling). Written out in the row loop, with the destinations' bases computed once
    per row: as an inlined function per row, or with ``r0 + k0 + t`` spelled in the loop, the
    pass ran at half the speed (0.25 against 0.13 ms for 64 planes of 112x112)."""
    sd, sh, sw = stride
    per_step, rows, width, size = layout
    i0, i1, j0, j1, l0, l1 = ranges
    pw = pad[2]
    lone = (l0 + pw) % 2  # a first source alone in the odd phase
    lp = l0 + lone
    pairs, last = (l1 - lp) // 2, (l1 - lp) % 2 == 1  # then pairs, and maybe an even one
    k_pairs, k_last = (lp + pw) // 2, (l1 - 1 + pw) // 2
    for i in range(i0, i1):
        a = i + pad[0]
        plane0 = ((a // sd) * per_step + (a % sd) * sh * sw) * size
        # the row's phase and row within it, stepped rather than divided: a division per row
        # cost as much as the copy of a 112-element row
        rq, rr = (j0 + pad[1]) // sh, (j0 + pad[1]) % sh
        for j in range(j0, j1):
            r0 = plane0 + rr * sw * size + rq * width
            rr += 1
            if rr == sh:
                rr, rq = 0, rq + 1
            if sw == 2:
                if lone:
                    xf[U(r0 + size + (l0 + pw) // 2)] = src[n, c, i, j, U(l0)]
                even = r0 + k_pairs
                odd = even + size
                for t in range(pairs):
                    ev = src[n, c, i, j, U(lp + 2 * t)]
                    ov = src[n, c, i, j, U(lp + 2 * t + 1)]
                    xf[U(even + t)] = ev
                    xf[U(odd + t)] = ov
                if last:
                    xf[U(r0 + k_last)] = src[n, c, i, j, U(l1 - 1)]
                continue
            for ph in range(sw):  # padded columns ph, ph + sw, ...: source l = k * sw + ph - pad
                k0 = -((ph - pw - l0) // sw)  # ceil((l0 + pad - ph) / sw)
                k1 = -((ph - pw - l1) // sw)
                for k in range(max(k0, 0), k1):
                    xf[U(r0 + ph * size + k)] = src[n, c, i, j, U(k * sw + ph - pw)]


@njit(inline="always", cache=True)
def _tap(kd, kh, kw, stride, dilation, layout):
    """Where tap (kd, kh, kw) reads in the phase layout, from its output's grid position."""
    sd, sh, sw = stride
    per_step, rows, width, size = layout
    a, r, l = kd * dilation[0], kh * dilation[1], kw * dilation[2]
    return ((a // sd) * per_step + ((a % sd) * sh + r % sh) * sw + l % sw) * size + (r // sh) * width + l // sw


@njit(inline="always", cache=True)
def _buffer_length(ext, kernel, depth, positions, stride, dilation, layout):
    """The flat buffer's length: the padded input in the phase layout, and what the farthest
    tap reads past the last of ``positions`` grid positions of the last of ``depth`` output
    depths."""
    per_step, rows, width, size = layout
    reach = 0
    for kd in range(kernel[0]):
        for kh in range(kernel[1]):
            for kw in range(kernel[2]):
                reach = max(reach, _tap(kd, kh, kw, stride, dilation, layout))
    return max(-(-ext[0] // stride[0]) * per_step * size, (depth - 1) * per_step * size + positions + reach)


@njit(inline="always", cache=True)
def _sum9(xf, p, r1, r2, c1, c2, wb):
    """The 3x3 block of taps wb on the flat buffer from position p: its rows at offsets 0, r1
    and r2, its columns at 0, c1 and c2."""
    w00, w01, w02, w10, w11, w12, w20, w21, w22 = wb
    p1, p2 = p + r1, p + r2
    return (w00 * xf[U(p)] + w01 * xf[U(p + c1)] + w02 * xf[U(p + c2)]
            + w10 * xf[U(p1)] + w11 * xf[U(p1 + c1)] + w12 * xf[U(p1 + c2)]
            + w20 * xf[U(p2)] + w21 * xf[U(p2 + c1)] + w22 * xf[U(p2 + c2)])


@njit(inline="always", cache=True)
def _block(wt, o, s, kd, bh, bw):
    """The nine taps of the 3x3 block at (bh, bw) of wt[o, s, kd]."""
    return (wt[o, s, kd, bh, bw], wt[o, s, kd, bh, bw + 1], wt[o, s, kd, bh, bw + 2],
            wt[o, s, kd, bh + 1, bw], wt[o, s, kd, bh + 1, bw + 1], wt[o, s, kd, bh + 1, bw + 2],
            wt[o, s, kd, bh + 2, bw], wt[o, s, kd, bh + 2, bw + 1], wt[o, s, kd, bh + 2, bw + 2])


#: The flat loops run over a whole multiple of this many grid positions (those past the last
#: output compute into the grid's tail, read by nobody): LLVM's vector loop takes 64 float32
#: a pass (16 lanes, 4 interleaved), and a loop shorter than that ran entirely as scalar code.
FLAT_STEP = 64


@njit(inline="always", cache=True)
def _accumulate(grid, xf, wt, o, s, bias, od, stride, dilation, layout):
    """Output depth od's part of the grid (+)= the correlation of the buffer with wt[o, s]:
    each 3x3 block of taps (or, for other kernels, each tap) one loop over the whole plane of
    outputs. The first pass assigns, with the bias. Not blocks padded with zero weights for
    other kernels: 0 * inf would put NaN where PyTorch has none."""
    KD, KH, KW = wt.shape[2:]
    per_step, rows, width, size = layout
    n = grid.shape[1]
    base = od * per_step * size
    if KH % 3 == 0 and KW % 3 == 0:
        for kd in range(KD):
            for bh in range(0, KH, 3):
                for bw in range(0, KW, 3):
                    wb = _block(wt, o, s, kd, bh, bw)
                    x0 = base + _tap(kd, bh, bw, stride, dilation, layout)
                    r1 = base + _tap(kd, bh + 1, bw, stride, dilation, layout) - x0
                    r2 = base + _tap(kd, bh + 2, bw, stride, dilation, layout) - x0
                    c1 = base + _tap(kd, bh, bw + 1, stride, dilation, layout) - x0
                    c2 = base + _tap(kd, bh, bw + 2, stride, dilation, layout) - x0
                    if s == 0 and kd == 0 and bh == 0 and bw == 0:
                        for q in range(n):
                            grid[od, U(q)] = bias + _sum9(xf, x0 + q, r1, r2, c1, c2, wb)
                    else:
                        for q in range(n):
                            grid[od, U(q)] += _sum9(xf, x0 + q, r1, r2, c1, c2, wb)
    else:
        for kd in range(KD):
            for kh in range(KH):
                for kw in range(KW):
                    wv = wt[o, s, kd, kh, kw]
                    x0 = base + _tap(kd, kh, kw, stride, dilation, layout)
                    if s == 0 and kd == 0 and kh == 0 and kw == 0:
                        for q in range(n):
                            grid[od, U(q)] = bias + wv * xf[U(x0 + q)]
                    else:
                        for q in range(n):
                            grid[od, U(q)] += wv * xf[U(x0 + q)]


@parallel_kernel(streaming=SERIAL_FACTOR)
def _correlate(src, wt, b, dst, mul, div, pad, stride, dilation, slope, lo, hi, chunks):
    """dst[n, o] = activate(b[o] + sum over s of the correlation of wt[o, s] with source
    channel ((o // div) * mul + s) of src, placed on the grid at offset ``pad``). wt is
    (O, S, KD, KH, KW). Forward: mul = 1, div = m, S = 1. Input gradient at unit stride: mul =
    m, div = 1, S = m, wt flipped.

    On the flat grid of the buffer: at unit stride, output (od, oh, ow) is grid position
    (oh * E2 + ow) of depth od (E the buffer's extents), and tap (kd, kh, kw) reads that
    position plus (kd * dd * E1 + kh * dh) * E2 + kw * dw. So each tap is one loop over a whole
    plane of outputs rather than one per output row, whose 7 to 112 elements went mostly to
    the scalar remainder of LLVM's 64-wide vector passes. The positions between rows compute
    values nobody reads (2 of every E2 for a 3x3 kernel). At larger strides the buffer holds
    the input split into stride phases (``_phases``), in which every tap again reads a
    contiguous run, at a constant offset. Measured, 2 cores, against the loops along rows:
    (8, 1024, 7x7) 0.87 -> 0.34 ms, (8, 512, 14x14) 0.76 -> 0.34 ms, (8, 256, 28x28) 0.81 ->
    0.48 ms, (1, 32, 112x112) 0.23 -> 0.15 ms."""
    N, O = dst.shape[:2]
    S, KD, KH, KW = wt.shape[1:]
    OD, OH, OW = dst.shape[2:]
    sd, sh, sw = stride
    dd, dh, dw = dilation
    ext = ((OD - 1) * sd + (KD - 1) * dd + 1, (OH - 1) * sh + (KH - 1) * dh + 1,
           (OW - 1) * sw + (KW - 1) * dw + 1)
    ranges = _fill_ranges(ext, src.shape[2:], pad)
    layout = _phases(stride, ext)
    per_step, rows, width, size = layout
    n_grid = -(-((OH - 1) * width + OW) // FLAT_STEP) * FLAT_STEP
    length = _buffer_length(ext, (KD, KH, KW), OD, n_grid, stride, dilation, layout)
    phased = sd * sh * sw > 1
    fused = not is_identity(slope, lo, hi)
    tasks = N * O
    chunks = min(tasks, chunks)
    for chunk in prange(chunks):
        xf = np.zeros(length, dtype=src.dtype)
        grid = np.empty((OD, n_grid), dtype=dst.dtype)
        for t in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
            n, o = t // O, t % O
            for s in range(S):
                c = (o // div) * mul + s
                if phased:
                    _fill_phases(xf, src, n, c, ranges, pad, stride, layout)
                else:
                    _fill(xf, ext[1], ext[2], src, n, c, ranges, pad)
                for od in range(OD):
                    _accumulate(grid, xf, wt, o, s, b[o], od, stride, dilation, layout)
            for od in range(OD):
                for oh in range(OH):
                    if fused:
                        for ow in range(OW):
                            dst[n, o, od, oh, U(ow)] = activate(grid[od, U(oh * width + ow)], slope, lo, hi)
                    else:
                        for ow in range(OW):
                            dst[n, o, od, oh, U(ow)] = grid[od, U(oh * width + ow)]


@functools.lru_cache(maxsize=256)
def _phase_plan(in_size, out_size, kernel, stride, dilation, padding):
    """How ``_gather_phases`` computes a strided convolution's input gradient, as arrays.

    Per dimension, input position j = a + s*i (phase a < s, the stride) receives
    w[t] * grad_out[i + e] from exactly the taps t with a + p - t*d divisible by s, at
    e = (a + p - t*d) / s. So each of the prod(stride) phases of the input gradient is a
    stride-1 correlation of grad_out, unchanged, with the phase's own few taps. grad_out lies
    on a zero-bordered buffer of extents ``ext`` at offset ``pad`` (enough that no e reads
    before it, or a row's reads past its end); a phase's outputs are a flat run on that grid,
    as in ``_correlate``.

    Returns (ext, pad, plan, grid_start, tap_start, tap_index, tap_offset, length): plan[p] =
    (a_d, a_h, a_w, I_d, I_h, I_w, n) with I the phase's output extents and n its flat run
    per depth; phase p's run for depth i starts at grid_start[p] + i * n; its taps are
    tap_start[p]:tap_start[p + 1] of tap_index (the flat index into the kernel) and tap_offset
    (the read offset on the flat buffer from the output's position); length, the buffer's."""
    dims = []
    for J, s, K, d, p in zip(in_size, stride, kernel, dilation, padding):
        dims.append([(a, max(0, -(-(J - a) // s)), [(t, (a + p - t * d) // s) for t in range(K)
                                                   if (a + p - t * d) % s == 0]) for a in range(s)])
    pad, ext = [], []
    for O, phases in zip(out_size, dims):
        es = [e for _, I, taps in phases if I for _, e in taps]
        lead = max([0] + [-e for e in es])
        reach = max([O + lead] + [I - 1 + e + lead + 1 for _, I, taps in phases if I for _, e in taps])
        pad.append(lead)
        ext.append(reach)
    KH, KW = kernel[1:]
    plan, grid_start, tap_start, tap_index, tap_offset = [], [0], [0], [], []
    length = math.prod(ext)
    for (ad, ID, td), (ah, IH, th), (aw, IW, tw) in itertools.product(*dims):
        if not (ID and IH and IW):
            continue
        n = -(-((IH - 1) * ext[2] + IW) // FLAT_STEP) * FLAT_STEP
        plan.append((ad, ah, aw, ID, IH, IW, n))
        grid_start.append(grid_start[-1] + ID * n)
        for (kd, ed), (kh, eh), (kw, ew) in itertools.product(td, th, tw):
            offset = ((ed + pad[0]) * ext[1] + eh + pad[1]) * ext[2] + ew + pad[2]
            tap_index.append((kd * KH + kh) * KW + kw)
            tap_offset.append(offset)
            length = max(length, (ID - 1) * ext[1] * ext[2] + offset + n)
        tap_start.append(len(tap_index))
    as_array = functools.partial(np.array, dtype=np.int64)
    return (tuple(ext), tuple(pad), as_array(plan).reshape(-1, 7), as_array(grid_start), as_array(tap_start),
            as_array(tap_index), as_array(tap_offset), length)


@parallel_kernel(streaming=SERIAL_FACTOR)
def _gather_phases(src, wt, dst, m, stride, ext, pad, plan, grid_start, tap_start, tap_index, tap_offset,
                   length, chunks):
    """dst[n, c] = the input gradient of a strided depthwise convolution from grad_out ``src``
    (N, C * m, ...), weights ``wt`` (C * m, taps) flat, one stride phase at a time
    (``_phase_plan``): each phase a stride-1 correlation of the unchanged grad_out with its own
    taps, whose outputs are then written ``stride`` apart.

    ``_correlate`` can do the same work with grad_out placed ``stride`` apart on a grid of zeros,
    every tap over every input position: stride**2 times the multiply-adds, most of them on
    zeros. Measured, (1, 64, 112x112) 3x3/2 on 2 cores, the two taking turns: 0.26 -> 0.17 ms
    at batch 1, 2.17 -> 1.61 at batch 8. Storing each phase's outputs on their own, ``stride``
    apart, one at a time, had cost more than the multiply-adds saved (0.23 of 0.35 ms on one
    thread): at column stride 2 the two column phases of a row are written by one interleaving
    loop, which vectorizes."""
    N, C, OD, OH, OW = dst.shape
    df = dst.reshape(-1)
    P = plan.shape[0]
    E1, E2 = ext[1], ext[2]
    plane = E1 * E2
    ranges = _fill_ranges(ext, src.shape[2:], pad)
    sd, sh, sw = stride
    tasks = N * C
    chunks = min(tasks, chunks)
    for chunk in prange(chunks):
        xf = np.zeros(length, dtype=src.dtype)
        grid = np.empty(grid_start[P], dtype=dst.dtype)
        for task in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
            n, c = task // C, task % C
            for s in range(m):
                k = c * m + s
                _fill(xf, E1, E2, src, n, k, ranges, pad)
                for p in range(P):
                    ID, run = plan[p, 3], plan[p, 6]
                    t0, t1 = tap_start[p], tap_start[p + 1]
                    for i in range(ID):
                        g0 = grid_start[p] + i * run
                        if s == 0 and t0 == t1:  # a phase no tap reaches: zeros
                            for q in range(run):
                                grid[U(g0 + q)] = 0
                        for t in range(t0, t1):
                            wv = wt[k, tap_index[t]]
                            x0 = i * plane + tap_offset[t]
                            if s == 0 and t == t0:
                                for q in range(run):
                                    grid[U(g0 + q)] = wv * xf[U(x0 + q)]
                            else:
                                for q in range(run):
                                    grid[U(g0 + q)] += wv * xf[U(x0 + q)]
            p = 0
            while p < P:
                ad, ah, aw, ID, IH, IW, run = (plan[p, 0], plan[p, 1], plan[p, 2], plan[p, 3], plan[p, 4],
                                               plan[p, 5], plan[p, 6])
                # at column stride 2 the even and odd columns' phases go out together, in one
                # interleaving loop that vectorizes (a loop per phase stores one element at a time)
                paired = (sw == 2 and aw == 0 and p + 1 < P and plan[p + 1, 2] == 1 and plan[p + 1, 1] == ah
                          and plan[p + 1, 0] == ad)
                odd = plan[p + 1, 5] if paired else 0
                for i in range(ID):
                    for j in range(IH):
                        g0 = grid_start[p] + i * run + j * E2
                        at = (((n * C + c) * OD + ad + i * sd) * OH + ah + j * sh) * OW + aw
                        if paired:
                            h0 = grid_start[p + 1] + i * plan[p + 1, 6] + j * E2
                            for l in range(odd):
                                df[U(at + 2 * l)] = grid[U(g0 + l)]
                                df[U(at + 2 * l + 1)] = grid[U(h0 + l)]
                        for l in range(odd, IW):
                            df[U(at + l * sw)] = grid[U(g0 + l)]
                p += 2 if paired else 1


def _is_same3(geom):
    """A 3x3 kernel at unit stride and dilation with one row and column of zero padding on
    every side, so that output planes are the input's size: MobileNet's depthwise convolution,
    which ``_same3`` and ``_weight_same3`` run on whole planes (in 3-D, a (1, 3, 3) kernel:
    ``_same3`` takes every depth's plane on its own; ``_weight_same3`` a depth of 1 only)."""
    return (geom.kernel == (1, 3, 3) and geom.stride == (1, 1, 1) and geom.dilation[1:] == (1, 1)
            and geom.padding == (0, 1, 1) and geom.out_size == geom.in_size)


@njit(inline="always", cache=True)
def _edge_masks(width, length):
    """Whether each position of a flat plane of rows of ``width`` has a column left of it, and
    one right of it, in the plane."""
    left = np.empty(length, dtype=np.bool_)
    right = np.empty(length, dtype=np.bool_)
    for q in range(length):
        left[q] = q % width != 0
        right[q] = q % width != width - 1
    return left, right


@njit(inline="always", cache=True)
def _fill_plane(xf, src, n, c, off, L, width, at):
    """xf[at + width + 1:] = the flat plane of L elements at src[n, c, off:], one contiguous
    copy: the width + 1 positions before it, and those past the plane, stay the zeros of padding
    rows."""
    at += width + 1
    for q in range(L):
        xf[U(at + q)] = src[n, c, U(off + q)]


@njit(inline="always", cache=True)
def _pad(v, inside, zero):
    """v where it lies in the plane, else the padding's zero."""
    return v if inside else zero


@njit(inline="always", cache=True)
def _same3_at(xf, q, width, wb, left, right, zero):
    """Output q of the 3x3 correlation wb of a plane filled by ``_fill_plane``: the taps of its
    left and right columns, where the row has none, read the neighbouring row's end, so a
    select puts the padding's zero in their place (zero, not a dropped product: an inf weight
    times the padding is NaN, as in PyTorch)."""
    w00, w01, w02, w10, w11, w12, w20, w21, w22 = wb
    q1, q2 = q + width, q + 2 * width
    lm, rm = left[U(q)], right[U(q)]
    lt = w00 * _pad(xf[U(q)], lm, zero) + w10 * _pad(xf[U(q1)], lm, zero) + w20 * _pad(xf[U(q2)], lm, zero)
    mid = w01 * xf[U(q + 1)] + w11 * xf[U(q1 + 1)] + w21 * xf[U(q2 + 1)]
    rt = w02 * _pad(xf[U(q + 2)], rm, zero) + w12 * _pad(xf[U(q1 + 2)], rm, zero) + w22 * _pad(xf[U(q2 + 2)], rm, zero)
    return lt + mid + rt


#: ``_same3`` stacks the planes of several samples of a channel (which share its weights) into
#: one loop of at least this many positions, where a plane is shorter than two of LLVM's
#: vector passes (``FLAT_STEP``): a 7x7 plane's 49 positions ran as scalar code. Measured,
#: 2 cores, one plane against the whole batch a task: (8, 1024, 7x7) 0.38 -> 0.24 ms,
#: (8, 2048, 4x4) 0.50 -> 0.25, (8, 256, 10x10) 0.134 -> 0.118, (8, 512, 14x14) 0.23 either way.
STACK_POSITIONS = 512


def _stacked(geom):
    """How many of a channel's planes ``_same3`` stacks into one loop (``STACK_POSITIONS``)."""
    plane = geom.in_size[1] * geom.in_size[2]
    if plane >= 2 * FLAT_STEP:
        return 1
    return min(geom.batch * geom.in_size[0], -(-STACK_POSITIONS // plane))


@njit(inline="always", cache=True)
def _next_plane(n, d, D):
    """The plane after depth d of sample n, D depths a sample: stepped, as a division per plane
    cost a stack of 7x7 planes a sixth more time."""
    return (n, d + 1) if d + 1 < D else (n + 1, 0)


@parallel_kernel(streaming=SERIAL_FACTOR)
def _same3(src, wt, b, dst, width, L, stack, mul, div, slope, lo, hi, chunks):
    """``_correlate`` for ``_is_same3`` convolutions, src (N, C, D * L) a sample's D flat planes
    of L = H * W elements in rows of ``width``, dst the (N, O, D * L) result flat: forward and
    input gradient alike (the gradient of this convolution is one too, with the kernel flipped).

    Each plane is copied in one contiguous run between rows of zeros (``_fill_plane``), so the
    rows above and below the plane need no test, and the columns left and right of it are
    zeros put in by select (``_same3_at``): no gap columns to fill and skip. The copy and the
    taps then vectorize, where rows of 7 or 14 made them scalar loops that took most of a small
    plane's time: (8, 1024, 7x7) 0.56 -> 0.21 ms (PyTorch 0.21), (8, 512, 14x14) 0.57 -> 0.28 ms
    (PyTorch 0.28).

    A task takes ``stack`` of one channel's N * D planes, one below the other, one row
    of zeros between (the padding below one plane is the padding above the next), so that the
    taps run as one loop over all of them: each plane's outputs are then read out of the loop's
    grid, and the rows between, which read two planes, are dropped. One plane a task is
    computed in place in dst (flat, so that choosing it takes no view of dst per task: every
    view touches the parent's reference count, which the threads share).

    Tasks go channel by channel within a group of planes, so that consecutive tasks read planes
    that lie side by side: group by group within a channel cost (8, 256, 28x28) a tenth more."""
    N = src.shape[0]
    D = src.shape[2] // L
    O = wt.shape[0]
    S = wt.shape[1]
    P = N * D  # a channel's planes, sample by sample, depth by depth
    step = L + width  # a plane and the row of zeros below it
    n_grid = stack * step - width
    left, right = _edge_masks(width, n_grid)
    zero = dst.dtype.type(0)
    fused = not is_identity(slope, lo, hi)
    groups = -(-P // stack)
    tasks = groups * O
    chunks = min(tasks, chunks)
    for chunk in prange(chunks):
        xf = np.zeros(stack * step + width + 2, dtype=src.dtype)
        # a copy out of a separate grid costs a large plane a third more time
        grid = dst if stack == 1 else np.empty(n_grid, dtype=dst.dtype)
        for t in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
            p0, o = (t // O) * stack, t % O
            planes = min(stack, P - p0)
            n0, d0 = (p0, 0) if D == 1 else (p0 // D, p0 % D)  # no division a task in 2-D
            g0 = ((n0 * O + o) * D + d0) * L if stack == 1 else 0
            n_q = planes * step - width
            for s in range(S):
                c = (o // div) * mul + s
                n, d = n0, d0
                for i in range(planes):
                    _fill_plane(xf, src, n, c, d * L, L, width, i * step)
                    n, d = _next_plane(n, d, D)
                wb = _block(wt, o, s, 0, 0, 0)
                if s == 0:
                    bias = b[o]
                    for q in range(n_q):
                        grid[U(g0 + q)] = bias + _same3_at(xf, q, width, wb, left, right, zero)
                else:
                    for q in range(n_q):
                        grid[U(g0 + q)] += _same3_at(xf, q, width, wb, left, right, zero)
            if stack == 1 and fused:
                # the sums in place, activated where they lie: read and written at one index, the
                # loop vectorizes (through ``grid`` at another name, LLVM could not prove the two
                # apart and ran it as scalar code: ReLU6 took (1, 32, 56x56) from 81 to 133 us)
                for q in range(L):
                    dst[U(g0 + q)] = activate(dst[U(g0 + q)], slope, lo, hi)
            elif stack > 1:
                n, d = n0, d0
                for i in range(planes):
                    at, a = ((n * O + o) * D + d) * L, g0 + i * step
                    for q in range(L):
                        dst[U(at + q)] = activate(grid[U(a + q)], slope, lo, hi)
                    n, d = _next_plane(n, d, D)


@parallel_kernel(streaming=SERIAL_FACTOR)
def _weight_same3(go, x, gw, width, m, chunks):
    """gw[k, 0, 0] = the 3x3 weight gradient of an ``_is_same3`` convolution, go and x (N, C,
    H * W) flat planes of rows of ``width``: nine dot products of grad_out's plane with x's,
    filled as in ``_same3``, the padding's zeros put in by select at the row ends. Planar
    convolutions only (a depth of 1): taking a 3-D (1, 3, 3) kernel's planes depth by depth
    here cost 2-D shapes of small planes 12-18% more time ((16, 1024, 7x7), (8, 2048, 4x4)), so
    those take ``_weight``."""
    N, K, L = go.shape
    left, right = _edge_masks(width, L)
    zero = gw.dtype.type(0)
    chunks = min(K, chunks)
    for chunk in prange(chunks):
        xf = np.zeros(L + 2 * width + 2, dtype=x.dtype)
        for k in range(chunk * K // chunks, (chunk + 1) * K // chunks):
            a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = zero
            for n in range(N):
                _fill_plane(xf, x, n, k // m, 0, L, width, 0)
                for q in range(L):
                    v = go[n, k, U(q)]
                    q1, q2 = q + width, q + 2 * width
                    lm, rm = left[U(q)], right[U(q)]
                    a00 += v * _pad(xf[U(q)], lm, zero)
                    a10 += v * _pad(xf[U(q1)], lm, zero)
                    a20 += v * _pad(xf[U(q2)], lm, zero)
                    a01 += v * xf[U(q + 1)]
                    a11 += v * xf[U(q1 + 1)]
                    a21 += v * xf[U(q2 + 1)]
                    a02 += v * _pad(xf[U(q + 2)], rm, zero)
                    a12 += v * _pad(xf[U(q1 + 2)], rm, zero)
                    a22 += v * _pad(xf[U(q2 + 2)], rm, zero)
            gw[k, 0, 0, 0, 0], gw[k, 0, 0, 0, 1], gw[k, 0, 0, 0, 2] = a00, a01, a02
            gw[k, 0, 0, 1, 0], gw[k, 0, 0, 1, 1], gw[k, 0, 0, 1, 2] = a10, a11, a12
            gw[k, 0, 0, 2, 0], gw[k, 0, 0, 2, 1], gw[k, 0, 0, 2, 2] = a20, a21, a22


@njit(inline="always", cache=True)
def _dots9(gw, k, kd, bh, bw, g, g0, xf, x0, r1, r2, c1, c2, n_out):
    """gw[k, 0, kd, bh:bh+3, bw:bw+3] += the nine dot products of g[g0 + q] (q < n_out, g flat)
    with the input each tap of the block read, xf[x0 + q + r_i + c_j] (r_0 = c_0 = 0). Nine
    accumulators in one pass: a reduction needs no alias checks, so it vectorizes with runtime
    offsets."""
    z = gw[k, 0, 0, 0, 0] * 0  # a zero of gw's dtype
    a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = z
    x1, x2 = x0 + r1, x0 + r2
    for q in range(n_out):
        v = g[U(g0 + q)]
        a00 += v * xf[U(x0 + q)]
        a01 += v * xf[U(x0 + q + c1)]
        a02 += v * xf[U(x0 + q + c2)]
        a10 += v * xf[U(x1 + q)]
        a11 += v * xf[U(x1 + q + c1)]
        a12 += v * xf[U(x1 + q + c2)]
        a20 += v * xf[U(x2 + q)]
        a21 += v * xf[U(x2 + q + c1)]
        a22 += v * xf[U(x2 + q + c2)]
    gw[k, 0, kd, bh, bw] += a00
    gw[k, 0, kd, bh, bw + 1] += a01
    gw[k, 0, kd, bh, bw + 2] += a02
    gw[k, 0, kd, bh + 1, bw] += a10
    gw[k, 0, kd, bh + 1, bw + 1] += a11
    gw[k, 0, kd, bh + 1, bw + 2] += a12
    gw[k, 0, kd, bh + 2, bw] += a20
    gw[k, 0, kd, bh + 2, bw + 1] += a21
    gw[k, 0, kd, bh + 2, bw + 2] += a22


@parallel_kernel(streaming=SERIAL_FACTOR)
def _weight(go, x, gw, m, padding, stride, dilation, chunks):
    """gw[k, 0] (KD, KH3, KW3, zero-padded blocks) = the sum over samples and outputs of
    grad_out times the input each tap read, nine taps per pass.

    The sums run as single long dot products over a plane of outputs on the flat grid of
    ``_correlate``: x in the buffer (in stride phases past unit stride), grad_out placed on the
    same grid of outputs, zeros in the columns past each row, so tap t of output q reads x at
    q + offset(t). Along rows of 7 to 56 outputs most of the work went to scalar remainders
    ((1, 64, 112x112) 3x3/2: 0.83 ms, PyTorch 0.19), and every row ended in nine horizontal
    sums."""
    N, K = go.shape[:2]
    OD, OH, OW = go.shape[2:]
    KD, KH3, KW3 = gw.shape[2:]
    sd, sh, sw = stride
    dd, dh, dw = dilation
    ext = ((OD - 1) * sd + (KD - 1) * dd + 1, (OH - 1) * sh + (KH3 - 1) * dh + 1,
           (OW - 1) * sw + (KW3 - 1) * dw + 1)
    zeros = (0, 0, 0)
    ranges = _fill_ranges(ext, x.shape[2:], padding)
    layout = _phases(stride, ext)
    per_step, rows, width, size = layout
    go_ranges = (0, OD, 0, OH, 0, OW)  # all of grad_out, at the grid's origin (width >= OW)
    n_flat = (OH - 1) * width + OW  # the grid positions up to a plane's last output
    length = _buffer_length(ext, (KD, KH3, KW3), OD, n_flat, stride, dilation, layout)
    phased = sd * sh * sw > 1
    go_length = OD * OH * width
    chunks = min(K, chunks)
    for chunk in prange(chunks):
        xf = np.zeros(length, dtype=x.dtype)
        gf = np.zeros(go_length, dtype=go.dtype)
        for k in range(chunk * K // chunks, (chunk + 1) * K // chunks):
            for kd in range(KD):
                for kh in range(KH3):
                    for kw in range(KW3):
                        gw[k, 0, kd, kh, kw] = 0
            for n in range(N):
                if phased:
                    _fill_phases(xf, x, n, k // m, ranges, padding, stride, layout)
                else:
                    _fill(xf, ext[1], ext[2], x, n, k // m, ranges, padding)
                _fill(gf, OH, width, go, n, k, go_ranges, zeros)
                for od in range(OD):
                    base = od * per_step * size
                    for kd in range(KD):
                        for bh in range(0, KH3, 3):
                            for bw in range(0, KW3, 3):
                                x0 = base + _tap(kd, bh, bw, stride, dilation, layout)
                                r1 = base + _tap(kd, bh + 1, bw, stride, dilation, layout) - x0
                                r2 = base + _tap(kd, bh + 2, bw, stride, dilation, layout) - x0
                                c1 = base + _tap(kd, bh, bw + 1, stride, dilation, layout) - x0
                                c2 = base + _tap(kd, bh, bw + 2, stride, dilation, layout) - x0
                                _dots9(gw, k, kd, bh, bw, gf, od * OH * width, xf, x0, r1, r2, c1, c2, n_flat)


def _chunks():
    """How many chunks the tasks are split into (the kernels cap it at the task count)."""
    return CHUNKS_PER_THREAD * numba.get_num_threads()


def _plane_shape(geom):
    """The width of a plane's rows, and its element count."""
    return geom.in_size[2], geom.in_size[1] * geom.in_size[2]


def _planes(a):
    """(N, C, D, H, W) C-contiguous as (N, C, D * H * W): a view, so that kernels write into ``a``."""
    if not a.flags.c_contiguous:
        raise ValueError("depthwise kernels take C-contiguous arrays")
    return a.reshape(a.shape[0], a.shape[1], -1)


def forward(x, w, b, out, geom, slope, lo, hi):
    m = geom.out_channels // geom.in_channels
    b = np.zeros(w.shape[0], dtype=w.dtype) if b is None else b
    if _is_same3(geom):
        _same3(_planes(x), w, b, _planes(out).reshape(-1), *_plane_shape(geom), _stacked(geom), 1, m, slope, lo, hi,
               _chunks())
    else:
        _correlate(x, w, b, out, 1, m, geom.padding, geom.stride, geom.dilation, slope, lo, hi, _chunks())


def grad_input(go, w, gx, geom):
    C, m = geom.in_channels, geom.out_channels // geom.in_channels
    # taps reversed, the m output channels of input channel c side by side: (C, m, KD, KH, KW)
    flipped = w[:, :, ::-1, ::-1, ::-1].reshape(C, m, *geom.kernel)
    pad = tuple(d * (k - 1) - p for d, k, p in zip(geom.dilation, geom.kernel, geom.padding))
    one = gx.dtype.type(1)
    if _is_same3(geom):
        _same3(_planes(go), np.ascontiguousarray(flipped), np.zeros(C, dtype=gx.dtype), _planes(gx).reshape(-1),
               *_plane_shape(geom), _stacked(geom), m, 1, one, -np.inf * one, np.inf * one, _chunks())
        return
    if geom.stride != (1, 1, 1):
        plan = _phase_plan(geom.in_size, geom.out_size, geom.kernel, geom.stride, geom.dilation, geom.padding)
        _gather_phases(go, np.ascontiguousarray(w).reshape(w.shape[0], -1), gx, m, geom.stride, *plan, _chunks())
        return
    _correlate(go, np.ascontiguousarray(flipped), np.zeros(C, dtype=gx.dtype), gx, m, 1, pad, (1, 1, 1),
               geom.dilation, one, -np.inf * one, np.inf * one, _chunks())


def grad_weight(go, x, gw, geom):
    if _is_same3(geom) and geom.in_size[0] == 1:  # its planes: the samples' (see _weight_same3)
        _weight_same3(_planes(go), _planes(x), gw, geom.in_size[2], geom.out_channels // geom.in_channels, _chunks())
        return
    KD, KH, KW = geom.kernel
    gw3 = np.empty((gw.shape[0], 1, KD, -(-KH // 3) * 3, -(-KW // 3) * 3), dtype=gw.dtype)
    _weight(go, x, gw3, geom.out_channels // geom.in_channels, geom.padding, geom.stride,
            geom.dilation, _chunks())
    gw[...] = gw3[..., :KH, :KW]
