"""Direct-loop convolution: every output is a sum over its window, computed in place.

Arrays are 5-D and C-contiguous: x (N, C, D, H, W), w (K, C/groups, KD, KH, KW),
out (N, K, OD, OH, OW). The innermost loop always runs along W over a precomputed valid range,
so it is branch-free and, at stride 1, contiguous (it vectorizes). The direct loops need no
workspace; their entry points take the ``workspace`` argument only to share im2col's signature.
"""

import numpy as np
from numba import njit, prange

from ._window import FASTMATH, valid_outputs


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(x, w, b, out, stride, dilation, padding, groups):
    N, C, D, H, W = x.shape
    K, Cg, KD, KH, KW = w.shape
    OD, OH, OW = out.shape[2:]
    Kg = K // groups
    for nk in prange(N * K):  # one (sample, output channel) plane per task: no write conflicts
        n, k = nk // K, nk % K
        o = out[n, k]
        o[:] = b[k]
        for c in range(Cg):
            xc = x[n, (k // Kg) * Cg + c]
            for kd in range(KD):
                od0, od1 = valid_outputs(kd * dilation[0] - padding[0], stride[0], D, OD)
                for kh in range(KH):
                    oh0, oh1 = valid_outputs(kh * dilation[1] - padding[1], stride[1], H, OH)
                    for kw in range(KW):
                        off = kw * dilation[2] - padding[2]
                        ow0, ow1 = valid_outputs(off, stride[2], W, OW)
                        wv = w[k, c, kd, kh, kw]
                        for od in range(od0, od1):
                            xd = xc[od * stride[0] + kd * dilation[0] - padding[0]]
                            for oh in range(oh0, oh1):
                                xrow = xd[oh * stride[1] + kh * dilation[1] - padding[1]]
                                orow = o[od, oh]
                                for ow in range(ow0, ow1):
                                    orow[ow] += wv * xrow[ow * stride[2] + off]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _grad_input(go, w, gx, stride, dilation, padding, groups):
    N, C, D, H, W = gx.shape
    K, Cg, KD, KH, KW = w.shape
    OD, OH, OW = go.shape[2:]
    Kg = K // groups
    for nc in prange(N * C):  # one input plane per task: the scatter below never races
        n, c = nc // C, nc % C
        g, cl = c // Cg, c % Cg
        gxc = gx[n, c]
        gxc[:] = 0
        for k in range(g * Kg, (g + 1) * Kg):
            gok = go[n, k]
            for kd in range(KD):
                od0, od1 = valid_outputs(kd * dilation[0] - padding[0], stride[0], D, OD)
                for kh in range(KH):
                    oh0, oh1 = valid_outputs(kh * dilation[1] - padding[1], stride[1], H, OH)
                    for kw in range(KW):
                        off = kw * dilation[2] - padding[2]
                        ow0, ow1 = valid_outputs(off, stride[2], W, OW)
                        wv = w[k, cl, kd, kh, kw]
                        for od in range(od0, od1):
                            gxd = gxc[od * stride[0] + kd * dilation[0] - padding[0]]
                            for oh in range(oh0, oh1):
                                gxrow = gxd[oh * stride[1] + kh * dilation[1] - padding[1]]
                                gorow = gok[od, oh]
                                for ow in range(ow0, ow1):
                                    gxrow[ow * stride[2] + off] += wv * gorow[ow]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _grad_weight(go, x, gw, stride, dilation, padding, groups):
    N, C, D, H, W = x.shape
    K, Cg, KD, KH, KW = gw.shape
    OD, OH, OW = go.shape[2:]
    Kg = K // groups
    for kc in prange(K * Cg):  # one (output, input channel) filter per task
        k, cl = kc // Cg, kc % Cg
        c = (k // Kg) * Cg + cl
        for kd in range(KD):
            od0, od1 = valid_outputs(kd * dilation[0] - padding[0], stride[0], D, OD)
            for kh in range(KH):
                oh0, oh1 = valid_outputs(kh * dilation[1] - padding[1], stride[1], H, OH)
                for kw in range(KW):
                    off = kw * dilation[2] - padding[2]
                    ow0, ow1 = valid_outputs(off, stride[2], W, OW)
                    gw[k, cl, kd, kh, kw] = 0
                    acc = gw[k, cl, kd, kh, kw]  # a zero of the array's own dtype
                    for n in range(N):
                        for od in range(od0, od1):
                            xd = x[n, c, od * stride[0] + kd * dilation[0] - padding[0]]
                            for oh in range(oh0, oh1):
                                xrow = xd[oh * stride[1] + kh * dilation[1] - padding[1]]
                                gorow = go[n, k, od, oh]
                                for ow in range(ow0, ow1):
                                    acc += gorow[ow] * xrow[ow * stride[2] + off]
                    gw[k, cl, kd, kh, kw] = acc


def forward(x, w, b, out, geom, workspace=None):
    """out = conv(x, w) + b, written over ``out``."""
    _forward(x, w, b, out, geom.stride, geom.dilation, geom.padding, geom.groups)


def grad_input(go, w, gx, geom, workspace=None):
    """gx = the input gradient of conv for output gradient ``go``, written over ``gx``."""
    _grad_input(go, w, gx, geom.stride, geom.dilation, geom.padding, geom.groups)


def grad_weight(go, x, gw, geom, workspace=None):
    """gw = the weight gradient of conv for output gradient ``go``, written over ``gw``."""
    _grad_weight(go, x, gw, geom.stride, geom.dilation, geom.padding, geom.groups)
