"""Direct-loop convolution: every output is a sum over its window, computed in place.

Arrays are 5-D and C-contiguous: x (N, C, D, H, W), w (K, C/groups, KD, KH, KW),
out (N, K, OD, OH, OW).

At stride 1 the input is zero-padded once onto a grid (the output plus the kernel's reach) and
each plane is treated as one flat vector: kernel tap (kd, kh, kw) then reads the input at a
constant offset from the output, ``q + (kd*Hp + kh)*Wp + kw`` on the grid, so a whole plane is
one long contiguous loop that vectorizes, with no bounds to check. Outputs are computed at every
grid position and those past the true output, which mix neighbouring rows, are dropped at the
end. The forward pass (``_correlate_stacked``) lays every sample's grid end to end, channel by
channel, so one loop runs over many samples and small planes make loops as long as large ones,
and keeps four output channels' sums over six vectors of positions (three with AVX2) in
registers through every channel and tap (``_taps``, written with ``_simd``'s explicit vectors);
the input gradient is the same correlation of ``grad_out``, laid on the grid, with the flipped
kernel, and the weight gradient (``_grad_weight_stacked``) reads both grids stacked, with
``grad_out`` placed on its own and zeros at the dropped positions, four channels by six taps of
its sums in registers (``_tap_sums``).

A larger stride becomes stride 1 (``phases``): the input split into its stride phases, each
phase a channel of its own under its share of the kernel's taps, so every direction runs the
same loops; the input gradient comes back from the phases' gradient.

Arrays are indexed in full (``x[n, c, i, j, l]``) rather than through sub-array views: in a
parallel loop every view would atomically touch the parent's reference count, and threads
fighting over that one counter cost more than the arithmetic.

Depthwise convolutions (one input channel per group) run ``depthwise``'s loops instead, from
each entry point below: with no sum over channels to share a pass over the output, these loops
would do one tap per pass. A single input channel into several at stride 1 is the exception
for the weight gradient, and for a large forward pass (``_single_input_channel``).

The direct loops need no workspace; their entry points take the ``workspace`` argument only to
share im2col's signature.

The forward pass takes an optional epilogue, ``(slope, lo, hi)``: each output, once its sum and
bias are complete, becomes ``clip(v if v >= 0 else slope * v, lo, hi)`` while it is still in
cache. That one formula is the identity (1, -inf, inf), ReLU (1, 0, inf), ReLU6 (1, 0, 6) and
leaky ReLU (slope, -inf, inf), so an inference graph fuses a convolution's activation into it
instead of reading the whole output again. A residual input (the shortcut of a residual block,
added before the activation) goes through ``epilogue_pass``.
"""

import dataclasses
import functools
import itertools
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import depthwise
from ._simd import VECTOR_BYTES, lanes, vfma, vload, vload_first, vsplat, vstore, vsum
from ._window import IDENTITY, U, activate, parallel_kernel, scratch_array

@parallel_kernel(streaming=True, beside_blas=True)
def epilogue_pass(out3, b, residual3, slope, lo, hi):
    """out3[n, k, :] = activate(out3[n, k, :] + b[k] + residual3[n, k, :]), in one pass over out3
    (residual3 of size 0: none). It runs between GEMMs, as im2col's copy kernels do (see
    conv_im2col.py)."""
    N, K, P = out3.shape
    with_residual = residual3.size > 0
    for task in prange(N * K):
        n, k = task // K, task % K
        bk = b[k]
        if with_residual:
            for p in range(P):
                out3[n, k, U(p)] = activate(out3[n, k, U(p)] + bk + residual3[n, k, U(p)], slope, lo, hi)
        else:
            for p in range(P):
                out3[n, k, U(p)] = activate(out3[n, k, U(p)] + bk, slope, lo, hi)


def run_epilogue(out, b, epilogue, residual):
    """``epilogue_pass`` on 5-D ``out``, with b None meaning no bias and residual None none."""
    out3 = out.reshape(out.shape[0], out.shape[1], -1)
    b = np.zeros(out.shape[1], dtype=out.dtype) if b is None else b
    r3 = (np.empty((0, 0, 0), out.dtype) if residual is None
          else np.ascontiguousarray(residual).reshape(out3.shape))
    epilogue_pass(out3, b, r3, *(out.dtype.type(v) for v in epilogue))


#: Output channels one task of ``_correlate_stacked`` sums at once. With three vectors of
#: positions, ``_taps`` keeps twelve accumulators in registers; with the three input vectors and
#: a weight, sixteen: what AVX2 has.
QUAD = 4

#: Whether ``_taps`` takes six vectors of positions at a time before three: 24 accumulators,
#: six input vectors and a weight, 31 registers, where the vectors are AVX-512's (32 registers).
#: Measured, forward, medians of bursts in turns, 2-core AVX-512, three -> six: LeNet's c2 at
#: batch 64 0.338 -> 0.320 ms, (64, 16, 16x16) -> 20, 5x5 1.68 -> 1.55, audio 6.20 -> 6.07,
#: video 16.4 -> 15.7, (8, 64, 56x56) -> 64, 3x3 10.4 and 10.4.
SIX_VECTORS = VECTOR_BYTES == 64

#: Columns (input channel and tap pairs) ``_taps`` adds to the sums in one pass over a run's
#: positions. All of a layer's columns at once read too many input rows for L1 between one
#: vector of positions and the next: (1, 64, 56x56) -> 64, 3x3 reads 64 channels x 3 rows of a
#: 58-wide grid, and 9 KiB of weights and 9 KiB of column offsets besides, per 24 positions. In
#: chunks the sums are loaded and stored once a chunk, 12 vectors per 128 x 12 multiply-adds.
#: Measured, forward, GFLOP/s, all columns -> 128, medians of bursts in turns, 2-core AVX2
#: (Zen 3, 32 KiB L1): (1, 64, 56x56) -> 64 81-86 -> 79-93; (1, 512, 28x28) -> 512 56-69 ->
#: 79-120; (1, 96, 27x27) -> 256, 5x5 87-90 -> 94-97; (1, 256, 14x14) -> 256 65-72 -> 68-76;
#: video (1, 32, 16x56x56) -> 32 70-82 -> 91-107; (8, 512, 7x7) -> 512 44-49 -> 53-64;
#: (1, 64, 224x224) -> 64 70-75 -> 88-105. One thread: 29-49 -> 41-52.
COLUMN_CHUNK = 128


@parallel_kernel
def _correlate_stacked(xs, wf, columns, b, out, shifts, origin, block_len, grid, m, groups, slope, lo, hi):
    """out[n, k, i - origin] = activate(b[k] + the sum over columns j of wf[rows[k] + cols[j]] *
    xs[g*Cg + chans[j], n*P + i + shifts[taps[j]]]) for every grid position i (P of them per sample) that
    lands inside out, g being k's group: a stride-1 correlation on the samples' grids stacked
    end to end (``_stacked``), one flat loop over many samples at once.

    A task sums a quad of a group's output channels (the last one again where the group's count
    is not a multiple of four) over one run of grid positions with ``_taps`` into a staging buffer,
    then writes the outputs among them (the fused epilogue applied). The runs: with m = 1,
    blocks of ``block_len`` positions (whole grid rows, or parts of one long row); with m > 1
    samples interleaved on each grid row, sample innermost (``_stacked``; shifts in that layout's
    units), each output row's m * OW positions alone, so rows and columns that only the
    kernel's reach covers are skipped: on a grid that is mostly margin (a 5x5 kernel over 14x14
    leaves 10x10), the flat loop would spend most of its work on positions it drops. One task an
    output row keeps the threads' shares even: blocks of whole grid rows gave one thread the
    rows with outputs and the other the margin (LeNet's c2 at batch 64, sums in registers either
    way: 0.30 -> 0.25 ms).

    Each input element is loaded once per tap for four channels' multiply-adds, the sums in
    registers throughout. Measured against the loops this replaced (two channels' rows of sums
    in L1, loaded and stored once per six taps, blocks of whole grid rows), ms, medians of
    bursts taking turns in one process, 2-core AVX-512, PyTorch's whole convolution beside:
    forward, LeNet's c2 at batch 64 0.41 -> 0.26 (PyTorch 0.19); (64, 16, 16x16) -> 20, 5x5,
    pad 2 2.36 -> 1.94 (1.81); (8, 32, 32x32) -> 32, 3x3 1.44 -> 1.21 (0.79); (8, 64, 56x56)
    -> 64, 3x3 12.4 -> 10.9 (9.1); audio (1, 64, 16000) -> 64, k = 9 7.7 -> 6.4 (6.4); video
    (1, 32, 16x56x56) -> 32, 3x3x3 20.4 -> 17.5 (13.1); input gradient, audio 6.7 -> 5.8,
    (8, 64, 56x56) 13.4 -> 12.1, video 18.8 -> 17.4; LeNet's c1 at batch 64 (one channel into
    six, 25 taps) 0.28 -> 0.26 (0.40), its c2 at batch 1 0.032 -> 0.024 (0.046). The weights
    are read where they are, four rows at once: packing each quad's side by side on every call
    had cost the c2 at batch 1 0.010 ms.

    Tasks run run by run, every quad of a run in turn, so each thread's run of the input (C/g
    channels of it) is read from L2 by every quad: quad by quad, each would stream the whole
    input from memory once the input outgrew the L3 cache (audio (8, 64, 16000) -> 64, k = 9,
    forward 99 -> 65 ms, before registers). A grid row of one sample that reads into the next
    computes positions no output keeps."""
    L = xs.shape[1]
    rows, cols, chans, taps = columns
    CT = cols.shape[0]
    N, K, OD, OH, OW = out.shape
    Dp, Hp, Wp = grid
    T = shifts.shape[0]
    Kg = K // groups
    per_group = (Kg + QUAD - 1) // QUAD
    quads = groups * per_group
    group_len = xs.shape[0] // groups * L
    offs = np.empty(CT, dtype=np.int64)  # column j's reads, from the group's first channel
    for j in range(CT):
        offs[j] = chans[j] * L + shifts[taps[j]]
    q_end = L - shifts[T - 1]  # positions from here on would read past the last channel
    chunks = max(1, (CT + COLUMN_CHUNK // 2) // COLUMN_CHUNK)  # the columns in about COLUMN_CHUNKs
    chunk = (CT + chunks - 1) // chunks
    width = min(OW, Wp - origin[2])  # an output row past the grid's (output_padding) keeps its zeros
    row_len = Wp * m
    total = N // m * Dp * Hp * row_len
    runs = N // m * OD * OH if m > 1 else (total + block_len - 1) // block_len
    stride = _acc_stride(width * m if m > 1 else min(block_len, total))  # the staging for one run
    xf = xs.reshape(-1)
    for task in prange(runs * quads):
        run, j = task // quads, task % quads
        if m > 1:
            g, rem = run // (OD * OH), run % (OD * OH)
            r = (g * Dp + rem // OH + origin[0]) * Hp + rem % OH + origin[1]
            q0 = r * row_len + origin[2] * m
            q1 = q0 + width * m
        else:
            q0 = run * block_len
            q1 = min(total, q0 + block_len)
        group, k0 = j // per_group, (j // per_group) * Kg + (j % per_group) * QUAD
        nk = min(QUAD, (group + 1) * Kg - k0)
        ks = (k0, k0 + min(1, nk - 1), k0 + min(2, nk - 1), k0 + min(3, nk - 1))
        acc = np.empty((QUAD, stride), dtype=xs.dtype)
        n_sum = max(0, min(q1, q_end) - q0)
        for t0 in range(0, CT, chunk):
            if nk == 1:  # a channel alone (a group of one): ``_taps`` would sum it four times over
                _taps_one(xf, wf, rows[k0], cols, b[k0], offs, group * group_len + q0, acc.reshape(-1), n_sum, t0,
                          min(CT, t0 + chunk))
            else:
                _taps(xf, wf, rows, cols, b, ks, offs, group * group_len + q0, acc.reshape(-1), stride, n_sum, t0,
                      min(CT, t0 + chunk))
        for r in range(q0 // row_len, (q1 - 1) // row_len + 1):  # the grid rows the run touches
            n, rem = r // (Dp * Hp) * m, r % (Dp * Hp)
            od, oh = rem // Hp - origin[0], rem % Hp - origin[1]
            if 0 <= od < OD and 0 <= oh < OH:
                a = r * row_len - q0 + origin[2] * m  # negative where a block (m = 1) starts mid-row
                ow0, ow1 = max(0, -a), min(width, q1 - q0 - a)
                for s in range(m):  # sample n + s's row, read every m-th position
                    for c in range(nk):
                        for ow in range(ow0, ow1):
                            out[n + s, k0 + c, od, oh, U(ow)] = activate(acc[c, U(a + ow * m + s)], slope, lo, hi)


@njit(inline="always", cache=True)
def _acc_stride(n):
    """A row stride of at least n + 64 elements for the rows of sums (``_taps`` writes a last
    vector past n), 64 elements (256 bytes in float32) past a multiple of 1024: rows a
    multiple of 4 KiB apart alias in the core's store-to-load check, each load of one row waiting on the store to the other. Measured, one
    thread, 64 channels x 9 taps into two rows of 4096 sums (the loops before registers): 51
    GFLOP/s, against 87-97 with 4000 or 16000."""
    return n + 64 + (-n) % 1024


@njit(inline="always", cache=True)
def _taps(xf, wf, rows, cols, b, ks, offs, base, accf, stride, n, t0, t1):
    """accf[r*stride + q] = (b[k] if t0 == 0, else accf[r*stride + q] as it is) + the sum over
    the columns t0 <= t < t1 of wf[rows[k] + cols[t]] * xf[base + offs[t] + q], k = ks[r], for
    the QUAD channels of ``ks`` and positions 0 <= q < n (a chunk of the columns, see
    ``COLUMN_CHUNK``; t is read through ``U``: signed, it cost Numba's wraparound code on every
    offset and column read, 10-25% of the loops' time): six vectors of positions at a time (``SIX_VECTORS``), then three, their sums in
    registers through every tap (``_simd``; the two loops differ in their count of vectors
    alone), then one vector at a time. The last one ends at n where the sums start from the
    bias (over positions summed already, whose sums it computes again), else it reads its
    input masked past n and writes sums past n too (up to n + lanes - 2, within
    ``_acc_stride``'s margin), unused. Single positions there had cost LeNet's c2 at batch 1 a
    seventh of its time."""
    V = lanes(xf)
    r0, r1, r2, r3 = rows[ks[0]], rows[ks[1]], rows[ks[2]], rows[ks[3]]
    first = t0 == 0
    ba, bb, bc, bd = vsplat(b[ks[0]]), vsplat(b[ks[1]]), vsplat(b[ks[2]]), vsplat(b[ks[3]])
    q = 0
    while SIX_VECTORS and q + 6 * V <= n:
        a0, a1, a2, a3, a4, a5 = _start6(accf, q, V, ba, first)
        b0, b1, b2, b3, b4, b5 = _start6(accf, stride + q, V, bb, first)
        c0, c1, c2, c3, c4, c5 = _start6(accf, 2 * stride + q, V, bc, first)
        d0, d1, d2, d3, d4, d5 = _start6(accf, 3 * stride + q, V, bd, first)
        for t in range(t0, t1):
            p = base + offs[U(t)] + q
            x0, x1, x2, x3, x4, x5 = _load6(xf, p, V)
            wv = vsplat(wf[U(r0 + cols[U(t)])])
            a0, a1, a2, a3, a4, a5 = vfma(wv, x0, a0), vfma(wv, x1, a1), vfma(wv, x2, a2), vfma(wv, x3, a3), vfma(wv, x4, a4), vfma(wv, x5, a5)
            wv = vsplat(wf[U(r1 + cols[U(t)])])
            b0, b1, b2, b3, b4, b5 = vfma(wv, x0, b0), vfma(wv, x1, b1), vfma(wv, x2, b2), vfma(wv, x3, b3), vfma(wv, x4, b4), vfma(wv, x5, b5)
            wv = vsplat(wf[U(r2 + cols[U(t)])])
            c0, c1, c2, c3, c4, c5 = vfma(wv, x0, c0), vfma(wv, x1, c1), vfma(wv, x2, c2), vfma(wv, x3, c3), vfma(wv, x4, c4), vfma(wv, x5, c5)
            wv = vsplat(wf[U(r3 + cols[U(t)])])
            d0, d1, d2, d3, d4, d5 = vfma(wv, x0, d0), vfma(wv, x1, d1), vfma(wv, x2, d2), vfma(wv, x3, d3), vfma(wv, x4, d4), vfma(wv, x5, d5)
        for r, (s0, s1, s2, s3, s4, s5) in enumerate(((a0, a1, a2, a3, a4, a5), (b0, b1, b2, b3, b4, b5), (c0, c1, c2, c3, c4, c5), (d0, d1, d2, d3, d4, d5))):
            o = r * stride + q
            vstore(accf, o, s0)
            vstore(accf, o + V, s1)
            vstore(accf, o + 2 * V, s2)
            vstore(accf, o + 3 * V, s3)
            vstore(accf, o + 4 * V, s4)
            vstore(accf, o + 5 * V, s5)
        q += 6 * V
    while q + 3 * V <= n:
        a0, a1, a2 = _start(accf, q, ba, first), _start(accf, q + V, ba, first), _start(accf, q + 2 * V, ba, first)
        o = stride + q
        b0, b1, b2 = _start(accf, o, bb, first), _start(accf, o + V, bb, first), _start(accf, o + 2 * V, bb, first)
        o = 2 * stride + q
        c0, c1, c2 = _start(accf, o, bc, first), _start(accf, o + V, bc, first), _start(accf, o + 2 * V, bc, first)
        o = 3 * stride + q
        d0, d1, d2 = _start(accf, o, bd, first), _start(accf, o + V, bd, first), _start(accf, o + 2 * V, bd, first)
        for t in range(t0, t1):
            p = base + offs[U(t)] + q
            x0, x1, x2 = vload(xf, p), vload(xf, p + V), vload(xf, p + 2 * V)
            wv = vsplat(wf[U(r0 + cols[U(t)])])
            a0, a1, a2 = vfma(wv, x0, a0), vfma(wv, x1, a1), vfma(wv, x2, a2)
            wv = vsplat(wf[U(r1 + cols[U(t)])])
            b0, b1, b2 = vfma(wv, x0, b0), vfma(wv, x1, b1), vfma(wv, x2, b2)
            wv = vsplat(wf[U(r2 + cols[U(t)])])
            c0, c1, c2 = vfma(wv, x0, c0), vfma(wv, x1, c1), vfma(wv, x2, c2)
            wv = vsplat(wf[U(r3 + cols[U(t)])])
            d0, d1, d2 = vfma(wv, x0, d0), vfma(wv, x1, d1), vfma(wv, x2, d2)
        for r, (s0, s1, s2) in enumerate(((a0, a1, a2), (b0, b1, b2), (c0, c1, c2), (d0, d1, d2))):
            vstore(accf, r * stride + q, s0)
            vstore(accf, r * stride + q + V, s1)
            vstore(accf, r * stride + q + 2 * V, s2)
        q += 3 * V
    while q < n:
        if first and n >= V:  # the last vector ends at n, over sums it starts again from the bias
            q = min(q, n - V)
        m = n - q  # lanes in use: all, but in a last vector past n
        a0, b0 = _start(accf, q, ba, first), _start(accf, stride + q, bb, first)
        c0, d0 = _start(accf, 2 * stride + q, bc, first), _start(accf, 3 * stride + q, bd, first)
        for t in range(t0, t1):
            x0 = _load(xf, base + offs[U(t)] + q, m, m < V)
            a0 = vfma(vsplat(wf[U(r0 + cols[U(t)])]), x0, a0)
            b0 = vfma(vsplat(wf[U(r1 + cols[U(t)])]), x0, b0)
            c0 = vfma(vsplat(wf[U(r2 + cols[U(t)])]), x0, c0)
            d0 = vfma(vsplat(wf[U(r3 + cols[U(t)])]), x0, d0)
        vstore(accf, q, a0)
        vstore(accf, stride + q, b0)
        vstore(accf, 2 * stride + q, c0)
        vstore(accf, 3 * stride + q, d0)
        q += V


@njit(inline="always", cache=True)
def _taps_one(xf, wf, row, cols, bias, offs, base, accf, n, t0, t1):
    """``_taps`` for one channel, whose weights start at wf[row], into accf[q]: twelve vectors
    of positions at a time, one weight and one load of the input per multiply-add, then one
    vector at a time as ``_taps`` ends. Through ``_taps`` a channel alone (the input gradient of
    a single input channel, a group of one output channel) was summed four times over: the
    input gradient of (1, 1, 16000) -> 64, k = 9 took 1.10 ms against PyTorch's 1.0 for the
    whole backward."""
    V = lanes(xf)
    first = t0 == 0
    bv = vsplat(bias)
    q = 0
    while q + 12 * V <= n:
        a0, a1, a2, a3, a4, a5 = _start6(accf, q, V, bv, first)
        e0, e1, e2, e3, e4, e5 = _start6(accf, q + 6 * V, V, bv, first)
        for t in range(t0, t1):
            p = base + offs[U(t)] + q
            wv = vsplat(wf[U(row + cols[U(t)])])
            x0, x1, x2, x3, x4, x5 = _load6(xf, p, V)
            a0, a1, a2, a3, a4, a5 = vfma(wv, x0, a0), vfma(wv, x1, a1), vfma(wv, x2, a2), vfma(wv, x3, a3), vfma(wv, x4, a4), vfma(wv, x5, a5)
            x0, x1, x2, x3, x4, x5 = _load6(xf, p + 6 * V, V)
            e0, e1, e2, e3, e4, e5 = vfma(wv, x0, e0), vfma(wv, x1, e1), vfma(wv, x2, e2), vfma(wv, x3, e3), vfma(wv, x4, e4), vfma(wv, x5, e5)
        for i, s in enumerate((a0, a1, a2, a3, a4, a5, e0, e1, e2, e3, e4, e5)):
            vstore(accf, q + i * V, s)
        q += 12 * V
    while q < n:
        if first and n >= V:
            q = min(q, n - V)
        m = n - q
        a0 = _start(accf, q, bv, first)
        for t in range(t0, t1):
            a0 = vfma(vsplat(wf[U(row + cols[U(t)])]), _load(xf, base + offs[U(t)] + q, m, m < V), a0)
        vstore(accf, q, a0)
        q += V


@njit(inline="always", cache=True)
def _start(accf, i, bias, first):
    """The sums at accf[i] so far: the bias vector where none are yet."""
    return bias if first else vload(accf, i)


@njit(inline="always", cache=True)
def _start6(accf, i, V, bias, first):
    """``_start`` for six vectors from accf[i]."""
    return (_start(accf, i, bias, first), _start(accf, i + V, bias, first), _start(accf, i + 2 * V, bias, first),
            _start(accf, i + 3 * V, bias, first), _start(accf, i + 4 * V, bias, first), _start(accf, i + 5 * V, bias, first))


@njit(inline="always", cache=True)
def _load6(a, i, V):
    """The six vectors from a[i]."""
    return vload(a, i), vload(a, i + V), vload(a, i + 2 * V), vload(a, i + 3 * V), vload(a, i + 4 * V), vload(a, i + 5 * V)


@parallel_kernel
def _grad_weight_stacked(gs, xs, gw, shifts, block):
    """gw[k, c, t] = the sum over grid positions q of gs[k, q] * xs[g*Cg + c, q + shifts[t]], g
    being k's group: the weight gradient on the stacked grids (``_stacked``; grad_out at its grid
    positions, zeros at the others). Each task takes a quad of a group's output channels (the
    last one again where the group's count is not a multiple of four) and one input channel,
    and runs the positions in blocks of ``block`` that stay in L1 while every tap reads them,
    ``_tap_sums`` adding each block's products over a few taps at a time in registers.
    Measured against the loops this replaced (a pair of channels and three taps a pass, their
    sums vectorized by LLVM, each element loaded once for two or three multiply-adds), ms,
    medians of bursts in turns, 2-core AVX-512, PyTorch's weight gradient beside: LeNet's c2 at
    batch 1 0.034 -> 0.031 (PyTorch 0.067), at batch 64 0.51 -> 0.43 (0.35); its c1 at batch 64
    0.36 -> 0.33 (0.38); audio (1, 64, 16000) -> 64, k = 9, 8.5 -> 7.6 (6.9); video (1, 32,
    16x56x56) -> 32, 3x3x3, 19.8 -> 16.5 (14.4); (8, 32, 32x32) -> 32, 3x3 1.20 and 1.20 (0.89).
    Every lane of the last vector of positions masked, not only the last vector's: video 21.3.
    A pass of three taps or fewer (the last of a 3x3 kernel's two) runs the loop without the
    other three slots, which it had computed and dropped: audio 7.7 -> 6.1 ms (PyTorch 7.0),
    (8, 32, 32x32) 1.22 -> 1.01 (0.98), video 16.7 -> 15.5 (14.6)."""
    L, Lg = xs.shape[1], gs.shape[1]
    K, Cg, T = gw.shape
    groups = xs.shape[0] // Cg
    Kg = K // groups
    per_group = (Kg + QUAD - 1) // QUAD
    q_end = L - shifts[T - 1]
    gf, xf = gs.reshape(-1), xs.reshape(-1)
    for task in prange(groups * per_group * Cg):
        j, cl = task // Cg, task % Cg
        group = j // per_group
        k0 = group * Kg + (j % per_group) * QUAD
        nk = min(QUAD, (group + 1) * Kg - k0)
        ks = (k0, k0 + min(1, nk - 1), k0 + min(2, nk - 1), k0 + min(3, nk - 1))
        c = group * Cg + cl
        acc = np.zeros((QUAD, T), dtype=gw.dtype)
        for q0 in range(0, q_end, block):
            for t0 in range(0, T, SUM_TAPS):
                _tap_sums(gf, xf, L, Lg, ks, c, shifts, t0, q0, min(block, q_end - q0), acc)
        for r in range(nk):
            for t in range(T):
                gw[k0 + r, cl, t] = acc[r, t]


#: Positions a block of ``_grad_weight_stacked``, which every pass of taps reads again. Measured,
#: ms, 1024 / 2048 / 4096 / 8192 positions: audio (1, 64, 16000) -> 64, k = 9, 7.97 / 8.06 / 7.60
#: / 7.61; video (1, 32, 16x56x56) -> 32, 3x3x3, 17.4 / 17.0 / 16.5 / 16.1; LeNet's c2 at batch
#: 64 0.44 / 0.44 / 0.43 / 0.43: the rows stream from L2 as well as they sit in L1.
SUM_BLOCK = 4096


#: Taps ``_tap_sums`` adds in one pass: with four channels, 24 sums in AVX-512's 32 registers,
#: 12 in AVX2's sixteen. The loop loads a pass's input vectors (three at a time) first and then
#: each channel's grad_out vector for its three multiply-adds, so 12 sums + 3 inputs + 1
#: grad_out fill AVX2's registers exactly. Loaded the other way round (the four grad_out
#: vectors, then each input vector for four multiply-adds) they needed 17, and LLVM kept some
#: sums on the stack: weight gradient, GFLOP/s, medians of bursts in turns, 2-core AVX2 (Zen 3),
#: (1, 64, 56x56) -> 64, 3x3 50 -> 115; (1, 512, 28x28) -> 512 52 -> 123; audio (1, 64, 16000)
#: -> 64, k = 9 59 -> 128; video (1, 32, 16x56x56) -> 32 53 -> 133; LeNet's c2 at batch 64 23 -> 49.
SUM_TAPS = 6 if SIX_VECTORS else 3


@njit(inline="always", cache=True)
def _tap_sums(gf, xf, L, Lg, ks, c, shifts, t0, q0, n, acc):
    """acc[r, t] += the sum over q0 <= q < q0 + n of gs[ks[r], q] * xs[c, q + shifts[t]] for
    the taps t0 <= t < t0 + SUM_TAPS that exist, on the flat gf, xf (rows of Lg and L): the positions
    a vector at a time, 4 x SUM_TAPS vector sums in registers, each grad_out vector loaded once
    for SUM_TAPS multiply-adds and each input vector once for four; the last positions in a
    partial vector, zeros in the lanes past them."""
    V = lanes(xf)
    T = shifts.shape[0]
    k0, k1, k2, k3 = ks
    base = c * L
    # past the last tap, slots read the last tap again and their sums are dropped
    s0, s1, s2 = base + shifts[t0], base + shifts[min(t0 + 1, T - 1)], base + shifts[min(t0 + 2, T - 1)]
    s3, s4, s5 = base + shifts[min(t0 + 3, T - 1)], base + shifts[min(t0 + 4, T - 1)], base + shifts[min(t0 + 5, T - 1)]
    zero = vsplat(acc.dtype.type(0))
    a0, a1, a2, a3, a4, a5 = zero, zero, zero, zero, zero, zero
    b0, b1, b2, b3, b4, b5 = zero, zero, zero, zero, zero, zero
    c0, c1, c2, c3, c4, c5 = zero, zero, zero, zero, zero, zero
    d0, d1, d2, d3, d4, d5 = zero, zero, zero, zero, zero, zero
    whole = q0 + n - n % V
    six = t0 + 3 < T  # else the pass has three taps or fewer: the loop without the other three
    for part in range(2):  # the whole vectors with plain loads, then the last positions masked
        partial = part == 1
        for q in range(whole if partial else q0, q0 + n if partial else whole, V):
            m = q0 + n - q  # with ``partial``, the lanes in use
            x0, x1, x2 = _load(xf, s0 + q, m, partial), _load(xf, s1 + q, m, partial), _load(xf, s2 + q, m, partial)
            if SUM_TAPS == 6 and six:  # SUM_TAPS: taps 3-5 compiled only for AVX-512
                x3, x4, x5 = _load(xf, s3 + q, m, partial), _load(xf, s4 + q, m, partial), _load(xf, s5 + q, m, partial)
                a3, a4, a5 = _fma3(_load(gf, k0 * Lg + q, m, partial), x3, x4, x5, a3, a4, a5)
                b3, b4, b5 = _fma3(_load(gf, k1 * Lg + q, m, partial), x3, x4, x5, b3, b4, b5)
                c3, c4, c5 = _fma3(_load(gf, k2 * Lg + q, m, partial), x3, x4, x5, c3, c4, c5)
                d3, d4, d5 = _fma3(_load(gf, k3 * Lg + q, m, partial), x3, x4, x5, d3, d4, d5)
            a0, a1, a2 = _fma3(_load(gf, k0 * Lg + q, m, partial), x0, x1, x2, a0, a1, a2)
            b0, b1, b2 = _fma3(_load(gf, k1 * Lg + q, m, partial), x0, x1, x2, b0, b1, b2)
            c0, c1, c2 = _fma3(_load(gf, k2 * Lg + q, m, partial), x0, x1, x2, c0, c1, c2)
            d0, d1, d2 = _fma3(_load(gf, k3 * Lg + q, m, partial), x0, x1, x2, d0, d1, d2)
    _add_sums(acc, 0, t0, T, a0, a1, a2, a3, a4, a5)
    _add_sums(acc, 1, t0, T, b0, b1, b2, b3, b4, b5)
    _add_sums(acc, 2, t0, T, c0, c1, c2, c3, c4, c5)
    _add_sums(acc, 3, t0, T, d0, d1, d2, d3, d4, d5)


@njit(inline="always", cache=True)
def _fma3(g, x0, x1, x2, a0, a1, a2):
    """(a0, a1, a2) plus one channel's grad_out vector g times each tap's input vector."""
    return vfma(g, x0, a0), vfma(g, x1, a1), vfma(g, x2, a2)


@njit(inline="always", cache=True)
def _load(a, i, m, partial):
    """The vector at a[i], or with ``partial`` its first m lanes (``vload_first``)."""
    return vload_first(a, i, m) if partial else vload(a, i)


@njit(inline="always", cache=True)
def _add_sums(acc, r, t0, T, v0, v1, v2, v3, v4, v5):
    """acc[r, t0 + i] += the lanes of vi summed, for each of the SUM_TAPS taps from t0 that exist."""
    acc[r, t0] += vsum(v0)
    for i, v in enumerate((v1, v2, v3, v4, v5)):
        if i + 1 < SUM_TAPS and t0 + i + 1 < T:
            acc[r, t0 + i + 1] += vsum(v)


def _grid_shape(geom):
    """The padded grid of a stride-1 convolution: the output plus the dilated kernel's reach."""
    return tuple(o + d * (k - 1) for o, d, k in zip(geom.out_size, geom.dilation, geom.kernel))


def _window(size, offset, grid):
    """Slices (on the array, on the grid) of an array of spatial ``size`` placed at ``offset``
    on ``grid``, clipped to the grid (a transposed convolution's output_padding can reach past it)."""
    inner = tuple(slice(0, min(n, g - o)) for n, o, g in zip(size, offset, grid))
    outer = tuple(slice(o, o + s.stop) for o, s in zip(offset, inner))
    return inner, outer


def place_on_grid(x, geom, xp):
    """xp (x's batch and channels, on the grid) = x zero-padded onto the grid."""
    inner, outer = _window(x.shape[2:], geom.padding, xp.shape[2:])
    xp.fill(0)
    xp[(..., *outer)] = x[(..., *inner)]
    return xp


#: Grid positions per task of ``_correlate_stacked`` with m = 1, rounded to whole grid rows. Chosen
#: when two blocks of sums, 32 KiB in float32, had to stay in L1 while every tap was added to them
#: (LeNet's c2 at batch 64, 1024 / 2048 / 4096 positions: 0.60-1.11 / 0.57-0.61 / 0.60-0.63 ms);
#: the sums are now in registers, and a block is the staging of a task's outputs and the input it
#: reads. It also bounds how many samples interleave (``samples_interleaved``).
STACK_BLOCK = 4096


def _stacked(a, geom, origin, m=1, name="stacked"):
    """(channels, N * P + lead) zeros with a[n, c] placed on sample n's grid at ``origin``, after
    ``lead`` = the largest tap shift of zeros when ``origin`` is None (a[n, c] at the grid's
    output positions: ``grad_input``), none otherwise: channel-major, every sample's grid end to
    end, as ``_correlate_stacked`` reads them. With m > 1, each group of m samples shares one
    grid, m times as wide: its samples interleaved along every row, sample innermost.

    Written into the per-thread scratch ``name`` (``scratch_array``), every element once
    (``_place``): a fresh zeroed buffer the size of the input cost a page fault per 4 KiB on
    every call ((1, 64, 16000) -> 64, k = 9, forward: 10.1-11.7 ms, of which the loops 6.6),
    and zeroing it before the copy another pass (0.45 ms there)."""
    grid = _grid_shape(geom)
    N, C = a.shape[:2]
    lead = 0 if origin is not None else int(_tap_shifts(grid, geom, m)[-1])
    xs = scratch_array(name, (C, lead + N * math.prod(grid)), a.dtype)
    xs[:, :lead] = 0
    inner, outer = _window(a.shape[2:], origin or (0, 0, 0), grid)
    _place(a, xs[:, lead:].reshape(C, N // m, grid[0], grid[1], grid[2] * m),
           tuple(o.start for o in outer), tuple(i.stop for i in inner))
    return xs


@parallel_kernel(streaming=True)
def _place(a, xs, origin, size):
    """xs[c, g, d + origin[0], h + origin[1], (l + origin[2]) * m + s] = a[g*m + s, c, d, h, l]
    for (d, h, l) within ``size``, and zeros at every other element of xs: groups of m samples
    interleaved on their grid's rows (m = 1: each sample's grid as it is), each element written
    once. With m > 1 the strided writes are the inner loop: the faster side, reads running along
    a's rows (NumPy's copy of this transpose took 4x the kernel's time on (8, 64, 56x56))."""
    N, C = a.shape[:2]
    G, Dg, Hg, Wm = xs.shape[1:]
    m = N // G
    D, H, W = size
    lo, hi = origin[2] * m, (origin[2] + W) * m
    for task in prange(C * G * Dg):
        c, g, i = task // (G * Dg), (task // Dg) % G, task % Dg
        d = i - origin[0]
        for j in range(Hg):
            h = j - origin[1]
            if d < 0 or d >= D or h < 0 or h >= H:
                for e in range(Wm):
                    xs[c, g, i, j, U(e)] = 0
                continue
            for e in range(lo):
                xs[c, g, i, j, U(e)] = 0
            if m == 1:
                for l in range(W):
                    xs[c, g, i, j, U(lo + l)] = a[g, c, d, h, U(l)]
            else:
                for s in range(m):
                    for l in range(W):
                        xs[c, g, i, j, U(lo + l * m + s)] = a[g * m + s, c, d, h, U(l)]
            for e in range(hi, Wm):
                xs[c, g, i, j, U(e)] = 0


def _tap_shifts(grid, geom, m=1):
    shifts = tap_shifts(grid, geom.kernel, geom.dilation)
    return shifts if m == 1 else shifts * m


@functools.lru_cache(maxsize=256)
def tap_shifts(grid, kernel, dilation):
    """The offset of every kernel tap on the flat grid, in the weight's tap order (read-only:
    shared by every call of the geometry)."""
    kd, kh, kw = np.indices(kernel).reshape(3, -1) * np.array(dilation).reshape(3, 1)
    shifts = (kd * grid[1] + kh) * grid[2] + kw
    shifts.flags.writeable = False
    return shifts


class Phases(NamedTuple):
    """A strided convolution as a stride-1 one over its input's stride phases (``phases``)."""

    geom: object  # the stride-1 convolution's geometry
    count: int  # phases per input channel
    blocks: tuple  # per phase, per dimension: (first, past-last position on the phase, first input index, stride)
    taps: tuple  # per tap of the kernel, flat: its phase's index and its offsets on the phase's grid (4 arrays)


@functools.lru_cache(maxsize=256)
def phases(geom):
    """A convolution at stride s as one at stride 1: along each dimension, input position
    u*s + r (r < s, padding counted) is phase r's position u, and tap t, which reads input
    position o*s + t*d for output o, reads phase (t*d) % s at o + (t*d) // s. Each phase some
    tap reads becomes an input channel of its own (channel c's phases consecutive, so groups
    keep their channels together), the kernel of each shrinks to ((k - 1)*d) // s + 1 taps,
    zero where no tap lands, and dilation goes: 7x7 at stride 2 is four phases a channel under
    4x4 taps, 3x3 at stride 2 four under 2x2, AlexNet's 11x11 at stride 4 sixteen under 3x3,
    1x1 at stride 2 one under 1x1 (the input subsampled). The stride-1 loops then run
    ``_correlate_stacked``'s register-blocked sums where the strided loops they replaced ran
    an output row at a time, with 16/9 of the multiply-adds for a 3x3 at stride 2, 64/49 for a
    7x7, 144/121 for AlexNet's. Measured, ms, 2-core AVX-512, strided loops -> phases (im2col):
    (8, 64, 56x56) -> 128, 3x3/2, forward 98.7 -> 6.6 (5.4), weight gradient 241 -> 8.6 (5.6);
    AlexNet's (8, 3, 227x227) -> 96, 11x11/4, forward 126 -> 7.2 (11.2); ResNet's stem (1, 3,
    224x224) -> 64, 7x7/2, 1.02 (1.57)."""
    dims = []
    for n, k, s, d, p, o in zip(geom.in_size, geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size):
        residues = sorted({t * d % s for t in range(k)})
        reach = (k - 1) * d // s + 1
        length = o + reach - 1
        spans = []
        for r in residues:  # phase positions u with an input at u*s + r - p, and that input
            u0 = max(0, -((r - p) // s))
            u1 = max(u0, min(length, (n - 1 + p - r) // s + 1))
            spans.append((u0, u1, u0 * s + r - p, s))
        dims.append((residues, reach, length, spans))
    blocks = tuple(itertools.product(*(spans for _, _, _, spans in dims)))
    taps = np.array([[dims[i][0].index(t * d % s) for i, (t, d, s) in enumerate(zip(tap, geom.dilation, geom.stride))]
                     + [t * d // s for t, d, s in zip(tap, geom.dilation, geom.stride)]
                     for tap in itertools.product(*map(range, geom.kernel))], dtype=np.int64)
    shape = tuple(len(residues) for residues, *_ in dims)
    phase = np.ravel_multi_index(tuple(taps[:, :3].T), shape)
    count = math.prod(shape)
    stride1 = dataclasses.replace(
        geom, in_channels=geom.in_channels * count, in_size=tuple(length for *_, length, _ in dims),
        kernel=tuple(reach for _, reach, _, _ in dims), stride=(1, 1, 1), dilation=(1, 1, 1), padding=(0, 0, 0))
    return Phases(stride1, count, blocks, (phase, taps[:, 3], taps[:, 4], taps[:, 5]))


def _phase_slices(block):
    """(slices of a phase's grid, slices of the input) for one phase's ``blocks`` entry."""
    on_phase = tuple(slice(u0, u1) for u0, u1, _, _ in block)
    on_input = tuple(slice(a, a + s * (u1 - u0 - 1) + 1 if u1 > u0 else a, s) for u0, u1, a, s in block)
    return on_phase, on_input


def to_phases(x, plan):
    """x (N, C, D, H, W) split into ``plan``'s phases: (N, C * count, *plan.geom.in_size), zeros
    where a phase's grid lies in the padding or past the input."""
    N, C = x.shape[:2]
    xp = np.zeros((N, C, plan.count, *plan.geom.in_size), x.dtype)
    for f, block in enumerate(plan.blocks):
        on_phase, on_input = _phase_slices(block)
        xp[(slice(None), slice(None), f) + on_phase] = x[(slice(None), slice(None)) + on_input]
    return xp.reshape(N, C * plan.count, *plan.geom.in_size)


def from_phases(gp, gx, plan):
    """gx = the gradient of ``to_phases``'s input from its output's gradient gp: each input
    position lies on one phase or on none (read by no tap: zero)."""
    N, C = gx.shape[:2]
    g6 = gp.reshape(N, C, plan.count, *plan.geom.in_size)
    gx[...] = 0
    for f, block in enumerate(plan.blocks):
        on_phase, on_input = _phase_slices(block)
        gx[(slice(None), slice(None)) + on_input] = g6[(slice(None), slice(None), f) + on_phase]


def phase_weight(w, plan):
    """w (K, Cg, KD, KH, KW) as the stride-1 convolution's kernel (K, Cg * count, *plan's)."""
    K, Cg = w.shape[:2]
    wp = np.zeros((K, Cg, plan.count, *plan.geom.kernel), w.dtype)
    wp[(slice(None), slice(None)) + plan.taps] = w.reshape(K, Cg, -1)
    return wp.reshape(K, Cg * plan.count, *plan.geom.kernel)


@functools.lru_cache(maxsize=256)
def phase_columns(geom):
    """``_correlate_stacked``'s columns (``weight_index``) for the forward pass on ``phases``:
    w read where it is, and each of its taps a column on the phase and at the offset it lands
    on, so the loops run only the taps the kernel has, none of the zeros ``phase_weight`` pads
    each phase's share with (ResNet's 7x7/2 stem: 49 taps a channel, not 4 x 16)."""
    plan = phases(geom)
    K, Cg, T = geom.out_channels, geom.in_channels // geom.groups, math.prod(geom.kernel)
    rows, cols, c, t = weight_index(K, Cg, T, geom.groups, False)
    phase, od, oh, ow = plan.taps
    return rows, cols, c * plan.count + phase[t], np.ravel_multi_index((od, oh, ow), plan.geom.kernel)[t]


def _correlate(xs, w, b, out, geom, origin, slope, lo, hi, m=1, columns=None):
    """``_correlate_stacked`` of the stacked xs (m samples interleaved) with w over this
    geometry's grid, reading w by ``columns`` (``weight_index``; None: w's own layout)."""
    grid = _grid_shape(geom)
    if columns is None:
        columns = weight_index(w.shape[0], w.shape[1], math.prod(geom.kernel), geom.groups, False)
    _correlate_stacked(xs, w.reshape(-1), columns, b, out, _tap_shifts(grid, geom, m), origin,
                       block_length(grid[2] * m, m), grid, m, geom.groups, slope, lo, hi)


@functools.lru_cache(maxsize=256)
def weight_index(K, Cg, T, groups, flip):
    """(rows, cols, chans, taps): how ``_correlate_stacked`` reads its kernel in a C-contiguous
    weight w (K, Cg, T taps), flattened, and its input: row r's weight in column j at
    ``rows[r] + cols[j]``, multiplying the input of channel ``chans[j]`` (in r's group) at tap
    ``taps[j]``. Unflipped, rows are w's output channels and columns its (input channel, tap)
    pairs. Flipped (the input gradient), rows are the input channels and columns a group's
    (output channel, tap) pairs, every tap reversed: the kernel of ``flipped`` read in place.
    Copying it had cost more than the loops on large kernels: (1, 512, 14x14) -> 512, 3x3,
    input gradient 8.7 ms against a forward pass of 3.2; ``flipped`` alone took 1.6-3.2 ms."""
    c, t = np.divmod(np.arange((K // groups if flip else Cg) * T, dtype=np.int64), T)
    if not flip:
        return np.arange(K, dtype=np.int64) * (Cg * T), c * T + t, c, t
    Kg = K // groups
    g, r = np.divmod(np.arange(groups * Cg, dtype=np.int64), Cg)
    return g * (Kg * Cg * T) + r * T + (T - 1), c * (Cg * T) - t, c, t


def block_length(row_len, m=1):
    """Grid positions per task of ``_correlate_stacked``: whole grid rows up to ``STACK_BLOCK``,
    or with rows longer than that and m = 1 (a long 1-D signal), each row in equal parts under
    it. Whole rows of 16008 (audio, (1, 64, 16000) -> 64, k = 9) kept 128 KiB of sums out of L1
    and left 32 tasks for all threads; in parts, forward 6.76 -> 6.63 ms at batch 1 and 55.8 ->
    55.0 at batch 8 (medians of 7 alternating rounds, 2 cores: the sums streamed well from L2;
    the tasks are for machines with more cores)."""
    if row_len <= STACK_BLOCK or m > 1:
        return max(1, STACK_BLOCK // row_len) * row_len
    return -(-row_len // -(-row_len // STACK_BLOCK))


#: The share of the grid's positions that are outputs below which the stride-1 forward pass
#: interleaves a batch's samples (``samples_interleaved``), where the flat loops over whole
#: grids would spend over a quarter of their work on positions they drop. Measured, forward ms,
#: stacked -> interleaved (median of 40 alternating calls, 2-core AVX-512): LeNet's c2 at batch
#: 64 (fill 0.51) 0.84 -> 0.60; (64, 16, 16x16) -> 20, 5x5, pad 2 (0.64) 3.01 -> 2.14; above
#: it, where placing the samples interleaved costs more than the margin: (64, 3, 32x32) -> 16,
#: 5x5, pad 2 (0.79) 2.35 -> 2.68, (8, 32, 32x32) -> 32, 3x3, pad 1 (0.89) 1.69 -> 1.98.
INTERLEAVE_BELOW_FILL = 0.75

#: The fewest positions an output row of the interleaved samples must have: the loops run over
#: one row at a time, and shorter loops cost more than the margin they skip. Measured, forward
#: ms, stacked -> interleaved: LeNet's c2 at batch 2 (rows of 20) 0.08 -> 0.17, at batch 8 (80)
#: 0.11 -> 0.14; (32, 8, 12x12) -> 16, 3x3 (320) 0.39 -> 0.33.
INTERLEAVE_MIN_ROW = 256


def samples_interleaved(geom):
    """How many samples the stride-1 forward pass interleaves on each grid row
    (``_correlate_stacked``): 1 (each sample's grid whole, end to end) unless under
    ``INTERLEAVE_BELOW_FILL`` of the grid is output, and then the largest divisor of the batch
    whose rows stay within ``STACK_BLOCK`` positions."""
    grid = _grid_shape(geom)
    if math.prod(geom.out_size) >= INTERLEAVE_BELOW_FILL * math.prod(grid):
        return 1
    m = largest_divisor(geom.batch, STACK_BLOCK // grid[2])
    return m if m * geom.out_size[2] >= INTERLEAVE_MIN_ROW else 1


def largest_divisor(n, most):
    """The largest divisor of n that is at most ``most`` (at least 1)."""
    return next(m for m in range(max(1, min(n, most)), 0, -1) if n % m == 0)


def flipped(w, geom):
    """The kernel of a stride-1 convolution's input gradient as a correlation: every tap
    reversed, input and output channels swapped per group."""
    G, K, Cg = geom.groups, w.shape[0], w.shape[1]
    w6 = w.reshape(G, K // G, Cg, *geom.kernel)[..., ::-1, ::-1, ::-1]
    return np.ascontiguousarray(w6.transpose(0, 2, 1, 3, 4, 5)).reshape(G * Cg, K // G, *geom.kernel)


def _single_input_channel(geom):
    """A convolution of a single input channel into several at stride 1 (a first layer on
    grayscale images or mono audio): its weight gradient runs the stacked grids' loops, not the
    depthwise ones, and so do its forward pass and its input gradient when they are large
    (``_stacks_single_channel``).
    The depthwise loops fill their plane buffer again for every output channel and pad the
    kernel to whole 3x3 blocks (5x5 to 6x6, 1x9 to 3x9), while the stacked loops keep their
    blocks of both grids in L1 for every tap. Measured, weight gradient, whole calls, depthwise
    -> the per-sample flat loops that preceded the stacked ones (which are faster still): LeNet's
    c1 (1 -> 6, 5x5, 32x32) at batch 64 1.66 -> 0.87 ms, at batch 16 0.44 -> 0.31; (8, 1,
    16000) -> 16, k = 9, 3.6 -> 2.3. Every shape with more input channels per group stays with
    the depthwise loops (3x3 and 5x5, multiplier 1 or 4: the depthwise weight gradient 1.0-4.8x
    faster)."""
    return geom.in_channels == 1 < geom.out_channels and geom.stride == (1, 1, 1)


#: The work (input elements x output channels) from which a single input channel into several
#: runs its forward pass on the stacked grids (``_correlate_stacked``) rather than the depthwise
#: loops, which run on one thread below half a million elements and win on small calls.
#: Measured, forward, depthwise -> stacked: LeNet's c1 at batch 64 (393K) 0.98 -> 0.49 ms,
#: (8, 1, 16000) -> 16, k = 9 (2M) 1.64 -> 1.11, (1, 1, 16000) -> 64 (1M) 0.77 -> 0.55; the
#: other way, c1 at batch 16 (98K) 0.21 -> 0.25 and at batch 8 0.09 -> 0.18, (8, 1, 28x28) ->
#: 32, 3x3 (200K) 0.18 -> 0.41. The input gradient, whose one channel the stacked loops sum
#: alone (``_taps_one``), 2-core AVX2: c1 at batch 64 0.54 -> 0.37, (8, 1, 16000) -> 16 1.21 ->
#: 1.03, (1, 1, 16000) -> 64 1.08 -> 0.82; the other way, c1 at batch 16 0.21 -> 0.20, (8, 1,
#: 28x28) -> 32 0.12 -> 0.19, (1, 1, 28x28) -> 32 0.03 -> 0.06.
SINGLE_CHANNEL_STACKED_WORK = 1 << 18


def _stacks_single_channel(geom):
    return (_single_input_channel(geom)
            and geom.batch * math.prod(geom.in_size) * geom.out_channels >= SINGLE_CHANNEL_STACKED_WORK)


def forward(x, w, b, out, geom, workspace=None, epilogue=IDENTITY, residual=None):
    """out = epilogue(conv(x, w) + b + residual) (b, residual may be None), written over ``out``.

    A residual (an array of out's shape) is added after the loops, in one pass with the
    epilogue: the loops would have to read it inside their innermost accumulation otherwise."""
    if residual is not None:
        forward(x, w, None, out, geom)
        run_epilogue(out, b, epilogue, residual)
        return
    slope, lo, hi = (x.dtype.type(v) for v in epilogue)
    if depthwise.is_depthwise(geom) and not _stacks_single_channel(geom):
        depthwise.forward(x, w, b, out, geom, slope, lo, hi)
        return
    if b is None:
        b = np.zeros(w.shape[0], dtype=w.dtype)
    if geom.stride == (1, 1, 1):
        m = samples_interleaved(geom)
        _correlate(_stacked(x, geom, geom.padding, m), w, b, out, geom, (0, 0, 0), slope, lo, hi, m)
    else:
        plan = phases(geom)
        m = samples_interleaved(plan.geom)
        _correlate(_stacked(to_phases(x, plan), plan.geom, (0, 0, 0), m), w, b, out, plan.geom, (0, 0, 0),
                   slope, lo, hi, m, phase_columns(geom))


def grad_input(go, w, gx, geom, workspace=None):
    """gx = the input gradient of conv for output gradient ``go``, written over ``gx``."""
    if depthwise.is_depthwise(geom) and not _stacks_single_channel(geom):
        depthwise.grad_input(go, w, gx, geom)
    elif geom.stride == (1, 1, 1):
        # the correlation of grad_out, laid on the grid after zeros as far as the kernel
        # reaches, with the flipped kernel: at every grid position, the sum of what each tap
        # took from it; input positions come out at the padding's offset on the grid
        if any(n + p > g for n, p, g in zip(gx.shape[2:], geom.padding, _grid_shape(geom))):
            gx[...] = 0  # a transposed convolution's output_padding: outputs no input reaches
        _correlate(_stacked(go, geom, None), w, np.zeros(gx.shape[1], gx.dtype), gx, geom, geom.padding,
                   *(gx.dtype.type(v) for v in IDENTITY), columns=weight_index(*w.shape[:2], math.prod(geom.kernel),
                                                                               geom.groups, True))
    else:
        plan = phases(geom)
        gp = np.empty((gx.shape[0], plan.geom.in_channels, *plan.geom.in_size), gx.dtype)
        grad_input(go, phase_weight(w, plan), gp, plan.geom)
        from_phases(gp, gx, plan)


def _pointwise(geom):
    """A 1x1x1 kernel without padding: the grid is the input itself."""
    return math.prod(geom.kernel) == 1 and geom.padding == (0, 0, 0)


def grad_weight(go, x, gw, geom, workspace=None):
    """gw = the weight gradient of conv for output gradient ``go``, written over ``gw``."""
    if depthwise.is_depthwise(geom) and not _single_input_channel(geom):
        depthwise.grad_weight(go, x, gw, geom)
    elif geom.stride == (1, 1, 1) and _pointwise(geom):
        # gw[k, c] = the sum over positions of go[k, q] * x[c, q]: each group's input channels
        # become the taps of one row (tap c reading c rows on), so every task sums a quad of
        # output channels against three input channels at once; as one channel of one tap,
        # four sums a vector took 2-3x as long
        xs, gs = _stacked(x, geom, (0, 0, 0)), _stacked(go, geom, (0, 0, 0), name="stacked_grad")
        Cg, positions = gw.shape[1], xs.shape[1]
        _grad_weight_stacked(gs, xs.reshape(geom.groups, Cg * positions), gw.reshape(gw.shape[0], 1, Cg),
                             np.arange(Cg, dtype=np.int64) * positions, SUM_BLOCK)
    elif geom.stride == (1, 1, 1):
        _grad_weight_stacked(_stacked(go, geom, (0, 0, 0), name="stacked_grad"), _stacked(x, geom, geom.padding),
                             gw.reshape(*gw.shape[:2], -1), _tap_shifts(_grid_shape(geom), geom), SUM_BLOCK)
    else:
        plan = phases(geom)
        gp = np.empty((gw.shape[0], plan.geom.in_channels // geom.groups, *plan.geom.kernel), gw.dtype)
        grad_weight(go, to_phases(x, plan), gp, plan.geom)
        gw[...] = gp.reshape(*gw.shape[:2], plan.count, -1)[(slice(None), slice(None), plan.taps[0],
                                                             np.ravel_multi_index(plan.taps[1:], plan.geom.kernel))].reshape(gw.shape)
