"""im2col convolution: unfold input windows into column matrices, then BLAS GEMMs.

Column layout, per chunk of ``n`` samples: ``cols[j, c * KD*KH*KW + tap, p]`` for sample j of
the chunk, input channel c, kernel tap and output position p (P = OD*OH*OW). The rows of group g
are contiguous, so ``cols.reshape(n, G, C/G * taps, P)`` lines up with the output's own layout
``(n, G, K/G, P)``: one batched matmul writes the output in place, and the backward reads
``grad_out`` as it is, with no transposing copies. The GEMM is NumPy's matmul (the BLAS NumPy
was built with, through ``gemm.matmul``), which runs near the machine's peak.

Where output rows are short (``_interleaves``), a chunk's samples are interleaved instead, sample
innermost: ``cols[c * taps + tap, p, j]``, unfolded from a copy of the input laid out the same
way, so each copied row holds every sample's and the chunk is one GEMM; ``_deinterleave`` puts
the result back in the output's layout, with the bias and epilogue on the same pass.

The batch is processed in chunks so the column buffer stays under ``workspace`` bytes. A
pointwise convolution (1x1x1 kernel, stride 1, no padding, equal sizes) needs no columns at all: the input
already is the column matrix.

The copy kernels run between GEMMs. NumPy's BLAS keeps its worker threads spinning for a while
after each GEMM unless NumPy loaded it with a short idle wait (``_threads.quiet_blas_env``) or
``gemm.matmul`` keeps them asleep, and a
parallel Numba kernel between two GEMMs fights spinning threads for the cores (measured on 2
cores: 2-6 ms instead of 5 us for a small kernel right after a GEMM), while a serial one runs
beside them undisturbed. So they are parallel kernels that run serial while BLAS spins
(``parallel_kernel(beside_blas=True)``).
"""

import dataclasses
import math

import numpy as np
from numba import prange

from . import conv_direct, gemm
from ._window import (
    IDENTITY, U, activate, is_identity, parallel_kernel, scratch_array, tap_offsets, valid_outputs,
)
from .conv_direct import run_epilogue


@parallel_kernel(streaming=True, beside_blas=True)
def _im2col(xt, cols, kernel, stride, dilation, padding, out_size):
    """cols[a, c*taps + t, od, oh, ow*m + s] = what tap t of channel c sees of sample s of group
    a (0 in padding), from xt[a, c, i, j, l*m + s]: groups of m samples interleaved, sample
    innermost (``_interleave``; m = 1 is x as it is)."""
    A, C, D, H = xt.shape[:4]
    OD, OH, OW = out_size
    m = cols.shape[4] // OW
    W = xt.shape[4] // m
    sd, sh, sw = stride
    taps = cols.shape[1] // C
    R = cols.shape[1]
    for task in prange(A * R):  # one column row per task
        a, r = task // R, task % R
        c = r // taps
        offd, offh, offw = tap_offsets(r % taps, kernel, dilation, padding)
        ow0, ow1 = valid_outputs(offw, sw, W, OW)
        for od in range(OD):
            i = od * sd + offd
            for oh in range(OH):
                jj = oh * sh + offh
                if i < 0 or i >= D or jj < 0 or jj >= H:  # the whole row reads padding
                    lo = hi = OW
                else:
                    lo, hi = ow0, ow1
                for e in range(lo * m):  # every element is written once: zero, copy, zero
                    cols[a, r, od, oh, U(e)] = 0
                if sw == 1:  # unit stride: one contiguous copy of the row's m samples, vectorized
                    for e in range(lo * m, hi * m):
                        cols[a, r, od, oh, U(e)] = xt[a, c, i, jj, U(e + offw * m)]
                elif m == 1:
                    for ow in range(lo, hi):
                        cols[a, r, od, oh, U(ow)] = xt[a, c, i, jj, U(ow * sw + offw)]
                else:
                    for ow in range(lo, hi):
                        src = (ow * sw + offw) * m
                        for e in range(m):
                            cols[a, r, od, oh, U(ow * m + e)] = xt[a, c, i, jj, U(src + e)]
                for e in range(hi * m, OW * m):
                    cols[a, r, od, oh, U(e)] = 0


@parallel_kernel(streaming=True, beside_blas=True)
def _col2im(cols, gxt, kernel, stride, dilation, padding, out_size):
    """gxt = the sum of every column entry back onto the input element it was read from
    (``_im2col``'s adjoint, in its layouts). One input channel per task: its rows are the only
    ones that add into it."""
    A, C, D, H = gxt.shape[:4]
    OD, OH, OW = out_size
    m = cols.shape[4] // OW
    W = gxt.shape[4] // m
    sd, sh, sw = stride
    taps = cols.shape[1] // C
    for task in prange(A * C):
        a, c = task // C, task % C
        gxt[a, c] = 0
        for r in range(c * taps, (c + 1) * taps):
            offd, offh, offw = tap_offsets(r % taps, kernel, dilation, padding)
            od0, od1 = valid_outputs(offd, sd, D, OD)
            oh0, oh1 = valid_outputs(offh, sh, H, OH)
            ow0, ow1 = valid_outputs(offw, sw, W, OW)
            for od in range(od0, od1):
                for oh in range(oh0, oh1):
                    i, jj = od * sd + offd, oh * sh + offh
                    if sw == 1:
                        for e in range(ow0 * m, ow1 * m):
                            gxt[a, c, i, jj, U(e + offw * m)] += cols[a, r, od, oh, U(e)]
                    elif m == 1:
                        for ow in range(ow0, ow1):
                            gxt[a, c, i, jj, U(ow * sw + offw)] += cols[a, r, od, oh, U(ow)]
                    else:
                        for ow in range(ow0, ow1):
                            dst = (ow * sw + offw) * m
                            for e in range(m):
                                gxt[a, c, i, jj, U(dst + e)] += cols[a, r, od, oh, U(ow * m + e)]


@parallel_kernel(streaming=True, beside_blas=True)
def _deinterleave(res, n0, out, b, residual, slope, lo, hi):
    """out[n0 + a*m + s, k, p] = activate(res[a, k, p*m + s] + b[k] + residual[n0 + a*m + s, k, p])
    (residual of size 0: none): ``_interleave``'s inverse, with the forward's epilogue on the
    same pass. Each (a, k) block of res is read m samples at a time while it is in cache."""
    A, K, Pm = res.shape
    P = out.shape[2]
    m = Pm // P
    with_residual = residual.size > 0
    for task in prange(A * K):
        a, k = task // K, task % K
        bk = b[k]
        for s in range(m):
            j = n0 + a * m + s
            for p in range(P):
                v = res[a, k, U(p * m + s)] + bk
                if with_residual:
                    v += residual[j, k, U(p)]
                out[j, k, U(p)] = activate(v, slope, lo, hi)


@parallel_kernel(streaming=True, beside_blas=True)
def _unfold_grid(xf, cols, shifts):
    """cols[j // m, c*taps + t, j % m, q] = xf[j, c, q + shifts[t]]: the stride-1 columns on
    the padded input's flat grid (``Grid``), m samples side by side, one contiguous copy per
    sample, channel and tap."""
    n, C = xf.shape[:2]
    T, m, Q = shifts.shape[0], cols.shape[2], cols.shape[3]
    for task in prange(n * C):
        j, c = task // C, task % C
        for t in range(T):
            s = shifts[t]
            for q in range(Q):
                cols[j // m, c * T + t, j % m, U(q)] = xf[j, c, U(q + s)]


@parallel_kernel(streaming=True, beside_blas=True)
def _fold_grid(cols, gxf, shifts):
    """gxf[j, c, q + shifts[t]] = the sum of cols[j // m, c*taps + t, j % m, q]
    (``_unfold_grid``'s adjoint)."""
    n, C = gxf.shape[:2]
    T, m, Q = shifts.shape[0], cols.shape[2], cols.shape[3]
    for task in prange(n * C):
        j, c = task // C, task % C
        gxf[j, c] = 0
        for t in range(T):
            s = shifts[t]
            for q in range(Q):
                gxf[j, c, U(q + s)] += cols[j // m, c * T + t, j % m, U(q)]


@parallel_kernel(streaming=True, beside_blas=True)
def _to_grid(go, n0, gog, plane):
    """gog[j // m, k, j % m] = go[n0 + j, k] on the grid's output positions, zeros on the
    others: those columns must add nothing to the gradients. gog is (n/m, K, m, Q), Q the grid
    positions up to the last output (``Grid.outputs``): m samples side by side, as the grid
    layout has them. One pass, each element written once."""
    K, m = gog.shape[1:3]
    n = gog.shape[0] * m
    OD, OH, OW = go.shape[2:]
    Hp, Wp = plane
    for task in prange(n * K):
        j, k = task // K, task % K
        gog[j // m, k, j % m] = 0
        for od in range(OD):
            for oh in range(OH):
                base = (od * Hp + oh) * Wp
                for ow in range(OW):
                    gog[j // m, k, j % m, U(base + ow)] = go[n0 + j, k, od, oh, U(ow)]


@parallel_kernel(streaming=True, beside_blas=True)
def _from_grid(res, n0, out, b, residual, plane, step, slope, lo, hi):
    """out[n0 + j, g*Kg + k] = activate(the sum over depth taps d of res[j // m, g, d, k, j % m]
    at the grid's output positions + d * step, + b + residual): the columns past the output
    width are dropped, and the epilogue rides on the same passes over each output row while it
    is in L1 (residual of size 0: none). res is (n/m, G, depth taps, K/G, m, Q)."""
    G, KD, Kg, m = res.shape[1:5]
    n = res.shape[0] * m
    OD, OH, OW = out.shape[2:]
    Hp, Wp = plane
    with_residual = residual.size > 0
    fused = not is_identity(slope, lo, hi)
    for task in prange(n * G * Kg):
        j, k = task // (G * Kg), task % (G * Kg)
        a, s = j // m, j % m
        g, kl = k // Kg, k % Kg
        bk = b[k]
        for od in range(OD):
            for oh in range(OH):
                base = (od * Hp + oh) * Wp
                for ow in range(OW):
                    v = res[a, g, 0, kl, s, U(base + ow)] + bk
                    if with_residual:
                        v += residual[n0 + j, k, od, oh, U(ow)]
                    out[n0 + j, k, od, oh, U(ow)] = v
                for d in range(1, KD):
                    shifted = base + d * step
                    for ow in range(OW):
                        out[n0 + j, k, od, oh, U(ow)] += res[a, g, d, kl, s, U(shifted + ow)]
                if fused:
                    for ow in range(OW):
                        out[n0 + j, k, od, oh, U(ow)] = activate(out[n0 + j, k, od, oh, U(ow)], slope, lo, hi)


def _is_pointwise(geom):
    """Input and output positions correspond one to one (a transposed convolution's
    output_padding can add outputs that no input reaches, hence the size check)."""
    return (geom.kernel == (1, 1, 1) and geom.stride == (1, 1, 1) and geom.padding == (0, 0, 0)
            and geom.in_size == geom.out_size)


class Grid:
    """The stride-1 layout: positions on the zero-padded input's grid, flattened (conv_direct's
    stride-1 loops use the same), so that tap t of output position q reads input position
    q + shifts[t] and every column row is one contiguous copy. Rows of a few outputs (LeNet's
    10x10) made the exact unfolding a copy loop per output row: (64, 6, 14x14), 5x5: 0.64 ms to
    unfold exactly against 0.12 ms on the grid, for 36% more GEMM columns (the positions past
    the output width, dropped afterwards; 4% at 56x56 3x3). ``positions`` (Q) runs to the last
    output; ``size`` is the grid's element count.

    m samples of a chunk lie side by side along the columns, ``cols[j // m, c*taps + t, j % m,
    q]``, and so do the GEMM's results and grad_out (``[j // m, k, j % m, q]``): one GEMM per
    group covers them, and the weight gradient sums over them inside it (``GRID_GEMM_COLUMNS``).

    A kernel deeper than one (``_stacks_depth``) is unfolded over its height and width only:
    the depth slices of the grid, stacked, are one tall plane, and depth tap kd of output q
    reads that plane's columns at q + kd * ``depth_step``. The forward's GEMM takes the depth
    taps as rows of their own (``depth_taps`` x K/G rows per group) and ``_from_grid`` adds
    them up, shifted; the weight gradient takes one GEMM per depth tap on shifted column
    windows. Each input element is then copied KH*KW times instead of KD*KH*KW: (1, 32,
    16x56x56), 3x3x3, unfolded 195 MB of columns in 25 ms before, 67 MB now. ``taps`` is the
    taps a column row holds; ``outputs`` the grid positions up to the last output (``positions``
    but for the depth taps' reach)."""

    def __init__(self, geom, stacked=None):
        self.shape = conv_direct._grid_shape(geom)
        Dp, Hp, Wp = self.shape
        self.size = Dp * Hp * Wp
        stacked = _stacks_depth(geom) if stacked is None else stacked
        self.depth_taps = geom.kernel[0] if stacked else 1
        self.depth_step = geom.dilation[0] * Hp * Wp
        self.shifts = conv_direct.tap_shifts(self.shape, (geom.kernel[0] // self.depth_taps, *geom.kernel[1:]),
                                             geom.dilation)
        self.taps = len(self.shifts)
        self.positions = self.size - int(self.shifts[-1])
        self.outputs = self.positions - (self.depth_taps - 1) * self.depth_step

    def most_side_by_side(self):
        """How many samples one GEMM may take side by side: one when the depth is stacked (the
        weight gradient's shifted column windows would cross into the next sample)."""
        return 1 if self.depth_taps > 1 else max(1, GRID_GEMM_COLUMNS // self.positions)

    def per_sample(self, geom):
        """Scratch elements per sample: columns, the padded input (or input gradient) and the
        GEMM's result (or grad_out)."""
        return (geom.in_channels * self.taps * self.positions + geom.in_channels * self.size
                + geom.out_channels * self.depth_taps * self.positions)


#: The grid layout is taken at stride 1 up to this many output channels per group. Each column
#: element feeds 2 * K/G multiply-adds of the GEMM, so with few output channels unfolding is
#: most of the work and the grid's contiguous copies pay for its extra columns; with many the
#: GEMM is, and the extra columns cost (measured, forward, exact -> grid: LeNet's (64, 6,
#: 14x14) -> 16, 5x5: 0.94 -> 0.58 ms; (1, 512, 7x7) -> 512, 3x3, 25% more columns: 1.93 ->
#: 2.31 ms).
GRID_MAX_OUT_PER_GROUP = 32


#: What unfolding one column element costs, in multiply-adds per GEMM row (a rough fit to the
#: measurements below): unfolding runs at about 0.5 ns an element, the GEMM at 0.01 ns a
#: multiply-add.
UNFOLD_COST = 25


def _stacks_depth(geom):
    """Whether a stride-1 kernel more than one deep is unfolded with its depth stacked
    (``Grid``): when that is cheaper than exact columns, by the cost per output position of
    unfolding a column element and the GEMM's K/G multiply-adds on it. Stacking unfolds KD
    times fewer elements, on more columns: the whole padded depth. Measured, forward and
    backward, exact or plain grid -> stacked: (1, 32, 16x56x56) -> 32, 3x3x3 75 -> 42 and
    73 + 63 -> 43 + 49 ms; (2, 16, 16x32x32) -> 16 15 -> 8.4 and 34 -> 21 ms; and the other
    way, (1, 128, 4x14x14) -> 128 with twice the columns, 7.5 -> 10 and 15 -> 23 ms."""
    if geom.stride != (1, 1, 1) or geom.kernel[0] == 1:
        return False
    grid = conv_direct._grid_shape(geom)
    reach = (geom.kernel[1] - 1) * geom.dilation[1] * grid[2] + (geom.kernel[2] - 1) * geom.dilation[2]
    columns, outputs = math.prod(grid) - reach, math.prod(geom.out_size)
    per_group = geom.out_channels // geom.groups
    return columns * (UNFOLD_COST / geom.kernel[0] + per_group) < outputs * (UNFOLD_COST + per_group)


def _on_plain_grid(geom):
    """Whether the columns are unfolded onto the grid with every tap (``Grid``, not stacked)."""
    return (geom.stride == (1, 1, 1) and not _is_pointwise(geom) and not _interleaves(geom)
            and geom.out_channels // geom.groups <= GRID_MAX_OUT_PER_GROUP)


def _on_grid_layout(geom):
    """Whether the columns are unfolded onto the grid (``Grid``) rather than exactly."""
    return _on_plain_grid(geom) or _stacks_depth(geom)


#: The grid layout lays samples side by side along the GEMM's columns, up to this many columns.
#: Few output channels over few positions make per-sample GEMMs that BLAS runs far from its
#: peak; past several thousand columns the weight gradient's product of two long, thin
#: matrices slows down instead. Measured at batch 64, median ms (forward, grad input, grad
#: weight), one sample per GEMM -> 4096 columns -> the whole batch: LeNet c2 (Q = 136, 16 side
#: by side) 0.66 0.78 0.95 -> 0.65 0.67 0.78 -> 0.65 0.79 0.78; c1 (Q = 892, 4 side by side)
#: 0.58 0.52 0.49 -> 0.49 0.55 0.54 -> 0.64 0.52 1.25.
GRID_GEMM_COLUMNS = 4096


def _grid_chunk_size(geom, grid, itemsize, workspace):
    """Samples per chunk of the grid layout: its columns, the padded input (or input gradient)
    and the grid-sized GEMM result (or grad_out) of each sample stay under ``workspace``; a
    multiple of the samples one GEMM takes side by side when there is room for more."""
    size = int(max(1, min(geom.batch, workspace // (grid.per_sample(geom) * itemsize))))
    side = grid.most_side_by_side()
    return size if size <= side else size // side * side


def _side_by_side(n, grid):
    """How many of a chunk's n samples one GEMM takes side by side: as many as fit in
    ``GRID_GEMM_COLUMNS`` columns and divide n."""
    return conv_direct.largest_divisor(n, grid.most_side_by_side())


def workspace_bytes(geom, itemsize, workspace):
    """The most scratch one im2col call holds (``numbaconv bench`` quotes peak memory against
    it): a chunk's buffers, none for a pointwise convolution (its input is the GEMM matrix)."""
    if _is_pointwise(geom):
        return 0
    if _on_grid_layout(geom):
        grid = Grid(geom)
        return _grid_chunk_size(geom, grid, itemsize, workspace) * grid.per_sample(geom) * itemsize
    interleaved = _interleaves(geom)
    return _chunk_size(geom, itemsize, workspace, interleaved) * _exact_per_sample(geom, interleaved) * itemsize


def _chunk_size(geom, itemsize, workspace, interleaved=False):
    """Samples per chunk of the exact columns: a chunk's scratch (``_exact_per_sample``) stays
    under ``workspace`` bytes; at least one sample."""
    return int(max(1, min(geom.batch, workspace // (_exact_per_sample(geom, interleaved) * itemsize))))


def _exact_per_sample(geom, interleaved=False):
    """Scratch elements per sample of the exact columns: columns, and the larger of the weight
    gradient's per-sample products and a GEMM result; interleaved (``_interleaves``), columns
    and the interleaved copies of the input (or input gradient) and of the output (or grad_out),
    the weight gradient's one product summing over the chunk inside its GEMM."""
    rows, positions = geom.in_channels * math.prod(geom.kernel), math.prod(geom.out_size)
    if interleaved:
        return rows * positions + geom.in_channels * math.prod(geom.in_size) + geom.out_channels * positions
    return rows * positions + max(rows * (geom.out_channels // geom.groups), geom.out_channels * positions)


def _chunks(geom, size):
    return [(n0, min(n0 + size, geom.batch)) for n0 in range(0, geom.batch, size)]


#: The exact columns interleave a chunk's samples when output rows are at most this wide.
#: Unfolding copies one output row per channel, tap and row of the output: rows of a few
#: elements (7x7 planes) make it a loop of short copies, and per-sample GEMMs of a few dozen
#: columns run far below BLAS's peak. With the samples innermost a row is m samples long and the
#: chunk is one GEMM, for two transposing copies (the input's, the output's). Measured, forward,
#: the samples side by side -> interleaved: ResNet-18's layer 4 at batch 8 (512 channels, 7x7)
#: 10.3 -> 7.6 ms, layer 3 (14x14) 10.1 -> 8.2 ms, its 3x3/2 into 14x14 5.0 -> 4.1 ms; the grid
#: layout -> interleaved: LeNet's c2 at batch 64 (16 channels, 10x10) 1.08 -> 0.74 ms; at 28x28
#: (ResNet's layer 2, b8) no difference. Backward (both gradients), the same shapes: 20.7 -> 13.2,
#: 16.8 -> 12.9, 10.4 -> 7.5 and 2.1 -> 1.9 ms. Strided rows take half this width
#: (``_interleaves``): the 3x3/2 into 14x14 now runs one sample at a time, against which
#: interleaving gained 2-6% at batch 8 and lost up to 1.5x at batch 2.
INTERLEAVE_MAX_WIDTH = 16


def _interleaves(geom):
    """Whether the exact columns interleave the samples of a chunk (``INTERLEAVE_MAX_WIDTH``):
    not with a single sample, a pointwise convolution (no columns) or the depth stacked, nor
    when the columns hold fewer elements than the input, whose interleaved copy would then cost
    more than the short rows (a 1x1 kernel at stride 2: (8, 256, 14x14) -> 512, 0.64 -> 0.80 ms).

    Strided rows must be half as short: there a column row is copied m samples at a time per
    output, not in one run, and at small batches those copies cost more than the GEMM gains.
    Measured, 3x3/2, one by one -> interleaved, forward: (2, 64, 32x32) -> 64 (16 wide) 0.49 ->
    0.91 ms, (2, 128, 28x28) -> 256 (14 wide) 1.41 -> 2.12, at batch 8 a tie; (8, 256, 14x14) ->
    512 (7 wide) 6.40 -> 4.54, (16, 32, 16x16) -> 32 (8 wide) 0.52 -> 0.44."""
    width = INTERLEAVE_MAX_WIDTH if geom.stride[2] == 1 else INTERLEAVE_MAX_WIDTH // 2
    return (geom.batch > 1 and geom.out_size[2] <= width and not _is_pointwise(geom)
            and not _stacks_depth(geom)
            and math.prod(geom.kernel) * math.prod(geom.out_size) >= math.prod(geom.in_size))


def _interleave(a, n0, n1, m, name):
    """a[n0:n1] (n, C, *spatial) with m samples interleaved, sample innermost: (n/m, C, S * m),
    S the spatial size, a copy into the per-thread scratch ``name``; for m = 1 a view."""
    n, C = n1 - n0, a.shape[1]
    if m == 1:
        return a[n0:n1].reshape(n, C, -1)
    dst = scratch_array(name, (n // m, C, math.prod(a.shape[2:]), m), a.dtype)
    np.copyto(dst, a[n0:n1].reshape(n // m, m, C, -1).transpose(0, 2, 3, 1))
    return dst.reshape(n // m, C, -1)


def _columns(x, geom, workspace):
    """Yield (n0, n1, cols) per chunk, cols of shape (n/m, G, C/G * taps, P * m): the chunk's
    samples interleaved (m = n, ``_interleaves``) or one by one (m = 1). A pointwise
    convolution's columns are views of x, chunked all the same: grad_weight's per-sample
    products grow with the chunk, and the workspace bound is what keeps them in check."""
    G = geom.groups
    interleaved = _interleaves(geom)
    size = _chunk_size(geom, x.itemsize, workspace, interleaved)
    if _is_pointwise(geom):
        for n0, n1 in _chunks(geom, size):
            yield n0, n1, _grouped(x[n0:n1], G)
        return
    C, (D, H, W), (OD, OH, OW) = x.shape[1], geom.in_size, geom.out_size
    rows = C * math.prod(geom.kernel)
    for n0, n1 in _chunks(geom, size):
        n = n1 - n0
        m = n if interleaved else 1
        cols = scratch_array("cols", (n // m, rows, OD, OH, OW * m), x.dtype)
        xt = _interleave(x, n0, n1, m, "padded").reshape(n // m, C, D, H, W * m)
        _im2col(xt, cols, geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size)
        yield n0, n1, cols.reshape(n // m, G, rows // G, -1)


def _grid_columns(x, geom, grid, workspace):
    """Yield (n0, n1, cols) per chunk in the grid layout: cols (n/m, G, C/G * taps, m * Q), m
    samples side by side (``_side_by_side``)."""
    rows = x.shape[1] * grid.taps
    for n0, n1 in _chunks(geom, _grid_chunk_size(geom, grid, x.itemsize, workspace)):
        n = n1 - n0
        m = _side_by_side(n, grid)
        cols = scratch_array("cols", (n // m, rows, m, grid.positions), x.dtype)
        xp = scratch_array("padded", (n, x.shape[1], *grid.shape), x.dtype)
        conv_direct.place_on_grid(x[n0:n1], geom, xp)
        _unfold_grid(xp.reshape(n, x.shape[1], -1), cols, grid.shifts)
        yield n0, n1, cols.reshape(n // m, geom.groups, rows // geom.groups, -1)


def _grid_grad_out(go, n0, n1, geom, grid):
    """grad_out of samples n0:n1 in the grid layout, (n/m, G, K/G, m * Q) as ``_grid_columns``
    (Q = ``grid.outputs``), zeros past the outputs."""
    n, K = n1 - n0, go.shape[1]
    m = _side_by_side(n, grid)
    gog = scratch_array("result", (n // m, K, m, grid.outputs), go.dtype)
    _to_grid(go, n0, gog, grid.shape[1:])
    return gog.reshape(n // m, geom.groups, K // geom.groups, -1)


def _unsplit(a, grid):
    """(n/m, G, rows/G, m * Q) -> (n/m, rows, m, Q), the grid kernels' view."""
    return a.reshape(a.shape[0], a.shape[1] * a.shape[2], -1, grid.positions)


def _quiet(entry):
    """NaN and inf propagate silently, as in PyTorch and in the direct kernels: no NumPy warnings
    from inside the GEMM."""
    def run(*args):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            entry(*args)
    run.__name__, run.__doc__ = entry.__name__, entry.__doc__
    return run


def _epilogue_args(out, b, epilogue=IDENTITY, residual=None):
    """The bias, residual and epilogue arguments of ``_deinterleave`` and ``_from_grid``, in
    out's dtype (zeros for no bias, an empty residual for none)."""
    b = np.zeros(out.shape[1], dtype=out.dtype) if b is None else b
    r = (np.empty((0,) * out.ndim, out.dtype) if residual is None
         else np.ascontiguousarray(residual).reshape(out.shape))
    return (b, r, *(out.dtype.type(v) for v in epilogue))


def _grouped(a, groups):
    """(N, C, *spatial) -> (N, G, C/G, P), a view (P spelled out: N may be 0)."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, math.prod(a.shape[2:]))


def _depth_rows(w, geom, grid):
    """The forward GEMM's weight, (G, depth taps * K/G, C/G * taps): with the depth stacked
    (``Grid``), the rows of depth tap d are w[:, :, d] (a copy); otherwise w as it is."""
    G, KD = geom.groups, grid.depth_taps
    if KD == 1:
        return w.reshape(G, w.shape[0] // G, -1)
    w6 = w.reshape(G, w.shape[0] // G, w.shape[1], KD, grid.taps)
    return np.ascontiguousarray(w6.transpose(0, 3, 1, 2, 4)).reshape(G, KD * w6.shape[1], -1)


def _adjoint(geom):
    """The input gradient of a stride-1 convolution as a forward one: the correlation of
    grad_out with the flipped kernel (``conv_direct.flipped``), at the complementary padding dilation *
    (k - 1) - padding; None when that padding is negative somewhere (a crop, which the forward
    cannot take)."""
    pad = tuple(d * (k - 1) - p for d, k, p in zip(geom.dilation, geom.kernel, geom.padding))
    if geom.stride != (1, 1, 1) or min(pad) < 0:
        return None
    return dataclasses.replace(
        geom, in_channels=geom.out_channels, out_channels=geom.in_channels, in_size=geom.out_size,
        out_size=geom.in_size, padding=pad, mode_padding=((0, 0),) * 3, padding_mode="zeros")


@_quiet
def forward(x, w, b, out, geom, workspace, epilogue=IDENTITY, residual=None):
    """out = epilogue(conv(x, w) + b + residual) (b, residual may be None): the GEMMs, then one
    pass over their output for the bias, the residual and the activation together
    (conv_direct.epilogue_pass)."""
    G = geom.groups
    if _on_grid_layout(geom):
        grid, K = Grid(geom), geom.out_channels
        w3 = _depth_rows(w, geom, grid)
        b, r, *activation = _epilogue_args(out, b, epilogue, residual)
        for n0, n1, cols in _grid_columns(x, geom, grid, workspace):
            res = gemm.matmul(w3, cols, out=scratch_array("result", (cols.shape[0], *w3.shape[:2], cols.shape[3]), out.dtype))
            _from_grid(res.reshape(cols.shape[0], G, grid.depth_taps, K // G, -1, grid.positions), n0, out, b, r,
                       grid.shape[1:], grid.depth_step, *activation)
        return
    w3, out4 = w.reshape(G, w.shape[0] // G, -1), _grouped(out, G)
    for n0, n1, cols in _columns(x, geom, workspace):
        if cols.shape[0] == n1 - n0:  # one sample per GEMM, written in place
            gemm.matmul(w3, cols, out=out4[n0:n1])
            r = None if residual is None else residual[n0:n1]
            if b is not None or epilogue != IDENTITY or r is not None:
                run_epilogue(out[n0:n1], b, epilogue, r)
            continue
        res = gemm.matmul(w3, cols, out=scratch_array("result", (1, G, w3.shape[1], cols.shape[3]), out.dtype))
        out3 = out.reshape(*out.shape[:2], -1)
        _deinterleave(res.reshape(1, out.shape[1], -1), n0, out3, *_epilogue_args(out3, b, epilogue, residual))


@_quiet
def grad_input(go, w, gx, geom, workspace):
    G = geom.groups
    w3t = w.reshape(G, w.shape[0] // G, -1).transpose(0, 2, 1)
    go4 = _grouped(go, G)
    if _is_pointwise(geom):
        gemm.matmul(w3t, go4, out=_grouped(gx, G))
        return
    adjoint = _adjoint(geom) if geom.kernel[0] > 1 else None
    if adjoint is not None and _stacks_depth(adjoint):
        # as a forward convolution its columns stack the depth, where a GEMM into columns and
        # their fold would hold and scatter-add KD times as many
        forward(go, conv_direct.flipped(w, geom), None, gx, adjoint, workspace)
        return
    if _on_plain_grid(geom):
        grid = Grid(geom, stacked=False)
        gx[...] = 0
        inner, outer = conv_direct._window(gx.shape[2:], geom.padding, grid.shape)
        for n0, n1 in _chunks(geom, _grid_chunk_size(geom, grid, go.itemsize, workspace)):
            n = n1 - n0
            gog = _grid_grad_out(go, n0, n1, geom, grid)
            cols = gemm.matmul(w3t, gog, out=scratch_array("cols", (gog.shape[0], *w3t.shape[:2], gog.shape[3]), go.dtype))
            gxp = scratch_array("padded", (n, gx.shape[1], grid.size), gx.dtype)
            _fold_grid(_unsplit(cols, grid), gxp, grid.shifts)
            gx[(slice(n0, n1), slice(None), *inner)] = gxp.reshape(n, gx.shape[1], *grid.shape)[(..., *outer)]
        return
    interleaved = _interleaves(geom)
    C, (D, H, W), (OD, OH, OW) = gx.shape[1], geom.in_size, geom.out_size
    for n0, n1 in _chunks(geom, _chunk_size(geom, go.itemsize, workspace, interleaved)):
        n = n1 - n0
        m = n if interleaved else 1
        got = _interleave(go, n0, n1, m, "result").reshape(n // m, G, w3t.shape[2], -1)
        cols = gemm.matmul(w3t, got, out=scratch_array("cols", (n // m, G, w3t.shape[1], got.shape[3]), go.dtype))
        gxt = gx[n0:n1] if m == 1 else scratch_array("padded", (1, C, D, H, W * m), gx.dtype)
        _col2im(cols.reshape(n // m, -1, OD, OH, OW * m), gxt.reshape(n // m, C, D, H, W * m),
                geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size)
        if m > 1:
            gx3 = gx.reshape(*gx.shape[:2], -1)
            _deinterleave(gxt.reshape(1, C, -1), n0, gx3, *_epilogue_args(gx3, None))


#: The most weight-gradient elements whose products ``_add_weight_grad`` computes transposed.
TRANSPOSED_WEIGHT_GRAD_MAX = 1 << 16


def _add_weight_grad(gw3, go4, cols):
    """gw3 += the sum over j of go4[j] (G, K/G, P) @ cols[j]^T (G, P, rows), j the chunk's
    samples (or groups of samples side by side).

    A small gradient's products are spelled (cols @ go^T)^T: BLAS ran them the other way round,
    the first operand the one with fewer rows, 40% slower on LeNet's c2 (16 x 150) and 5-15% on
    ResNet's layer 1 (64 x 576). A large one's are not: adding a transposed gradient of 512 x
    4608 (ResNet's layer 4) took 8 ms, twice its GEMM."""
    n, G, kg, P = go4.shape
    rows = cols.shape[2]
    if n > 1 and kg * rows > (kg + rows) * P:
        # The per-sample products would outweigh their operands (many channels over few
        # positions: 8 x 4 MiB of products at 1024 channels of 7x7, for 3.2 MiB of grad_out
        # and input): lay the chunk's samples side by side along the positions instead (a copy
        # of each operand) and sum them inside one GEMM.
        go4 = go4.transpose(1, 2, 0, 3).reshape(1, G, kg, n * P)
        cols = cols.transpose(1, 2, 0, 3).reshape(1, G, rows, n * P)
    if gw3.size <= TRANSPOSED_WEIGHT_GRAD_MAX:
        gw3 += _summed(gemm.matmul(cols, go4.transpose(0, 1, 3, 2))).transpose(0, 2, 1)
    else:
        gw3 += _summed(gemm.matmul(go4, cols.transpose(0, 1, 3, 2)))


def _summed(products):
    """The sum over the first axis, without a copy when there is one product."""
    return products[0] if products.shape[0] == 1 else products.sum(axis=0)


@_quiet
def grad_weight(go, x, gw, geom, workspace):
    gw3 = gw.reshape(geom.groups, gw.shape[0] // geom.groups, -1)
    gw3[:] = 0
    if _on_grid_layout(geom):
        grid = Grid(geom)
        if grid.depth_taps == 1:
            for n0, n1, cols in _grid_columns(x, geom, grid, workspace):
                _add_weight_grad(gw3, _grid_grad_out(go, n0, n1, geom, grid), cols)
            return
        # depth tap d's gradient: grad_out against the columns shifted by d depth slices
        G = geom.groups
        gw6 = gw.reshape(G, gw.shape[0] // G, gw.shape[1], grid.depth_taps, grid.taps)
        part = np.empty((G, gw6.shape[1], gw.shape[1] * grid.taps), dtype=gw.dtype)
        for n0, n1, cols in _grid_columns(x, geom, grid, workspace):
            gog = _grid_grad_out(go, n0, n1, geom, grid)
            for d in range(grid.depth_taps):
                part[...] = 0
                _add_weight_grad(part, gog, cols[..., d * grid.depth_step:d * grid.depth_step + grid.outputs])
                gw6[:, :, :, d] += part.reshape(gw6.shape[:3] + (grid.taps,))
        return
    for n0, n1, cols in _columns(x, geom, workspace):
        m = (n1 - n0) // cols.shape[0]
        _add_weight_grad(gw3, _interleave(go, n0, n1, m, "result").reshape(cols.shape[0], *gw3.shape[:2], -1), cols)
