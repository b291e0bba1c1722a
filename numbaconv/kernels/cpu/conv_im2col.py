"""im2col convolution: unfold input windows into a column matrix, then one BLAS GEMM per group.

Column layout, per chunk of ``n`` samples: ``cols[c * KD*KH*KW + tap, j * P + p]`` for input
channel c, kernel tap, sample j of the chunk and output position p (P = OD*OH*OW). The rows of
group g are contiguous, so ``cols.reshape(G, C/G * taps, n * P)`` feeds one batched matmul that
covers the whole chunk: one large GEMM instead of a small one per sample. The GEMM is NumPy's
matmul (the BLAS NumPy was built with), which already runs near the machine's peak.

The batch is processed in chunks so the column buffer stays under ``workspace`` bytes. A
pointwise convolution (1x1x1 kernel, stride 1, no padding) needs no columns at all: the input
already is the column matrix, and the GEMM runs on it directly.
"""

import numpy as np
from numba import njit, prange

from ._window import FASTMATH, U, valid_outputs


@njit(parallel=False, cache=True)
def _im2col(x, n0, cols, kernel, stride, dilation, padding, out_size):
    N, C, D, H, W = x.shape
    KD, KH, KW = kernel
    OD, OH, OW = out_size
    sd, sh, sw = stride
    taps, P = KD * KH * KW, OD * OH * OW
    n = cols.shape[1] // P
    for rj in prange(C * taps * n):  # one (row, sample) segment per task
        r, j = rj // n, rj % n
        c, t = r // taps, r % taps
        offd = (t // (KH * KW)) * dilation[0] - padding[0]
        offh = ((t // KW) % KH) * dilation[1] - padding[1]
        offw = (t % KW) * dilation[2] - padding[2]
        od0, od1 = valid_outputs(offd, sd, D, OD)
        oh0, oh1 = valid_outputs(offh, sh, H, OH)
        ow0, ow1 = valid_outputs(offw, sw, W, OW)
        cols[r, j * P:(j + 1) * P] = 0
        for od in range(od0, od1):
            for oh in range(oh0, oh1):
                i, jj, base = od * sd + offd, oh * sh + offh, j * P + (od * OH + oh) * OW
                if sw == 1:  # unit stride spelled out: a contiguous copy LLVM vectorizes
                    for ow in range(ow0, ow1):
                        cols[r, U(base + ow)] = x[n0 + j, c, i, jj, U(ow + offw)]
                else:
                    for ow in range(ow0, ow1):
                        cols[r, U(base + ow)] = x[n0 + j, c, i, jj, U(ow * sw + offw)]


@njit(parallel=False, cache=True, fastmath=FASTMATH)
def _col2im(cols, n0, gx, kernel, stride, dilation, padding, out_size):
    N, C, D, H, W = gx.shape
    KD, KH, KW = kernel
    OD, OH, OW = out_size
    sd, sh, sw = stride
    taps, P = KD * KH * KW, OD * OH * OW
    n = cols.shape[1] // P
    for jc in prange(n * C):  # one input plane per task: overlapping windows never race
        j, c = jc // C, jc % C
        gx[n0 + j, c] = 0
        for t in range(taps):
            offd = (t // (KH * KW)) * dilation[0] - padding[0]
            offh = ((t // KW) % KH) * dilation[1] - padding[1]
            offw = (t % KW) * dilation[2] - padding[2]
            od0, od1 = valid_outputs(offd, sd, D, OD)
            oh0, oh1 = valid_outputs(offh, sh, H, OH)
            ow0, ow1 = valid_outputs(offw, sw, W, OW)
            r = c * taps + t
            for od in range(od0, od1):
                for oh in range(oh0, oh1):
                    i, jj, base = od * sd + offd, oh * sh + offh, j * P + (od * OH + oh) * OW
                    for ow in range(ow0, ow1):
                        gx[n0 + j, c, i, jj, U(ow * sw + offw)] += cols[r, U(base + ow)]


@njit(parallel=False, cache=True)
def _scatter_out(y, b, n0, out):
    """out[n0 + j, k, :] = y[k, j*P:(j+1)*P] + b[k]: GEMM layout to (N, K, P) plus bias."""
    K, P = out.shape[1], out.shape[2]
    n = y.shape[1] // P
    for jk in prange(n * K):
        j, k = jk // K, jk % K
        for p in range(P):
            out[n0 + j, k, U(p)] = y[k, U(j * P + p)] + b[k]


def _chunks(geom, itemsize, workspace):
    """Batch chunks [n0, n1) whose column buffer fits in ``workspace`` bytes (>= 1 sample)."""
    per_sample = geom.in_channels * np.prod(geom.kernel) * np.prod(geom.out_size) * itemsize
    size = int(max(1, min(geom.batch, workspace // max(per_sample, 1))))
    return [(n0, min(n0 + size, geom.batch)) for n0 in range(0, geom.batch, size)], size


def _is_pointwise(geom):
    return geom.kernel == (1, 1, 1) and geom.stride == (1, 1, 1) and geom.padding == (0, 0, 0)


def _columns(x, geom, workspace):
    """Yield (n0, n1, cols3) per chunk, cols3 of shape (G, C/G * taps, n * P)."""
    chunks, size = _chunks(geom, x.itemsize, workspace)
    rows = geom.in_channels * int(np.prod(geom.kernel))
    P = int(np.prod(geom.out_size))
    buf = np.empty(rows * size * P, dtype=x.dtype)  # allocated once, reused by every chunk
    for n0, n1 in chunks:
        cols = buf[:rows * (n1 - n0) * P].reshape(rows, (n1 - n0) * P)
        _im2col(x, n0, cols, geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size)
        yield n0, n1, cols.reshape(geom.groups, rows // geom.groups, -1)


def _gemm_layout(a, n0, n1, groups):
    """(N, K, *spatial)[n0:n1] -> (G, K/G, n * P), the layout of a GEMM result (a copy)."""
    n, K = n1 - n0, a.shape[1]
    return np.ascontiguousarray(a[n0:n1].reshape(n, K, -1).transpose(1, 0, 2)).reshape(groups, K // groups, -1)


def forward(x, w, b, out, geom, workspace):
    G = geom.groups
    w3 = w.reshape(G, w.shape[0] // G, -1)
    if _is_pointwise(geom):
        N = x.shape[0]
        np.matmul(w3, x.reshape(N, G, x.shape[1] // G, -1), out=out.reshape(N, G, w3.shape[1], -1))
        out += b.reshape(-1, 1, 1, 1)
        return
    out3 = out.reshape(out.shape[0], out.shape[1], -1)
    for n0, n1, cols in _columns(x, geom, workspace):
        if n1 - n0 == 1:  # one sample: the GEMM result already has the output's layout
            np.matmul(w3, cols, out=out3[n0].reshape(G, w3.shape[1], -1))
            out3[n0] += b.reshape(-1, 1)
        else:
            _scatter_out(np.matmul(w3, cols).reshape(out.shape[1], -1), b, n0, out3)


def grad_input(go, w, gx, geom, workspace):
    G = geom.groups
    w3t = w.reshape(G, w.shape[0] // G, -1).transpose(0, 2, 1)
    if _is_pointwise(geom):
        N = go.shape[0]
        np.matmul(w3t, go.reshape(N, G, go.shape[1] // G, -1), out=gx.reshape(N, G, w3t.shape[1], -1))
        return
    chunks, _ = _chunks(geom, go.itemsize, workspace)
    for n0, n1 in chunks:
        cols = np.matmul(w3t, _gemm_layout(go, n0, n1, G)).reshape(w3t.shape[1] * G, -1)
        _col2im(cols, n0, gx, geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size)


def grad_weight(go, x, gw, geom, workspace):
    G = geom.groups
    gw3 = gw.reshape(G, gw.shape[0] // G, -1)
    gw3[:] = 0
    if _is_pointwise(geom):
        N = x.shape[0]
        x4 = x.reshape(N, G, x.shape[1] // G, -1)
        go4 = go.reshape(N, G, go.shape[1] // G, -1)
        # one (K/G, P) x (P, C/G) product per sample and group, summed over the batch
        gw3 += np.matmul(go4, x4.transpose(0, 1, 3, 2)).sum(axis=0)
        return
    for n0, n1, cols in _columns(x, geom, workspace):
        gw3 += np.matmul(_gemm_layout(go, n0, n1, G), cols.transpose(0, 2, 1))
