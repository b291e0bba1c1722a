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

from ._window import FASTMATH, IDENTITY, U, tap_offsets, valid_outputs
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


def _is_pointwise(geom):
    """Input and output positions correspond one to one (a transposed convolution's
    output_padding can add outputs that no input reaches, hence the size check)."""
    return (geom.kernel == (1, 1, 1) and geom.stride == (1, 1, 1) and geom.padding == (0, 0, 0)
            and geom.in_size == geom.out_size)


def _chunk_size(geom, itemsize, workspace):
    """Samples per chunk: the column buffer (and the per-sample weight-gradient products of a
    chunk) stay under ``workspace`` bytes; at least one sample."""
    rows = geom.in_channels * math.prod(geom.kernel)
    per_sample = rows * (math.prod(geom.out_size) + geom.out_channels // geom.groups) * itemsize
    return int(max(1, min(geom.batch, workspace // per_sample)))


def _chunks(geom, size):
    return [(n0, min(n0 + size, geom.batch)) for n0 in range(0, geom.batch, size)]


_scratch = threading.local()


def _buffer(geom, size, dtype):
    """A (n, G, C/G * taps, P) column buffer for chunks of up to ``size`` samples.

    The memory is kept per thread and reused by later calls: a fresh buffer of tens of MB is
    paid for again on every call with a page fault per 4 KiB at first touch (measured on 58 MB:
    8.8 ms to allocate and fill against 3.6 ms to refill). Per thread, so that calls from
    several threads never share one.
    """
    rows = geom.in_channels * math.prod(geom.kernel)
    count = size * rows * math.prod(geom.out_size)
    nbytes = count * np.dtype(dtype).itemsize
    if getattr(_scratch, "buf", None) is None or _scratch.buf.nbytes < nbytes:
        _scratch.buf = np.empty(nbytes, dtype=np.uint8)
    flat = _scratch.buf[:nbytes].view(dtype)

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
    size = _chunk_size(geom, go.itemsize, workspace)
    view = _buffer(geom, size, go.dtype)
    for n0, n1 in _chunks(geom, size):
        cols = np.matmul(w3t, go4[n0:n1], out=view(n1 - n0))
        _col2im(cols.reshape(n1 - n0, gx.shape[1] * math.prod(geom.kernel), -1), n0, gx,
                geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size)


@_quiet
def grad_weight(go, x, gw, geom, workspace):
    gw3 = gw.reshape(geom.groups, gw.shape[0] // geom.groups, -1)
    gw3[:] = 0
    go4 = _grouped(go, geom.groups)
    for n0, n1, cols in _columns(x, geom, workspace):
        n, (_, G, kg, P), rows = n1 - n0, go4.shape, cols.shape[2]
        if kg * rows > (kg + rows) * P:
            # The per-sample products would outweigh their operands (many channels over few
            # positions: 8 x 4 MiB of products at 1024 channels of 7x7, for 3.2 MiB of
            # grad_out and input): lay the chunk's samples side by side along the positions
            # instead (a copy of each operand) and sum them inside one GEMM.
            got = go4[n0:n1].transpose(1, 2, 0, 3).reshape(G, kg, n * P)
            colst = cols.transpose(1, 2, 0, 3).reshape(G, rows, n * P)
            gw3 += np.matmul(got, colst.transpose(0, 2, 1))
        else:
            # one (K/G, P) x (P, rows) product per sample and group, summed over the chunk
            gw3 += np.matmul(go4[n0:n1], cols.transpose(0, 1, 3, 2)).sum(axis=0)
