"""The direct loops for depthwise convolution: one input channel per group (C/g == 1), each
read by K/g == m output channels (m, the depth multiplier, is 1 in MobileNet).

With one input channel behind each output there is no sum over channels to share a pass over
the output: the general direct loops (``conv_direct``) add one tap per pass over a row, two
loads and a store per multiply-add, after a full padded copy of the input. Here each task copies
its one input plane into a zero-bordered buffer of its own, which stays in cache (the borders are
zeroed once per chunk of tasks: every plane writes the same interior), and takes a kernel of
whole 3x3 blocks nine taps at a time, a block per pass over an output row (``_blocks``); other
kernels take one tap per pass (``_taps``). Measured on one core, (8, 256, 28x28) 3x3: 0.77 ms
this way, 1.86 ms with three taps per pass, 1.36 ms in PyTorch.

LLVM does not vectorize across channels here (a channels-last block of 16 with a constant trip
count came out as scalar code, the loads and stores not provably apart), so the loops run along
rows, which it vectorizes down to rows of 7.

One kernel, ``_correlate``, serves the forward pass and the input gradient. The input gradient
is the correlation of ``grad_out`` with the flipped kernel: ``grad_out`` is placed on the grid
``stride`` apart (zeros between: a strided convolution's gradient spends stride**2 times the
multiply-adds, on zeros, for one loop that serves both) at the complementary padding
``dilation * (k - 1) - padding``, which may be negative (a crop). The weight gradient,
``_weight``, takes nine dot products per pass over a row.

Tasks are handed out in chunks, a few per thread, so that each chunk allocates its buffer once:
small planes (7x7 at 1024 channels) would otherwise spend more on allocation than arithmetic.

With a few multiply-adds per element the kernels are streaming ones (``parallel_kernel``): one
thread is faster below a few hundred thousand elements, where handing the work to the others
costs more than it saves (2 cores, forward / backward: (1, 1024, 7x7) 0.16 / 0.34 ms on one
thread, 0.24 / 0.52 on two; (1, 256, 28x28) 0.16 / 0.41 against 0.25 / 0.57; even at (1, 128,
56x56); two threads win from (1, 64, 112x112) up).
"""

import numba
import numpy as np
from numba import njit, prange

from ._window import U, activate, is_identity, parallel_kernel

#: Chunks per thread: enough for the threads to even out, few enough that allocating each
#: chunk's buffer once costs nothing.
CHUNKS_PER_THREAD = 4


def is_depthwise(geom):
    """One input channel per group."""
    return geom.in_channels == geom.groups


@njit(inline="always", cache=True)
def _source_range(v0, v1, up, pad, n):
    """Source indices i in [0, n) whose grid position i * up + pad lies in [v0, v1)."""
    i0 = max(0, -((pad - v0) // up))  # ceil((v0 - pad) / up)
    i1 = min(n, (v1 - 1 - pad) // up + 1)
    return i0, max(i0, i1)


@njit(inline="always", cache=True)
def _fill_ranges(ext, src_size, up, pad):
    """The source index range [lo, hi) of each dimension that lands on a buffer of extents
    ``ext``: computed once per call, as its floor divisions cost more than a small plane's copy."""
    i0, i1 = _source_range(0, ext[0], up[0], pad[0], src_size[0])
    j0, j1 = _source_range(0, ext[1], up[1], pad[1], src_size[1])
    l0, l1 = _source_range(0, ext[2], up[2], pad[2], src_size[2])
    return i0, i1, j0, j1, l0, l1


@njit(inline="always", cache=True)
def _column(p, sw, part):
    """Where column p of a padded row lies in the buffer's row, split into ``sw`` phases of
    ``part`` columns (column p = ow * sw + offset in phase offset % sw, at ow + offset // sw):
    at stride sw the columns that one tap reads for consecutive outputs lie side by side."""
    return (p % sw) * part + p // sw


@njit(inline="always", cache=True)
def _fill(buf, src, n, c, ranges, up, pad, sw, part):
    """buf[(i, j, l) * up + pad] = src[n, c, i, j, l] over ``ranges`` (``_fill_ranges``), the
    columns in ``sw`` phases (``_column``; sw > 1 only with up = 1). Positions not written keep
    what they held: the zeros every buffer starts with, as every plane writes the same positions."""
    i0, i1, j0, j1, l0, l1 = ranges
    if sw > 1:
        for i in range(i0, i1):
            for j in range(j0, j1):
                for ph in range(sw):  # padded columns ph, ph + sw, ...: source l = k * sw + ph - pad
                    k0 = -((ph - pad[2] - l0) // sw)  # ceil((l0 + pad - ph) / sw)
                    k1 = -((ph - pad[2] - l1) // sw)
                    for k in range(max(k0, 0), k1):
                        buf[i + pad[0], j + pad[1], U(ph * part + k)] = src[n, c, i, j, U(k * sw + ph - pad[2])]
    elif up[0] == 1 and up[1] == 1 and up[2] == 1:
        for i in range(i0, i1):
            for j in range(j0, j1):
                for l in range(l0, l1):
                    buf[i + pad[0], j + pad[1], U(l + pad[2])] = src[n, c, i, j, U(l)]
    else:
        for i in range(i0, i1):
            for j in range(j0, j1):
                a, r = i * up[0] + pad[0], j * up[1] + pad[1]
                for l in range(l0, l1):
                    buf[a, r, U(l * up[2] + pad[2])] = src[n, c, i, j, U(l)]


@njit(inline="always", cache=True)
def _sum9(buf, a, r, q, dh, c1, c2, wb):
    """The 3x3 block of taps wb on buffer rows r, r + dh, r + 2 dh of depth a, at columns q,
    q + c1 and q + c2."""
    w00, w01, w02, w10, w11, w12, w20, w21, w22 = wb
    return (w00 * buf[a, r, U(q)] + w01 * buf[a, r, U(q + c1)] + w02 * buf[a, r, U(q + c2)]
            + w10 * buf[a, r + dh, U(q)] + w11 * buf[a, r + dh, U(q + c1)] + w12 * buf[a, r + dh, U(q + c2)]
            + w20 * buf[a, r + 2 * dh, U(q)] + w21 * buf[a, r + 2 * dh, U(q + c1)]
            + w22 * buf[a, r + 2 * dh, U(q + c2)])


@njit(inline="always", cache=True)
def _block(wt, o, s, kd, bh, bw):
    """The nine taps of the 3x3 block at (bh, bw) of wt[o, s, kd]."""
    return (wt[o, s, kd, bh, bw], wt[o, s, kd, bh, bw + 1], wt[o, s, kd, bh, bw + 2],
            wt[o, s, kd, bh + 1, bw], wt[o, s, kd, bh + 1, bw + 1], wt[o, s, kd, bh + 1, bw + 2],
            wt[o, s, kd, bh + 2, bw], wt[o, s, kd, bh + 2, bw + 1], wt[o, s, kd, bh + 2, bw + 2])


@njit(inline="always", cache=True)
def _blocks(dst, n, o, s, buf, wt, bias, sd, sh, sw, dd, dh, dw, part):
    """dst[n, o] (+)= the correlation of buf (columns in sw phases of ``part``) with wt[o, s], a
    kernel of whole 3x3 blocks: all nine taps of a block in one pass over an output row, a
    multiply-add per load and one store per output. The first pass assigns, with the bias, rather than adding to a row set beforehand
    (that extra pass cost 1.6x); assigning and adding are loops of their own, as a branch inside
    would keep the loop from vectorizing."""
    KD, KH, KW = wt.shape[2:]
    OD, OH, OW = dst.shape[2:]
    for kd in range(KD):  # blocks outside, rows inside: a block's taps load once
        for bh in range(0, KH, 3):
            for bw in range(0, KW, 3):
                wb = _block(wt, o, s, kd, bh, bw)
                first = s == 0 and kd == 0 and bh == 0 and bw == 0
                q0 = _column(bw * dw, sw, part)
                c1, c2 = _column((bw + 1) * dw, sw, part) - q0, _column((bw + 2) * dw, sw, part) - q0
                for od in range(OD):
                    a = od * sd + kd * dd
                    for oh in range(OH):
                        r = oh * sh + bh * dh
                        if first:
                            for ow in range(OW):
                                dst[n, o, od, oh, U(ow)] = bias + _sum9(buf, a, r, ow + q0, dh, c1, c2, wb)
                        else:
                            for ow in range(OW):
                                dst[n, o, od, oh, U(ow)] += _sum9(buf, a, r, ow + q0, dh, c1, c2, wb)


@njit(inline="always", cache=True)
def _taps(dst, n, o, s, buf, wt, bias, sd, sh, sw, dd, dh, dw, part):
    """``_blocks`` for any other kernel (1x1, 5x5, 7x7 ...): one tap per pass. Not blocks padded
    with zero weights: 0 * inf would put NaN where PyTorch has none."""
    KD, KH, KW = wt.shape[2:]
    OD, OH, OW = dst.shape[2:]
    for kd in range(KD):
        for kh in range(KH):
            for kw in range(KW):
                wv = wt[o, s, kd, kh, kw]
                first = s == 0 and kd == 0 and kh == 0 and kw == 0
                q0 = _column(kw * dw, sw, part)
                for od in range(OD):
                    a = od * sd + kd * dd
                    for oh in range(OH):
                        r = oh * sh + kh * dh
                        if first:
                            for ow in range(OW):
                                dst[n, o, od, oh, U(ow)] = bias + wv * buf[a, r, U(ow + q0)]
                        else:
                            for ow in range(OW):
                                dst[n, o, od, oh, U(ow)] += wv * buf[a, r, U(ow + q0)]


@njit(inline="always", cache=True)
def _accumulate(dst, n, o, s, buf, wt, bias, stride, dilation, part):
    """dst[n, o] (+)= the correlation of buf (columns in stride-many phases of ``part``) with
    wt[o, s]. The phases make every tap's loads along a row contiguous at any stride, rather
    than every other element's (3x3 at stride 2, (1, 64, 112x112): 0.43-0.48 -> 0.36-0.39 ms;
    at batch 8: 3.2 -> 2.7-2.9 ms).
    Kernels of whole 3x3 blocks at strides 1 and 2 without dilation, the common case, get
    ``_blocks`` inlined with those as constants: runtime strides and dilations in the row
    arithmetic cost 1.5x more (8 x 1024 x 7x7, one core). The depth stride and dilation stay
    runtime values: they only pick the plane. Every inlined copy adds to the compile time (each
    is seconds), so the other cases share one runtime-valued copy each."""
    sd, sh, sw = stride
    dd, dh, dw = dilation
    KH, KW = wt.shape[3:]
    if KH % 3 == 0 and KW % 3 == 0:
        if dh == 1 and dw == 1 and sh == sw and sw <= 2:
            if sw == 1:
                _blocks(dst, n, o, s, buf, wt, bias, sd, 1, 1, dd, 1, 1, part)
            else:
                _blocks(dst, n, o, s, buf, wt, bias, sd, 2, 2, dd, 1, 1, part)
        else:
            _blocks(dst, n, o, s, buf, wt, bias, sd, sh, sw, dd, dh, dw, part)
    else:
        _taps(dst, n, o, s, buf, wt, bias, sd, sh, sw, dd, dh, dw, part)


@parallel_kernel(streaming=True)
def _correlate(src, wt, b, dst, mul, div, up, pad, stride, dilation, slope, lo, hi, chunks):
    """dst[n, o] = activate(b[o] + sum over s of the correlation of wt[o, s] with source
    channel ((o // div) * mul + s) of src, placed on the grid by ``up`` and ``pad``). wt is
    (O, S, KD, KH, KW). Forward: mul = 1,
    div = m, S = 1, up = 1. Input gradient: mul = m, div = 1, S = m, up = the stride, stride 1,
    wt flipped."""
    N, O = dst.shape[:2]
    S, KD, KH, KW = wt.shape[1:]
    OD, OH, OW = dst.shape[2:]
    sd, sh, sw = stride
    dd, dh, dw = dilation
    ext = ((OD - 1) * sd + (KD - 1) * dd + 1, (OH - 1) * sh + (KH - 1) * dh + 1,
           (OW - 1) * sw + (KW - 1) * dw + 1)
    ranges = _fill_ranges(ext, src.shape[2:], up, pad)
    part = -(-ext[2] // sw)  # columns per phase
    fused = not is_identity(slope, lo, hi)
    tasks = N * O
    chunks = min(tasks, chunks)
    for chunk in prange(chunks):
        buf = np.zeros((ext[0], ext[1], sw * part), dtype=src.dtype)
        for t in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
            n, o = t // O, t % O
            for s in range(S):
                _fill(buf, src, n, (o // div) * mul + s, ranges, up, pad, sw, part)
                _accumulate(dst, n, o, s, buf, wt, b[o], stride, dilation, part)
            if fused:
                for od in range(OD):
                    for oh in range(OH):
                        for ow in range(OW):
                            dst[n, o, od, oh, U(ow)] = activate(dst[n, o, od, oh, U(ow)], slope, lo, hi)


@njit(inline="always", cache=True)
def _dots9(gw, k, kd, bh, bw, g, gn, gk, g0, xf, x0, row, sw, dw, n_out):
    """gw[k, 0, kd, bh:bh+3, bw:bw+3] += the nine dot products of g[gn, gk, g0 + p] (p < n_out)
    with the input each tap of the block read, xf[x0 + i * row + p * sw + j * dw] (xf the flat
    buffer, ``row`` the distance of the block's rows). Nine accumulators in one pass: a
    reduction needs no alias checks, so it vectorizes with runtime offsets; the stride is passed
    as a constant where it matters, as in ``_accumulate``."""
    z = gw[k, 0, 0, 0, 0] * 0  # a zero of gw's dtype
    a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = z
    x1, x2 = x0 + row, x0 + 2 * row
    for p in range(n_out):
        v = g[gn, gk, U(g0 + p)]
        q = p * sw
        a00 += v * xf[U(x0 + q)]
        a01 += v * xf[U(x0 + q + dw)]
        a02 += v * xf[U(x0 + q + 2 * dw)]
        a10 += v * xf[U(x1 + q)]
        a11 += v * xf[U(x1 + q + dw)]
        a12 += v * xf[U(x1 + q + 2 * dw)]
        a20 += v * xf[U(x2 + q)]
        a21 += v * xf[U(x2 + q + dw)]
        a22 += v * xf[U(x2 + q + 2 * dw)]
    gw[k, 0, kd, bh, bw] += a00
    gw[k, 0, kd, bh, bw + 1] += a01
    gw[k, 0, kd, bh, bw + 2] += a02
    gw[k, 0, kd, bh + 1, bw] += a10
    gw[k, 0, kd, bh + 1, bw + 1] += a11
    gw[k, 0, kd, bh + 1, bw + 2] += a12
    gw[k, 0, kd, bh + 2, bw] += a20
    gw[k, 0, kd, bh + 2, bw + 1] += a21
    gw[k, 0, kd, bh + 2, bw + 2] += a22


@parallel_kernel(streaming=True)
def _weight(go, go3, x, gw, m, padding, stride, dilation, chunks):
    """gw[k, 0] (KD, KH3, KW3, zero-padded blocks) = the sum over samples and outputs of
    grad_out (``go``, and go3 the same as (N, K, OD*OH*OW)) times the input each tap read, nine
    taps per pass.

    At unit stride each plane's sums run as single long dot products over the buffer's flat
    grid (as conv_direct's ``_flat`` loops do): grad_out is placed on the grid of the padded
    input, zeros in the columns and rows past the output, so tap t of output q reads input
    q + offset(t). Along rows of 7 to 28 outputs most of the work would go to scalar remainders,
    and every row would end in nine horizontal sums. At larger strides the sums run along rows."""
    N, K = go.shape[:2]
    OD, OH, OW = go.shape[2:]
    KD, KH3, KW3 = gw.shape[2:]
    sd, sh, sw = stride
    dd, dh, dw = dilation
    ext = ((OD - 1) * sd + (KD - 1) * dd + 1, (OH - 1) * sh + (KH3 - 1) * dh + 1,
           (OW - 1) * sw + (KW3 - 1) * dw + 1)
    ones = (1, 1, 1)
    zeros = (0, 0, 0)
    ranges = _fill_ranges(ext, x.shape[2:], ones, padding)
    flat = sd == 1 and sh == 1 and sw == 1
    grid = (OD, ext[1], ext[2])  # (allocated at any stride, used at unit stride)
    go_ranges = _fill_ranges(grid, go.shape[2:], ones, zeros)
    plane = ext[1] * ext[2]
    n_flat = ((OD - 1) * ext[1] + OH - 1) * ext[2] + OW  # the grid positions up to the last output
    chunks = min(K, chunks)
    for chunk in prange(chunks):
        buf = np.zeros(ext, dtype=x.dtype)
        gbuf = np.zeros(grid, dtype=go3.dtype)
        xf = buf.reshape(ext[0] * ext[1] * ext[2])  # the same memory, flat
        gf = gbuf.reshape(1, 1, OD * ext[1] * ext[2])
        for k in range(chunk * K // chunks, (chunk + 1) * K // chunks):
            for kd in range(KD):
                for kh in range(KH3):
                    for kw in range(KW3):
                        gw[k, 0, kd, kh, kw] = 0
            for n in range(N):
                _fill(buf, x, n, k // m, ranges, ones, padding, 1, ext[2])
                if flat:
                    _fill(gbuf, go, n, k, go_ranges, ones, zeros, 1, grid[2])
                    for kd in range(KD):
                        for bh in range(0, KH3, 3):
                            for bw in range(0, KW3, 3):
                                x0 = kd * dd * plane + bh * dh * ext[2] + bw * dw
                                _dots9(gw, k, kd, bh, bw, gf, 0, 0, 0, xf, x0, dh * ext[2], 1, dw, n_flat)
                    continue
                for od in range(OD):
                    for oh in range(OH):
                        g0 = (od * OH + oh) * OW
                        for kd in range(KD):
                            for bh in range(0, KH3, 3):
                                for bw in range(0, KW3, 3):
                                    x0 = ((od * sd + kd * dd) * ext[1] + oh * sh + bh * dh) * ext[2] + bw * dw
                                    if sw == 2 and dw == 1:
                                        _dots9(gw, k, kd, bh, bw, go3, n, k, g0, xf, x0, dh * ext[2], 2, 1, OW)
                                    else:
                                        _dots9(gw, k, kd, bh, bw, go3, n, k, g0, xf, x0, dh * ext[2], sw, dw, OW)


def _chunks():
    """How many chunks the tasks are split into (the kernels cap it at the task count)."""
    return CHUNKS_PER_THREAD * numba.get_num_threads()


def forward(x, w, b, out, geom, slope, lo, hi):
    m = geom.out_channels // geom.in_channels
    b = np.zeros(w.shape[0], dtype=w.dtype) if b is None else b
    _correlate(x, w, b, out, 1, m, (1, 1, 1), geom.padding, geom.stride, geom.dilation,
               slope, lo, hi, _chunks())


def grad_input(go, w, gx, geom):
    C, m = geom.in_channels, geom.out_channels // geom.in_channels
    # taps reversed, the m output channels of input channel c side by side: (C, m, KD, KH, KW)
    flipped = w[:, :, ::-1, ::-1, ::-1].reshape(C, m, *geom.kernel)
    pad = tuple(d * (k - 1) - p for d, k, p in zip(geom.dilation, geom.kernel, geom.padding))
    one = gx.dtype.type(1)
    _correlate(go, np.ascontiguousarray(flipped), np.zeros(C, dtype=gx.dtype), gx, m, 1, geom.stride, pad, (1, 1, 1),
               geom.dilation, one, -np.inf * one, np.inf * one, _chunks())


def grad_weight(go, x, gw, geom):
    KD, KH, KW = geom.kernel
    gw3 = np.empty((gw.shape[0], 1, KD, -(-KH // 3) * 3, -(-KW // 3) * 3), dtype=gw.dtype)
    _weight(go, go.reshape(*go.shape[:2], -1), x, gw3, geom.out_channels // geom.in_channels, geom.padding, geom.stride,
            geom.dilation, _chunks())
    gw[...] = gw3[..., :KH, :KW]
