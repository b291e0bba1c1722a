"""Direct-loop convolution: every output is a sum over its window, computed in place.

Arrays are 5-D and C-contiguous: x (N, C, D, H, W), w (K, C/groups, KD, KH, KW),
out (N, K, OD, OH, OW). The innermost loop always runs along W over a precomputed valid range,
so it is branch-free and, at stride 1, contiguous (it vectorizes).

Arrays are indexed in full (``x[n, c, i, j, l]``) rather than through sub-array views: in a
parallel loop every view would atomically touch the parent's reference count, and threads
fighting over that one counter cost more than the arithmetic.

The direct loops need no workspace; their entry points take the ``workspace`` argument only to
share im2col's signature.
"""

from numba import njit, prange

from ._window import FASTMATH, valid_outputs


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(x, w, b, out, stride, dilation, padding, groups):
    N, C, D, H, W = x.shape
    K, Cg, KD, KH, KW = w.shape
    OD, OH, OW = out.shape[2:]
    sd, sh, sw = stride
    Kg = K // groups
    for nk in prange(N * K):  # one (sample, output channel) plane per task: no write conflicts
        n, k = nk // K, nk % K
        out[n, k] = b[k]
        for c in range(Cg):
            ci = (k // Kg) * Cg + c
            for kd in range(KD):
                offd = kd * dilation[0] - padding[0]
                od0, od1 = valid_outputs(offd, sd, D, OD)
                for kh in range(KH):
                    offh = kh * dilation[1] - padding[1]
                    oh0, oh1 = valid_outputs(offh, sh, H, OH)
                    for kw in range(KW):
                        offw = kw * dilation[2] - padding[2]
                        ow0, ow1 = valid_outputs(offw, sw, W, OW)
                        wv = w[k, c, kd, kh, kw]
                        for od in range(od0, od1):
                            for oh in range(oh0, oh1):
                                i, j = od * sd + offd, oh * sh + offh
                                for ow in range(ow0, ow1):
                                    out[n, k, od, oh, ow] += wv * x[n, ci, i, j, ow * sw + offw]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _grad_input(go, w, gx, stride, dilation, padding, groups):
    N, C, D, H, W = gx.shape
    K, Cg, KD, KH, KW = w.shape
    OD, OH, OW = go.shape[2:]
    sd, sh, sw = stride
    Kg = K // groups
    for nc in prange(N * C):  # one input plane per task: the scatter below never races
        n, c = nc // C, nc % C
        g, cl = c // Cg, c % Cg
        gx[n, c] = 0
        for k in range(g * Kg, (g + 1) * Kg):
            for kd in range(KD):
                offd = kd * dilation[0] - padding[0]
                od0, od1 = valid_outputs(offd, sd, D, OD)
                for kh in range(KH):
                    offh = kh * dilation[1] - padding[1]
                    oh0, oh1 = valid_outputs(offh, sh, H, OH)
                    for kw in range(KW):
                        offw = kw * dilation[2] - padding[2]
                        ow0, ow1 = valid_outputs(offw, sw, W, OW)
                        wv = w[k, cl, kd, kh, kw]
                        for od in range(od0, od1):
                            for oh in range(oh0, oh1):
                                i, j = od * sd + offd, oh * sh + offh
                                for ow in range(ow0, ow1):
                                    gx[n, c, i, j, ow * sw + offw] += wv * go[n, k, od, oh, ow]


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
                                    acc += go[n, k, od, oh, ow] * x[n, c, i, j, ow * sw + offw]
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
