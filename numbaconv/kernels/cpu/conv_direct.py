"""Direct-loop convolution: every output is a sum over its window, computed in place.

Arrays are 5-D and C-contiguous: x (N, C, D, H, W), w (K, C/groups, KD, KH, KW),
out (N, K, OD, OH, OW). The innermost loop always runs along W over a precomputed valid range,
so it is branch-free and, at stride 1, contiguous (it vectorizes). Loops are ordered so that the
rows being accumulated stay in L1 while every channel and tap is added to them.

Arrays are indexed in full (``x[n, c, i, j, l]``) rather than through sub-array views: in a
parallel loop every view would atomically touch the parent's reference count, and threads
fighting over that one counter cost more than the arithmetic.

The direct loops need no workspace; their entry points take the ``workspace`` argument only to
share im2col's signature.
"""

import numpy as np
from numba import njit, prange

from ._window import FASTMATH, U, valid_outputs


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(x, w, b, out, stride, dilation, padding, groups):
    N, C, D, H, W = x.shape
    K, Cg, KD, KH, KW = w.shape
    OD, OH, OW = out.shape[2:]
    sd, sh, sw = stride
    Kg = K // groups
    for task in prange(N * K * OD):  # one (sample, output channel, depth) slab per task
        n, k, od = task // (K * OD), (task // OD) % K, task % OD
        c0 = (k // Kg) * Cg
        for oh in range(OH):
            # one output row accumulates every channel and tap while it sits in L1
            out[n, k, od, oh, :] = b[k]
            for c in range(Cg):
                for kd in range(KD):
                    i = od * sd + kd * dilation[0] - padding[0]
                    if i < 0 or i >= D:
                        continue
                    for kh in range(KH):
                        j = oh * sh + kh * dilation[1] - padding[1]
                        if j < 0 or j >= H:
                            continue
                        for kw in range(KW):
                            off = kw * dilation[2] - padding[2]
                            ow0, ow1 = valid_outputs(off, sw, W, OW)
                            wv = w[k, c, kd, kh, kw]
                            if sw == 1:  # unit stride spelled out, so the loop vectorizes
                                for ow in range(ow0, ow1):
                                    out[n, k, od, oh, U(ow)] += wv * x[n, c0 + c, i, j, U(ow + off)]
                            else:
                                for ow in range(ow0, ow1):
                                    out[n, k, od, oh, U(ow)] += wv * x[n, c0 + c, i, j, U(ow * sw + off)]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _grad_input(go, w, gx, stride, dilation, padding, groups):
    N, C, D, H, W = gx.shape
    K, Cg, KD, KH, KW = w.shape
    OD, OH, OW = go.shape[2:]
    sd, sh, sw = stride
    Kg = K // groups
    for nc in prange(N * C):  # one input plane per task: the scatter below never races
        n, c = nc // C, nc % C
        k0, cl = (c // Cg) * Kg, c % Cg
        gx[n, c] = 0
        for od in range(OD):
            for oh in range(OH):
                # scatter one output row of every channel: the input rows it hits stay in L1
                for k in range(k0, k0 + Kg):
                    for kd in range(KD):
                        i = od * sd + kd * dilation[0] - padding[0]
                        if i < 0 or i >= D:
                            continue
                        for kh in range(KH):
                            j = oh * sh + kh * dilation[1] - padding[1]
                            if j < 0 or j >= H:
                                continue
                            for kw in range(KW):
                                off = kw * dilation[2] - padding[2]
                                ow0, ow1 = valid_outputs(off, sw, W, OW)
                                wv = w[k, cl, kd, kh, kw]
                                if sw == 1:
                                    for ow in range(ow0, ow1):
                                        gx[n, c, i, j, U(ow + off)] += wv * go[n, k, od, oh, U(ow)]
                                else:
                                    for ow in range(ow0, ow1):
                                        gx[n, c, i, j, U(ow * sw + off)] += wv * go[n, k, od, oh, U(ow)]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _grad_weight(go, x, gw, stride, dilation, padding, groups):
    N, C, D, H, W = x.shape
    K, Cg, KD, KH, KW = gw.shape
    OD, OH, OW = go.shape[2:]
    sd, sh, sw = stride
    Kg = K // groups
    for kc in prange(K * Cg):  # one (output, input channel) filter per task
        k, cl = kc // Cg, kc % Cg
        c = (k // Kg) * Cg + cl
        for kd in range(KD):
            offd = kd * dilation[0] - padding[0]
            od0, od1 = valid_outputs(offd, sd, D, OD)
            for kh in range(KH):
                offh = kh * dilation[1] - padding[1]
                oh0, oh1 = valid_outputs(offh, sh, H, OH)
                for kw in range(KW):
                    offw = kw * dilation[2] - padding[2]
                    ow0, ow1 = valid_outputs(offw, sw, W, OW)
                    gw[k, cl, kd, kh, kw] = 0
                    acc = gw[k, cl, kd, kh, kw]  # a zero of the array's own dtype
                    for n in range(N):
                        for od in range(od0, od1):
                            for oh in range(oh0, oh1):
                                i, j = od * sd + offd, oh * sh + offh
                                for ow in range(ow0, ow1):
                                    acc += go[n, k, od, oh, U(ow)] * x[n, c, i, j, U(ow * sw + offw)]
                    gw[k, cl, kd, kh, kw] = acc


def forward(x, w, b, out, geom, workspace=None):
    """out = conv(x, w) + b (b may be None), written over ``out``."""
    if b is None:
        b = np.zeros(w.shape[0], dtype=w.dtype)
    _forward(x, w, b, out, geom.stride, geom.dilation, geom.padding, geom.groups)


def grad_input(go, w, gx, geom, workspace=None):
    """gx = the input gradient of conv for output gradient ``go``, written over ``gx``."""
    _grad_input(go, w, gx, geom.stride, geom.dilation, geom.padding, geom.groups)


def grad_weight(go, x, gw, geom, workspace=None):
    """gw = the weight gradient of conv for output gradient ``go``, written over ``gw``."""
    _grad_weight(go, x, gw, geom.stride, geom.dilation, geom.padding, geom.groups)
