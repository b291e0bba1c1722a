"""im2col convolution on the GPU: an unfolding kernel, then the tiled GEMM of ``gemm.py``.

The twin of ``kernels/cpu/conv_im2col.py``, with its column layout: per chunk of ``n`` samples,
``cols[j, c * taps + t, p]``, so that ``cols`` viewed (n * G, C/G * taps, P) lines up with the
output viewed (n * G, K/G, P) and the weight viewed (G, K/G, C/G * taps): each direction is one
batched GEMM launch over every sample and group of the chunk (see ``gemm``'s modular batch
index), with no transposing copies. The input gradient scatters its columns back with
``_col2im``, written as a gather (each input element sums the column entries read from it), so
no two threads write one element and the result does not depend on thread order.

The batch is processed in chunks whose column buffer stays under ``workspace`` bytes (one chunk,
one launch of each kernel, for every shape of the suite at the default 256 MiB). The buffer is
kept for reuse by later calls, as on the CPU. A pointwise convolution needs no columns: the input
already is the column matrix.
"""

import math
import threading

from numba import cuda

from . import _launch
from ._launch import source
from ..cpu.conv_im2col import _chunk_size, _chunks, _is_pointwise
from .gemm import gemm


@cuda.jit(device=True, inline=True)
def _tap(t, KH, KW):
    return t // (KH * KW), (t // KW) % KH, t % KW


@cuda.jit
def _im2col(x, n0, cols, C, kernel, stride, dilation, padding, out_size):
    """cols[j, c*taps + t, p] = what tap t of channel c sees at output p of sample n0 + j.
    Grid: x = (row c*taps + t) * tiles + tile of the (OH, OW) plane, y = j * OD + od."""
    N, _, D, H, W = x.shape
    KD, KH, KW = kernel
    OD, OH, OW = out_size
    plane = OH * OW
    tiles = (plane + cuda.blockDim.x - 1) // cuda.blockDim.x
    r, q = cuda.blockIdx.x // tiles, (cuda.blockIdx.x % tiles) * cuda.blockDim.x + cuda.threadIdx.x
    if q >= plane:
        return
    j, od = cuda.blockIdx.y // OD, cuda.blockIdx.y % OD
    taps = KD * KH * KW
    c, t = r // taps, r % taps
    kd, kh, kw = _tap(t, KH, KW)
    oh, ow = q // OW, q % OW
    i = od * stride[0] + kd * dilation[0] - padding[0]
    h = oh * stride[1] + kh * dilation[1] - padding[1]
    w = ow * stride[2] + kw * dilation[2] - padding[2]
    if 0 <= i < D and 0 <= h < H and 0 <= w < W:
        cols[j, r, od * plane + q] = x[n0 + j, c, i, h, w]
    else:
        cols[j, r, od * plane + q] = 0


@_launch.per_dtype
def _col2im(nb):
    @cuda.jit
    def col2im(cols, n0, gx, C, kernel, stride, dilation, padding, out_size):
        """gx[n0 + j, c, i, h, w] = the sum of the column entries read from that element.
        Grid: x = c * tiles + tile of the (H, W) plane, y = j * D + i."""
        N, _, D, H, W = gx.shape
        KD, KH, KW = kernel
        OD, OH, OW = out_size
        taps = KD * KH * KW
        tiles = (H * W + cuda.blockDim.x - 1) // cuda.blockDim.x
        c, q = cuda.blockIdx.x // tiles, (cuda.blockIdx.x % tiles) * cuda.blockDim.x + cuda.threadIdx.x
        if q >= H * W:
            return
        j, i = cuda.blockIdx.y // D, cuda.blockIdx.y % D
        h, w = q // W, q % W
        acc = nb(0)
        for kd in range(KD):
            od = source(i, kd, stride[0], dilation[0], padding[0], OD)
            if od < 0:
                continue
            for kh in range(KH):
                oh = source(h, kh, stride[1], dilation[1], padding[1], OH)
                if oh < 0:
                    continue
                for kw in range(KW):
                    ow = source(w, kw, stride[2], dilation[2], padding[2], OW)
                    if ow >= 0:
                        acc += cols[j, c * taps + (kd * KH + kh) * KW + kw, (od * OH + oh) * OW + ow]
        gx[n0 + j, c, i, h, w] = acc

    return col2im


_scratch = threading.local()


def _buffer(geom, size, dtype):
    """(n, C * taps, P) column buffers for chunks of up to ``size`` samples, in device memory
    kept per thread for later calls (cudaMalloc and cudaFree per call synchronize the GPU)."""
    rows = geom.in_channels * math.prod(geom.kernel)
    count = size * rows * math.prod(geom.out_size)
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.dtype != dtype or buf.size < count:
        _scratch.buf = buf = _launch.empty((count,), dtype)

    def view(n):
        return buf[:n * count // size].reshape(n, rows, count // (size * rows))

    return view


def _geometry_args(geom):
    return geom.in_channels, geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size


def _gpu_chunk_size(geom, itemsize, workspace):
    """The CPU twin's chunk, capped so that the unfolding launches (grid y = samples x depth)
    stay within the hardware's grid."""
    depth = max(geom.in_size[0], geom.out_size[0])
    return max(1, min(_chunk_size(geom, itemsize, workspace), _launch.MAX_GRID_Y // depth))


def _columns(x, geom, workspace):
    """Yield (n0, n1, cols) per chunk, cols viewed (n * G, C/G * taps, P)."""
    G = geom.groups
    rows_g = geom.in_channels // G * math.prod(geom.kernel)
    if _is_pointwise(geom):
        yield 0, geom.batch, x.reshape(geom.batch * G, rows_g, math.prod(geom.out_size))
        return
    size = _gpu_chunk_size(geom, x.dtype.itemsize, workspace)
    view = _buffer(geom, size, x.dtype)
    for n0, n1 in _chunks(geom, size):
        cols = view(n1 - n0)
        grid, threads = _launch.plane_grid(geom.out_size[1] * geom.out_size[2], (n1 - n0) * geom.out_size[0], cols.shape[1])
        _im2col[grid, threads](x, n0, cols, *_geometry_args(geom))
        yield n0, n1, cols.reshape((n1 - n0) * G, rows_g, cols.shape[2])


def _grouped(a, lo, hi, G):
    """Samples lo:hi of (N, C, ...) ``a`` viewed ((hi - lo) * G, C/G, P)."""
    return a[lo:hi].reshape((hi - lo) * G, a.shape[1] // G, math.prod(a.shape[2:]))


def _weight3(w, G):
    return w.reshape(G, w.shape[0] // G, math.prod(w.shape[1:]))


def forward(x, w, b, out, geom, workspace):
    """out = conv(x, w) + b (b may be None), written over ``out``."""
    G = geom.groups
    for n0, n1, cols in _columns(x, geom, workspace):
        gemm(_weight3(w, G), cols, _grouped(out, n0, n1, G))
    if b is not None:
        _launch.add_bias(out, b)


def grad_input(go, w, gx, geom, workspace):
    """gx = the input gradient of conv for output gradient ``go``, written over ``gx``."""
    G = geom.groups
    if _is_pointwise(geom):
        gemm(_weight3(w, G), _grouped(go, 0, geom.batch, G), _grouped(gx, 0, geom.batch, G), trans_a=True)
        return
    size = _gpu_chunk_size(geom, go.dtype.itemsize, workspace)
    view = _buffer(geom, size, go.dtype)
    for n0, n1 in _chunks(geom, size):
        cols = view(n1 - n0)
        n, rows, P = cols.shape
        gemm(_weight3(w, G), _grouped(go, n0, n1, G), cols.reshape(n * G, rows // G, P), trans_a=True)
        D, H, W = gx.shape[2:]
        grid, threads = _launch.plane_grid(H * W, n * D, gx.shape[1])
        _col2im(gx.dtype)[grid, threads](cols, n0, gx, *_geometry_args(geom))


def grad_weight(go, x, gw, geom, workspace):
    """gw = the weight gradient of conv for output gradient ``go``, written over ``gw``."""
    G = geom.groups
    for n0, n1, cols in _columns(x, geom, workspace):
        # one (K/G, P) x (P, rows) product per sample and group, summed over the chunk's samples
        gemm(_grouped(go, n0, n1, G), cols, _weight3(gw, G), trans_b=True, reduce=n1 - n0, accumulate=n0 > 0)
