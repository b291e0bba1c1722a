"""im2col convolution: unfold input windows into column matrices, then BLAS GEMMs.

Column layout, per chunk of ``n`` samples: ``cols[j, c * KD*KH*KW + tap, p]`` for sample j of
the chunk, input channel c, kernel tap and output position p (P = OD*OH*OW). The rows of group g
are contiguous, so ``cols.reshape(n, G, C/G * taps, P)`` lines up with the output's own layout
``(n, G, K/G, P)``: one batched matmul writes the output in place, and the backward reads
``grad_out`` as it is, with no transposing copies. The GEMM is NumPy's matmul (the BLAS NumPy
was built with), which runs near the machine's peak.

The batch is processed in chunks so the column buffer stays under ``workspace`` bytes. A
pointwise convolution (1x1x1 kernel, stride 1, no padding, equal sizes) needs no columns at all: the input
already is the column matrix.

The copy kernels run on one thread on purpose. NumPy's BLAS keeps its worker threads spinning
for a while after each GEMM; a parallel Numba kernel between two GEMMs fights those threads for
the cores (measured on 2 cores: 2-6 ms instead of 5 us for a small kernel right after a GEMM),
while a serial one runs beside them undisturbed.
"""

import math
import threading

import numpy as np
from numba import njit

from . import conv_direct
from ._window import FASTMATH, IDENTITY, U, activate, tap_offsets, valid_outputs
from .conv_direct import run_epilogue


@njit(cache=True)
def _im2col(x, n0, cols, kernel, stride, dilation, padding, out_size):
    """cols[j, c*taps + t, :] = what tap t of channel c sees of sample n0 + j (0 in padding)."""
    N, C, D, H, W = x.shape
    OD, OH, OW = out_size
    sd, sh, sw = stride
    taps = cols.shape[1] // C
    for j in range(cols.shape[0]):
        for r in range(cols.shape[1]):
            c = r // taps
            offd, offh, offw = tap_offsets(r % taps, kernel, dilation, padding)
            ow0, ow1 = valid_outputs(offw, sw, W, OW)
            for od in range(OD):
                i = od * sd + offd
                for oh in range(OH):
                    jj, base = oh * sh + offh, (od * OH + oh) * OW
                    if i < 0 or i >= D or jj < 0 or jj >= H:  # the whole row reads padding
                        lo = hi = OW
                    else:
                        lo, hi = ow0, ow1
                    for ow in range(lo):  # every element is written once: zero, copy, zero
                        cols[j, r, U(base + ow)] = 0
                    if sw == 1:  # unit stride spelled out: a contiguous copy LLVM vectorizes
                        for ow in range(lo, hi):
                            cols[j, r, U(base + ow)] = x[n0 + j, c, i, jj, U(ow + offw)]
                    else:
                        for ow in range(lo, hi):
                            cols[j, r, U(base + ow)] = x[n0 + j, c, i, jj, U(ow * sw + offw)]
                    for ow in range(hi, OW):
                        cols[j, r, U(base + ow)] = 0


@njit(cache=True, fastmath=FASTMATH)
def _col2im(cols, n0, gx, kernel, stride, dilation, padding, out_size):
    """gx[n0 + j] = the sum of every column entry back onto the input element it was read from."""
    N, C, D, H, W = gx.shape
    OD, OH, OW = out_size
    sd, sh, sw = stride
    taps = cols.shape[1] // C
    for j in range(cols.shape[0]):
        gx[n0 + j] = 0
        for r in range(cols.shape[1]):
            c = r // taps
            offd, offh, offw = tap_offsets(r % taps, kernel, dilation, padding)
            od0, od1 = valid_outputs(offd, sd, D, OD)
            oh0, oh1 = valid_outputs(offh, sh, H, OH)
            ow0, ow1 = valid_outputs(offw, sw, W, OW)
            for od in range(od0, od1):
                for oh in range(oh0, oh1):
                    i, jj, base = od * sd + offd, oh * sh + offh, (od * OH + oh) * OW
                    for ow in range(ow0, ow1):
                        gx[n0 + j, c, i, jj, U(ow * sw + offw)] += cols[j, r, U(base + ow)]


@njit(cache=True)
def _unfold_grid(xf, cols, shifts):
    """cols[j // m, c*taps + t, j % m, q] = xf[j, c, q + shifts[t]]: the stride-1 columns on
    the padded input's flat grid (``Grid``), m samples side by side, one contiguous copy per
    sample, channel and tap."""
    n, C = xf.shape[:2]
    T, m, Q = shifts.shape[0], cols.shape[2], cols.shape[3]
    for j in range(n):
        for c in range(C):
            for t in range(T):
                s = shifts[t]
                for q in range(Q):
                    cols[j // m, c * T + t, j % m, U(q)] = xf[j, c, U(q + s)]


@njit(cache=True, fastmath=FASTMATH)
def _fold_grid(cols, gxf, shifts):
    """gxf[j, c, q + shifts[t]] = the sum of cols[j // m, c*taps + t, j % m, q]
    (``_unfold_grid``'s adjoint)."""
    n, C = gxf.shape[:2]
    T, m, Q = shifts.shape[0], cols.shape[2], cols.shape[3]
    for j in range(n):
        for c in range(C):
            gxf[j, c] = 0
            for t in range(T):
                s = shifts[t]
                for q in range(Q):
                    gxf[j, c, U(q + s)] += cols[j // m, c * T + t, j % m, U(q)]


@njit(cache=True)
def _from_grid(res, n0, out, b, residual, plane, slope, lo, hi):
    """out[n0 + j, k] = activate(res[j // m, k, j % m] on the grid's output positions + b[k] +
    residual): the columns past the output width are dropped, and the epilogue rides on the
    same pass (residual of size 0: none)."""
    K, m = res.shape[1:3]
    n = res.shape[0] * m
    OD, OH, OW = out.shape[2:]
    Hp, Wp = plane
    with_residual = residual.size > 0
    for j in range(n):
        for k in range(K):
            bk = b[k]
            for od in range(OD):
                for oh in range(OH):
                    base = (od * Hp + oh) * Wp
                    for ow in range(OW):
                        v = res[j // m, k, j % m, U(base + ow)] + bk
                        if with_residual:
                            v += residual[n0 + j, k, od, oh, U(ow)]
                        out[n0 + j, k, od, oh, U(ow)] = activate(v, slope, lo, hi)


@njit(cache=True)
def _to_grid(go, n0, gog, plane):
    """gog[j // m, k, j % m] = go[n0 + j, k] on the grid's output positions, zeros on the
    others (``_from_grid``'s adjoint): those columns must add nothing to the gradients."""
    K, m = gog.shape[1:3]
    n = gog.shape[0] * m
    OD, OH, OW = go.shape[2:]
    Hp, Wp = plane
    for j in range(n):
        for k in range(K):
            gog[j // m, k, j % m] = 0
            for od in range(OD):
                for oh in range(OH):
                    base = (od * Hp + oh) * Wp
                    for ow in range(OW):
                        gog[j // m, k, j % m, U(base + ow)] = go[n0 + j, k, od, oh, U(ow)]


def _is_pointwise(geom):
    """Input and output positions correspond one to one (a transposed convolution's
    output_padding can add outputs that no input reaches, hence the size check)."""
    return (geom.kernel == (1, 1, 1) and geom.stride == (1, 1, 1) and geom.padding == (0, 0, 0)
            and geom.in_size == geom.out_size)


class Grid:
    """The stride-1 layout: positions on the zero-padded input's grid, flattened (conv_direct's
    flat loops use the same), so that tap t of output position q reads input position
    q + shifts[t] and every column row is one contiguous copy. Rows of a few outputs (LeNet's
    10x10) made the exact unfolding a copy loop per output row: (64, 6, 14x14), 5x5: 0.64 ms to
    unfold exactly against 0.12 ms on the grid, for 36% more GEMM columns (the positions past
    the output width, dropped afterwards; 4% at 56x56 3x3). ``positions`` (Q) runs to the last
    output; ``size`` is the grid's element count.

    m samples of a chunk lie side by side along the columns, ``cols[j // m, c*taps + t, j % m,
    q]``, and so do the GEMM's results and grad_out (``[j // m, k, j % m, q]``): one GEMM per
    group covers them, and the weight gradient sums over them inside it (``GRID_GEMM_COLUMNS``)."""

    def __init__(self, geom):
        self.shape = conv_direct._grid_shape(geom)
        Dp, Hp, Wp = self.shape
        self.size = Dp * Hp * Wp
        self.shifts = np.array([conv_direct._tap_shift(kd, kh, kw, self.shape, geom.dilation)
                                for kd in range(geom.kernel[0]) for kh in range(geom.kernel[1])
                                for kw in range(geom.kernel[2])], dtype=np.int64)
        self.positions = self.size - int(self.shifts[-1])


#: The grid layout is taken at stride 1 up to this many output channels per group. Each column
#: element feeds 2 * K/G multiply-adds of the GEMM, so with few output channels unfolding is
#: most of the work and the grid's contiguous copies pay for its extra columns; with many the
#: GEMM is, and the extra columns cost (measured, forward, exact -> grid: LeNet's (64, 6,
#: 14x14) -> 16, 5x5: 0.94 -> 0.58 ms; (1, 512, 7x7) -> 512, 3x3, 25% more columns: 1.93 ->
#: 2.31 ms).
GRID_MAX_OUT_PER_GROUP = 32


def _on_grid_layout(geom):
    """Whether the columns are unfolded onto the grid (``Grid``) rather than exactly."""
    return (geom.stride == (1, 1, 1) and not _is_pointwise(geom)
            and geom.out_channels // geom.groups <= GRID_MAX_OUT_PER_GROUP)


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
    rows = geom.in_channels * math.prod(geom.kernel)
    per_sample = (rows * grid.positions + geom.in_channels * grid.size + geom.out_channels * grid.positions) * itemsize
    size = int(max(1, min(geom.batch, workspace // per_sample)))
    side = max(1, GRID_GEMM_COLUMNS // grid.positions)
    return size if size <= side else size // side * side


def _side_by_side(n, grid):
    """How many of a chunk's n samples one GEMM takes side by side: as many as fit in
    ``GRID_GEMM_COLUMNS`` columns and divide n."""
    most = max(1, min(n, GRID_GEMM_COLUMNS // grid.positions))
    return next(m for m in range(most, 0, -1) if n % m == 0)


def workspace_bytes(geom, itemsize, workspace):
    """The most scratch one im2col call holds (``numbaconv bench`` quotes peak memory against
    it): a chunk's buffers, none for a pointwise convolution (its input is the GEMM matrix)."""
    if _is_pointwise(geom):
        return 0
    if _on_grid_layout(geom):
        grid = Grid(geom)
        rows = geom.in_channels * math.prod(geom.kernel)
        per_sample = rows * grid.positions + geom.in_channels * grid.size + geom.out_channels * grid.positions
        return _grid_chunk_size(geom, grid, itemsize, workspace) * per_sample * itemsize
    rows = geom.in_channels * math.prod(geom.kernel)
    per_sample = rows * (math.prod(geom.out_size) + geom.out_channels // geom.groups) * itemsize
    return _chunk_size(geom, itemsize, workspace) * per_sample


def _chunk_size(geom, itemsize, workspace):
    """Samples per chunk: the column buffer (and the per-sample weight-gradient products of a
    chunk) stay under ``workspace`` bytes; at least one sample."""
    rows = geom.in_channels * math.prod(geom.kernel)
    per_sample = rows * (math.prod(geom.out_size) + geom.out_channels // geom.groups) * itemsize
    return int(max(1, min(geom.batch, workspace // per_sample)))


def _chunks(geom, size):
    return [(n0, min(n0 + size, geom.batch)) for n0 in range(0, geom.batch, size)]


_scratch = threading.local()


def _scratch_array(name, shape, dtype):
    """An uninitialized array kept per thread under ``name`` and reused by later calls.

    A fresh buffer of tens of MB is paid for again on every call with a page fault per 4 KiB at
    first touch (measured on 58 MB: 8.8 ms to allocate and fill against 3.6 ms to refill). Per
    thread, so that calls from several threads never share one."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    held = getattr(_scratch, name, None)
    if held is None or held.nbytes < nbytes:
        held = np.empty(nbytes, dtype=np.uint8)
        setattr(_scratch, name, held)
    return held[:nbytes].view(dtype).reshape(shape)


def _buffer(geom, size, dtype):
    """A (n, G, C/G * taps, P) column buffer for chunks of up to ``size`` samples, from the
    per-thread scratch."""
    rows = geom.in_channels * math.prod(geom.kernel)
    count = size * rows * math.prod(geom.out_size)
    flat = _scratch_array("cols", (count,), dtype)

    def view(n):
        return flat[:n * count // size].reshape(n, geom.groups, rows // geom.groups, -1)

    return view


def _columns(x, geom, workspace):
    """Yield (n0, n1, cols) per chunk, cols of shape (n, G, C/G * taps, P). A pointwise
    convolution's columns are views of x, chunked all the same: grad_weight's per-sample
    products grow with the chunk, and the workspace bound is what keeps them in check."""
    G = geom.groups
    size = _chunk_size(geom, x.itemsize, workspace)
    if _is_pointwise(geom):
        for n0, n1 in _chunks(geom, size):
            yield n0, n1, _grouped(x[n0:n1], G)
        return
    view = _buffer(geom, size, x.dtype)
    for n0, n1 in _chunks(geom, size):
        cols = view(n1 - n0)
        _im2col(x, n0, cols.reshape(n1 - n0, x.shape[1] * math.prod(geom.kernel), -1),
                geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size)
        yield n0, n1, cols


def _grid_columns(x, geom, grid, workspace):
    """Yield (n0, n1, cols) per chunk in the grid layout: cols (n/m, G, C/G * taps, m * Q), m
    samples side by side (``_side_by_side``)."""
    rows = x.shape[1] * math.prod(geom.kernel)
    for n0, n1 in _chunks(geom, _grid_chunk_size(geom, grid, x.itemsize, workspace)):
        n = n1 - n0
        m = _side_by_side(n, grid)
        cols = _scratch_array("cols", (n // m, rows, m, grid.positions), x.dtype)
        xp = _scratch_array("padded", (n, x.shape[1], *grid.shape), x.dtype)
        conv_direct.place_on_grid(x[n0:n1], geom, xp)
        _unfold_grid(xp.reshape(n, x.shape[1], -1), cols, grid.shifts)
        yield n0, n1, cols.reshape(n // m, geom.groups, rows // geom.groups, -1)


def _grid_grad_out(go, n0, n1, geom, grid):
    """grad_out of samples n0:n1 in the grid layout, (n/m, G, K/G, m * Q) as ``_grid_columns``,
    zeros past the outputs."""
    n, K = n1 - n0, go.shape[1]
    m = _side_by_side(n, grid)
    gog = _scratch_array("result", (n // m, K, m, grid.positions), go.dtype)
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


def _grouped(a, groups):
    """(N, C, *spatial) -> (N, G, C/G, P), a view (P spelled out: N may be 0)."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, math.prod(a.shape[2:]))


@_quiet
def forward(x, w, b, out, geom, workspace, epilogue=IDENTITY, residual=None):
    """out = epilogue(conv(x, w) + b + residual) (b, residual may be None): the GEMMs, then one
    pass over their output for the bias, the residual and the activation together
    (conv_direct.epilogue_pass)."""
    w3 = w.reshape(geom.groups, w.shape[0] // geom.groups, -1)
    if _on_grid_layout(geom):
        grid, K = Grid(geom), geom.out_channels
        b = np.zeros(K, dtype=out.dtype) if b is None else b
        r = (np.empty((0,) * 5, out.dtype) if residual is None
             else np.ascontiguousarray(residual).reshape(out.shape))
        for n0, n1, cols in _grid_columns(x, geom, grid, workspace):
            res = np.matmul(w3, cols, out=_scratch_array("result", (cols.shape[0], *w3.shape[:2], cols.shape[3]), out.dtype))
            _from_grid(_unsplit(res, grid), n0, out, b, r, grid.shape[1:],
                       *(out.dtype.type(v) for v in epilogue))
        return
    out4 = _grouped(out, geom.groups)
    for n0, n1, cols in _columns(x, geom, workspace):
        np.matmul(w3, cols, out=out4[n0:n1])
    if epilogue != IDENTITY or residual is not None:
        run_epilogue(out, b, epilogue, residual)
    elif b is not None:
        out += b.reshape(-1, 1, 1, 1)


@_quiet
def grad_input(go, w, gx, geom, workspace):
    G = geom.groups
    w3t = w.reshape(G, w.shape[0] // G, -1).transpose(0, 2, 1)
    go4 = _grouped(go, G)
    if _is_pointwise(geom):
        np.matmul(w3t, go4, out=_grouped(gx, G))
        return
    if _on_grid_layout(geom):
        grid = Grid(geom)
        gx[...] = 0
        inner, outer = conv_direct._window(gx.shape[2:], geom.padding, grid.shape)
        for n0, n1 in _chunks(geom, _grid_chunk_size(geom, grid, go.itemsize, workspace)):
            n = n1 - n0
            gog = _grid_grad_out(go, n0, n1, geom, grid)
            cols = np.matmul(w3t, gog, out=_scratch_array("cols", (gog.shape[0], *w3t.shape[:2], gog.shape[3]), go.dtype))
            gxp = _scratch_array("padded", (n, gx.shape[1], grid.size), gx.dtype)
            _fold_grid(_unsplit(cols, grid), gxp, grid.shifts)
            gx[(slice(n0, n1), slice(None), *inner)] = gxp.reshape(n, gx.shape[1], *grid.shape)[(..., *outer)]
        return
    size = _chunk_size(geom, go.itemsize, workspace)
    view = _buffer(geom, size, go.dtype)
    for n0, n1 in _chunks(geom, size):
        cols = np.matmul(w3t, go4[n0:n1], out=view(n1 - n0))
        _col2im(cols.reshape(n1 - n0, gx.shape[1] * math.prod(geom.kernel), -1), n0, gx,
                geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size)


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
        gw3 += _summed(np.matmul(cols, go4.transpose(0, 1, 3, 2))).transpose(0, 2, 1)
    else:
        gw3 += _summed(np.matmul(go4, cols.transpose(0, 1, 3, 2)))


def _summed(products):
    """The sum over the first axis, without a copy when there is one product."""
    return products[0] if products.shape[0] == 1 else products.sum(axis=0)


@_quiet
def grad_weight(go, x, gw, geom, workspace):
    gw3 = gw.reshape(geom.groups, gw.shape[0] // geom.groups, -1)
    gw3[:] = 0
    if _on_grid_layout(geom):
        grid = Grid(geom)
        for n0, n1, cols in _grid_columns(x, geom, grid, workspace):
            _add_weight_grad(gw3, _grid_grad_out(go, n0, n1, geom, grid), cols)
        return
    go4 = _grouped(go, geom.groups)
    for n0, n1, cols in _columns(x, geom, workspace):
        _add_weight_grad(gw3, go4[n0:n1], cols)
