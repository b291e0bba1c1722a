"""Direct convolution on the GPU: each output is a sum over its window, no column buffer.

The twin of ``kernels/cpu/conv_direct.py``; arrays are 5-D and C-contiguous: x (N, C, D, H, W),
w (K, C/groups, KD, KH, KW), out (N, K, OD, OH, OW).

Forward: a block computes a TH x TW tile of one output plane for KB output channels of one
group (a register array of KB sums per thread). For each group of up to CB input channels and
each depth tap it stages in shared memory the input patches the tile reads, (TH - 1) * stride +
(KH - 1) * dilation + 1 rows by the same in W, with zeros in the padding, and their KB x KH x KW
weights; every staged input value is then read by up to KH * KW threads and feeds KB
multiply-adds, the weights are read as broadcasts, and a pair of barriers serves CB channels.
When one patch does not fit in shared memory (very large dilations or strides), the same block
reads its inputs from global memory instead.

grad_input is a gather: a thread per input element sums ``w * grad_out`` over the output
positions whose windows read it, so no two threads write one element. grad_weight: a thread per
weight element and slice of the output rows (sample, depth, row), each row's valid columns in a
loop with no bounds to check; the slices' sums are then added by a second kernel
(deterministic: no atomics).

The direct kernels need no workspace; their entry points take the argument only to share
im2col's signature.
"""

import functools

from numba import cuda

from . import _launch
from ._launch import SHARED_BYTES, THREADS, ceil_div, numba_type, pow2_at_least, source, valid_outputs

#: Output channels a forward block computes at most (each thread holds KB sums).
MAX_KB = 8

#: Input channels a forward block stages at once at most, and the shared memory they may take:
#: more channels per pair of barriers, while several blocks still fit on one SM.
MAX_CB = 8
STAGE_BYTES = SHARED_BYTES // 3


@functools.cache
def _forward_kernel(dtype, KB, staged):
    nb = numba_type(dtype)

    @cuda.jit
    def forward(x, w, b, out, stride, dilation, padding, groups, tiles_w, tiles, patch_h, patch_w, CB):
        N, C, D, H, W = x.shape
        K, Cg, KD, KH, KW = w.shape
        OD, OH, OW = out.shape[2], out.shape[3], out.shape[4]
        sd, sh, sw = stride
        dd, dh, dw = dilation
        pd, ph, pw = padding
        Kg = K // groups
        TW, TH = cuda.blockDim.x, cuda.blockDim.y
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid, nthreads = ty * TW + tx, TW * TH
        slab, tile = cuda.blockIdx.x // tiles, cuda.blockIdx.x % tiles  # slab: (sample, depth)
        n, od = slab // OD, slab % OD
        oh0, ow0 = (tile // tiles_w) * TH, (tile % tiles_w) * TW
        oh, ow = oh0 + ty, ow0 + tx
        ktiles = (Kg + KB - 1) // KB
        g, kt = cuda.blockIdx.y // ktiles, cuda.blockIdx.y % ktiles
        k0 = g * Kg + kt * KB
        kn = min(KB, Kg - kt * KB)  # output channels of this block (the group's last may be short)
        taps2 = KH * KW
        h0, w0 = oh0 * sh - ph, ow0 * sw - pw  # the patch's first input row and column
        wbase = patch_h * patch_w  # the staged weights follow the patch
        shared = cuda.shared.array(0, nb)
        acc = cuda.local.array(KB, nb)
        for q in range(KB):
            acc[q] = 0
        wofs = CB * wbase  # the staged weights follow the CB patches
        wsize = KB * taps2
        for c0 in range(0, Cg, CB):
            cb = min(CB, Cg - c0)  # input channels staged together (the last group may be short)
            for kd in range(KD):
                i = od * sd + kd * dd - pd
                if i < 0 or i >= D:  # the same for the whole block: no thread skips a barrier alone
                    continue
                if staged:
                    cuda.syncthreads()  # every thread is done with the previous patches
                    for e in range(tid, cb * wbase, nthreads):
                        cc, pe = e // wbase, e % wbase
                        hh, ww = h0 + pe // patch_w, w0 + pe % patch_w
                        v = nb(0)
                        if 0 <= hh < H and 0 <= ww < W:
                            v = x[n, g * Cg + c0 + cc, i, hh, ww]
                        shared[e] = v
                    for e in range(tid, cb * wsize, nthreads):
                        cc, we = e // wsize, e % wsize
                        q, t = we // taps2, we % taps2
                        v = nb(0)
                        if q < kn:
                            v = w[k0 + q, c0 + cc, kd, t // KW, t % KW]
                        shared[wofs + e] = v
                    cuda.syncthreads()
                    for cc in range(cb):
                        for kh in range(KH):
                            row = cc * wbase + (ty * sh + kh * dh) * patch_w + tx * sw
                            wrow = wofs + cc * wsize + kh * KW
                            for kw in range(KW):
                                v = shared[row + kw * dw]
                                for q in range(KB):
                                    acc[q] += shared[wrow + q * taps2 + kw] * v
                elif oh < OH and ow < OW:
                    for cc in range(cb):
                        for kh in range(KH):
                            hh = oh * sh + kh * dh - ph
                            if hh < 0 or hh >= H:
                                continue
                            for kw in range(KW):
                                ww = ow * sw + kw * dw - pw
                                if 0 <= ww < W:
                                    v = x[n, g * Cg + c0 + cc, i, hh, ww]
                                    for q in range(KB):  # a constant trip count keeps acc in registers
                                        if q < kn:
                                            acc[q] += w[k0 + q, c0 + cc, kd, kh, kw] * v
        if oh < OH and ow < OW:
            for q in range(KB):
                if q < kn:
                    out[n, k0 + q, od, oh, ow] = acc[q] + b[k0 + q]

    return forward


def _plane_tile(OH, OW):
    """(TW, TH): up to THREADS threads, as wide as the output rows (coalesced along W)."""
    TW = pow2_at_least(OW, 64)
    return TW, pow2_at_least(OH, THREADS // TW)


def forward(x, w, b, out, geom, workspace=None):
    """out = conv(x, w) + b (b may be None), written over ``out``."""
    N, K, OD, OH, OW = out.shape
    if out.size == 0:
        return
    if b is None:
        b = _launch.zeros((K,), w.dtype)
    Kg = K // geom.groups
    KB = pow2_at_least(min(Kg, MAX_KB), MAX_KB)
    TW, TH = _plane_tile(OH, OW)
    KH, KW = geom.kernel[1:]
    patch_h = (TH - 1) * geom.stride[1] + (KH - 1) * geom.dilation[1] + 1
    patch_w = (TW - 1) * geom.stride[2] + (KW - 1) * geom.dilation[2] + 1
    per_channel = (patch_h * patch_w + KB * KH * KW) * x.dtype.itemsize
    staged = per_channel <= SHARED_BYTES
    CB = max(1, min(geom.in_channels // geom.groups, MAX_CB, STAGE_BYTES // per_channel)) if staged else 1
    shared = CB * per_channel
    tiles_w = ceil_div(OW, TW)
    tiles = ceil_div(OH, TH) * tiles_w
    grid = (N * OD * tiles, geom.groups * ceil_div(Kg, KB))
    kernel = _forward_kernel(x.dtype, KB, staged)
    kernel[grid, (TW, TH), 0, shared if staged else 0](
        x, w, _launch.as_device(b), out, geom.stride, geom.dilation, geom.padding, geom.groups,
        tiles_w, tiles, patch_h, patch_w, CB)


@_launch.per_dtype
def _grad_input(nb):
    @cuda.jit
    def grad_input(go, w, gx, stride, dilation, padding, groups):
        N, C, D, H, W = gx.shape
        K, Cg, KD, KH, KW = w.shape
        OD, OH, OW = go.shape[2], go.shape[3], go.shape[4]
        Kg = K // groups
        # grid: x = c * tiles + tile of the (H, W) plane, y = n * D + i
        tiles = (H * W + cuda.blockDim.x - 1) // cuda.blockDim.x
        c, q = cuda.blockIdx.x // tiles, (cuda.blockIdx.x % tiles) * cuda.blockDim.x + cuda.threadIdx.x
        if q >= H * W:
            return
        n, i = cuda.blockIdx.y // D, cuda.blockIdx.y % D
        h, x_w = q // W, q % W
        k0, cl = (c // Cg) * Kg, c % Cg
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
                    ow = source(x_w, kw, stride[2], dilation[2], padding[2], OW)
                    if ow < 0:
                        continue
                    for k in range(k0, k0 + Kg):
                        acc += w[k, cl, kd, kh, kw] * go[n, k, od, oh, ow]
        gx[n, c, i, h, x_w] = acc

    return grad_input


def grad_input(go, w, gx, geom, workspace=None):
    """gx = the input gradient of conv for output gradient ``go``, written over ``gx``."""
    N, C, D, H, W = gx.shape
    if gx.size:
        for n0, n1 in _launch.batch_slices(N, D):
            grid, threads = _launch.plane_grid(H * W, (n1 - n0) * D, C)
            _grad_input(gx.dtype)[grid, threads](go[n0:n1], w, gx[n0:n1], geom.stride, geom.dilation, geom.padding,
                                                 geom.groups)


@_launch.per_dtype
def _grad_weight(nb):
    @cuda.jit
    def grad_weight(go, x, gw, partial, stride, dilation, padding, groups, span):
        """partial[s, e] = weight element e's sum over the output rows (n, od, oh) numbered
        [s * span, (s + 1) * span), each row's valid columns in one branch-free loop."""
        N, C, D, H, W = x.shape
        K, Cg, KD, KH, KW = gw.shape
        OD, OH, OW = go.shape[2], go.shape[3], go.shape[4]
        Kg = K // groups
        e, s = cuda.grid(1), cuda.blockIdx.y
        if e >= gw.size:
            return
        kw, kh, kd = e % KW, (e // KW) % KH, (e // (KW * KH)) % KD
        cl, k = (e // (KW * KH * KD)) % Cg, e // (KW * KH * KD * Cg)
        c = (k // Kg) * Cg + cl
        offd, offh = kd * dilation[0] - padding[0], kh * dilation[1] - padding[1]
        offw = kw * dilation[2] - padding[2]
        ow0, ow1 = valid_outputs(offw, stride[2], W, OW)
        acc = nb(0)
        for row in range(s * span, min(N * OD * OH, (s + 1) * span)):
            oh, od, n = row % OH, (row // OH) % OD, row // (OH * OD)
            i, h = od * stride[0] + offd, oh * stride[1] + offh
            if 0 <= i < D and 0 <= h < H:
                for ow in range(ow0, ow1):
                    acc += go[n, k, od, oh, ow] * x[n, c, i, h, ow * stride[2] + offw]
        partial[s, e] = acc

    return grad_weight


#: Threads the weight gradient aims for: a thread per (weight element, slice of the batch and
#: output positions), slices added up by a second kernel. Enough to fill a large GPU when the
#: weight is small (a network's first layers) and the sums long.
GRAD_WEIGHT_THREADS = 1 << 17


def _splits(geom, size):
    """Slices of the output rows for a weight of ``size`` elements: each of at least THREADS
    terms, as many as bring the threads to GRAD_WEIGHT_THREADS."""
    OD, OH, OW = geom.out_size
    rows = geom.batch * OD * OH
    return max(1, min(rows, ceil_div(rows * OW, THREADS), ceil_div(GRAD_WEIGHT_THREADS, size)))


def grad_weight(go, x, gw, geom, workspace=None):
    """gw = the weight gradient of conv for output gradient ``go``, written over ``gw``."""
    rows = geom.batch * geom.out_size[0] * geom.out_size[1]
    size = gw.size
    flat = _launch.flat(gw)
    splits = _splits(geom, size)
    partial = flat.reshape(1, size) if splits == 1 else _launch.empty((splits, size), gw.dtype)
    blocks, threads = _launch.line(size)
    _grad_weight(gw.dtype)[(blocks, splits), threads](
        go, x, gw, partial, geom.stride, geom.dilation, geom.padding, geom.groups, ceil_div(rows, splits))
    if splits > 1:
        _launch.sum_rows(partial, flat)
