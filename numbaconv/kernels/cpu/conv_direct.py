"""Direct-loop convolution: every output is a sum over its window, computed in place.

Arrays are 5-D and C-contiguous: x (N, C, D, H, W), w (K, C/groups, KD, KH, KW),
out (N, K, OD, OH, OW).

At stride 1 (``_*_flat``) the input is zero-padded once and each plane is treated as one flat
vector: kernel tap (kd, kh, kw) then reads the input at a constant offset from the output,
``q + (kd*Hp + kh)*Wp + kw`` on the padded grid, so a whole plane is one long contiguous loop that
vectorizes, with no bounds to check. Outputs are computed on the padded input's grid and the
columns past the true output width, which mix neighbouring rows, are dropped at the end: a few
percent of extra work for loops many times longer than one output row. The gradients use the same
grid, with ``grad_out`` placed on it and zeros in the dropped columns.

At larger strides (``_forward``, ``_grad_input``, ``_grad_weight``) the innermost loop runs along W
over a precomputed valid range, so it is branch-free; loops are ordered so that the rows being
accumulated stay in L1 while every channel and tap is added to them.

Arrays are indexed in full (``x[n, c, i, j, l]``) rather than through sub-array views: in a
parallel loop every view would atomically touch the parent's reference count, and threads
fighting over that one counter cost more than the arithmetic.

Depthwise convolutions (one input channel per group) run ``depthwise``'s loops instead, from
each entry point below: with no sum over channels to share a pass over the output, these loops
would do one tap per pass. A single input channel into several at stride 1 is the exception
for the weight gradient (``_single_input_channel``).

The direct loops need no workspace; their entry points take the ``workspace`` argument only to
share im2col's signature.

The forward pass takes an optional epilogue, ``(slope, lo, hi)``: each output, once its sum and
bias are complete, becomes ``clip(v if v >= 0 else slope * v, lo, hi)`` while it is still in
cache. That one formula is the identity (1, -inf, inf), ReLU (1, 0, inf), ReLU6 (1, 0, 6) and
leaky ReLU (slope, -inf, inf), so an inference graph fuses a convolution's activation into it
instead of reading the whole output again. A residual input (the shortcut of a residual block,
added before the activation) goes through ``epilogue_pass``.
"""

import numpy as np
from numba import njit, prange

from . import depthwise
from ._window import IDENTITY, U, activate, is_identity, parallel_kernel, valid_outputs

@njit(cache=True)
def epilogue_pass(out3, b, residual3, slope, lo, hi):
    """out3[n, k, :] = activate(out3[n, k, :] + b[k] + residual3[n, k, :]), in one pass over out3
    (residual3 of size 0: none). Serial, as im2col's copy kernels are (see conv_im2col.py): it
    runs between GEMMs."""
    N, K, P = out3.shape
    with_residual = residual3.size > 0
    for n in range(N):
        for k in range(K):
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


@parallel_kernel
def _forward(x, w, b, out, stride, dilation, padding, groups, slope, lo, hi):
    N, C, D, H, W = x.shape
    K, Cg, KD, KH, KW = w.shape
    OD, OH, OW = out.shape[2:]
    sd, sh, sw = stride
    Kg = K // groups
    fused = not is_identity(slope, lo, hi)
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
            if fused:  # the row is complete and still in L1
                for ow in range(OW):
                    out[n, k, od, oh, U(ow)] = activate(out[n, k, od, oh, U(ow)], slope, lo, hi)


@parallel_kernel
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


@parallel_kernel
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


@njit(inline="always", cache=True)
def _flat_span(plane_shape, kernel_shape, dilation):
    """Offset of every tap on the flat padded grid, and how many grid positions to compute."""
    Hp, Wp = plane_shape[1], plane_shape[2]
    KD, KH, KW = kernel_shape
    reach = ((KD - 1) * dilation[0] * Hp + (KH - 1) * dilation[1]) * Wp + (KW - 1) * dilation[2]
    return plane_shape[0] * Hp * Wp - reach


@njit(inline="always", cache=True)
def _tap_shift(kd, kh, kw, plane_shape, dilation):
    return (kd * dilation[0] * plane_shape[1] + kh * dilation[1]) * plane_shape[2] + kw * dilation[2]


@njit(cache=True)
def to_grid(go, n0, gog, plane, margin=0):
    """gog[j // m, k, j % m, margin:] = go[n0 + j, k] on the grid's output positions, zeros on
    the others and in the rest of the row (the ``margin`` before the grid positions and
    whatever follows them): those columns must add nothing to the gradients. gog is (n/m, K, m, Q + margins), Q the grid positions up to the last output
    (``_flat_span``): m samples side by side, as im2col's grid layout has them (m = 1 for the
    flat loops here). One pass, each element written once."""
    K, m = gog.shape[1:3]
    n = gog.shape[0] * m
    OD, OH, OW = go.shape[2:]
    Hp, Wp = plane
    for j in range(n):
        for k in range(K):
            gog[j // m, k, j % m] = 0
            for od in range(OD):
                for oh in range(OH):
                    base = margin + (od * Hp + oh) * Wp
                    for ow in range(OW):
                        gog[j // m, k, j % m, U(base + ow)] = go[n0 + j, k, od, oh, U(ow)]


@parallel_kernel
def _forward_flat(xp, w, b, out, dilation, slope, lo, hi):
    N, C = xp.shape[:2]
    K, Cg, KD, KH, KW = w.shape
    OD, OH, OW = out.shape[2:]
    Kg = K // (C // Cg)
    plane = xp.shape[2:]
    q_end = _flat_span(plane, (KD, KH, KW), dilation)
    dw = dilation[2]
    xf = xp.reshape(N, C, -1)
    for nk in prange(N * K):  # one (sample, output channel) plane per task
        n, k = nk // K, nk % K
        c0 = (k // Kg) * Cg
        acc = np.empty(q_end, dtype=xp.dtype)
        acc[:] = b[k]
        for c in range(Cg):
            for kd in range(KD):
                for kh in range(KH):
                    row = _tap_shift(kd, kh, 0, plane, dilation)
                    for kw in range(0, KW - KW % 3, 3):  # three taps per pass: one load and store of acc for three
                        s0 = row + kw * dw
                        s1, s2 = s0 + dw, s0 + 2 * dw
                        w0, w1, w2 = w[k, c, kd, kh, kw], w[k, c, kd, kh, kw + 1], w[k, c, kd, kh, kw + 2]
                        for q in range(q_end):
                            acc[U(q)] += (w0 * xf[n, c0 + c, U(q + s0)] + w1 * xf[n, c0 + c, U(q + s1)]
                                          + w2 * xf[n, c0 + c, U(q + s2)])
                    for kw in range(KW - KW % 3, KW):
                        shift = row + kw * dw
                        wv = w[k, c, kd, kh, kw]
                        for q in range(q_end):
                            acc[U(q)] += wv * xf[n, c0 + c, U(q + shift)]
        for od in range(OD):
            for oh in range(OH):
                base = (od * plane[1] + oh) * plane[2]
                for ow in range(OW):
                    out[n, k, od, oh, U(ow)] = activate(acc[U(base + ow)], slope, lo, hi)


@parallel_kernel
def _grad_input_flat(gog, w, gxp, dilation, margin):
    """gxp = the input gradient on the grid, from grad_out on the grid with ``margin`` >= 2 *
    dilation zeros on either side (``_on_grid``)."""
    N, C = gxp.shape[:2]
    K, Cg, KD, KH, KW = w.shape
    Kg = K // (C // Cg)
    plane = gxp.shape[2:]
    q_end = gog.shape[2] - 2 * margin
    dw = dilation[2]
    gxf = gxp.reshape(N, C, -1)
    for nc in prange(N * C):  # one input plane per task: the scatter below never races
        n, c = nc // C, nc % C
        k0, cl = (c // Cg) * Kg, c % Cg
        gxf[n, c] = 0
        for k in range(k0, k0 + Kg):
            for kd in range(KD):
                for kh in range(KH):
                    row = _tap_shift(kd, kh, 0, plane, dilation)
                    for kw in range(0, KW - KW % 3, 3):
                        # three taps of the row per pass, gathered: each input position takes
                        # its three products in one load and store, reading the margin's zeros
                        # where a tap does not reach it ((8, 64, 56x56) -> 64, 3x3: 30 -> 20 ms)
                        s0 = row + kw * dw
                        w0, w1, w2 = w[k, cl, kd, kh, kw], w[k, cl, kd, kh, kw + 1], w[k, cl, kd, kh, kw + 2]
                        g0 = margin - s0  # grad_out of tap kw at input position p: gog[p + g0]
                        for p in range(s0, s0 + 2 * dw + q_end):
                            gxf[n, c, U(p)] += (w0 * gog[n, k, U(p + g0)] + w1 * gog[n, k, U(p + g0 - dw)]
                                                + w2 * gog[n, k, U(p + g0 - 2 * dw)])
                    for kw in range(KW - KW % 3, KW):
                        shift = row + kw * dw
                        wv = w[k, cl, kd, kh, kw]
                        for q in range(q_end):
                            gxf[n, c, U(q + shift)] += wv * gog[n, k, U(margin + q)]


@parallel_kernel
def _grad_weight_flat(gog, xp, gw, dilation):
    N, C = xp.shape[:2]
    K, Cg, KD, KH, KW = gw.shape
    Kg = K // (C // Cg)
    plane = xp.shape[2:]
    q_end = gog.shape[2]
    dw = dilation[2]
    xf = xp.reshape(N, C, -1)
    for kc in prange(K * Cg):  # one (output, input channel) filter per task
        k, cl = kc // Cg, kc % Cg
        c = (k // Kg) * Cg + cl
        acc = np.zeros((KD, KH, KW), dtype=gw.dtype)
        # samples outside, taps inside: a sample's two planes stay in L1 while every tap reads
        # them (taps outside read all N planes from L2 once per tap: c1 of LeNet at batch 64,
        # 0.44 -> 0.31 ms; (8, 64, 56x56) -> 64, 3x3, 47 -> 25 ms). Three taps of a kernel row
        # per pass, three accumulators: each grad_out element loaded once for three
        # multiply-adds, and a third of the passes' fixed costs (a plane of LeNet's c2 has 136
        # grid positions: at batch 1, 53 -> 20 us)
        for n in range(N):
            for kd in range(KD):
                for kh in range(KH):
                    row = _tap_shift(kd, kh, 0, plane, dilation)
                    for kw in range(0, KW - KW % 3, 3):
                        s0 = row + kw * dw
                        s1, s2 = s0 + dw, s0 + 2 * dw
                        a0, a1, a2 = acc[kd, kh, kw], acc[kd, kh, kw + 1], acc[kd, kh, kw + 2]
                        for q in range(q_end):
                            v = gog[n, k, U(q)]
                            a0 += v * xf[n, c, U(q + s0)]
                            a1 += v * xf[n, c, U(q + s1)]
                            a2 += v * xf[n, c, U(q + s2)]
                        acc[kd, kh, kw], acc[kd, kh, kw + 1], acc[kd, kh, kw + 2] = a0, a1, a2
                    for kw in range(KW - KW % 3, KW):
                        shift = row + kw * dw
                        total = acc[kd, kh, kw]
                        for q in range(q_end):
                            total += gog[n, k, U(q)] * xf[n, c, U(q + shift)]
                        acc[kd, kh, kw] = total
        gw[k, cl] = acc


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


def _padded(x, geom):
    """x zero-padded onto the grid."""
    return place_on_grid(x, geom, np.empty((*x.shape[:2], *_grid_shape(geom)), dtype=x.dtype))


def _on_grid(go, geom, margin=0):
    """grad_out placed on the grid's output positions, zeros elsewhere, flattened to what the
    flat kernels read: the dropped columns must contribute nothing to the gradients. With
    ``margin`` zeros before and after the grid positions too (``_grad_input_flat``)."""
    grid = _grid_shape(geom)
    q_end = _flat_span(grid, geom.kernel, geom.dilation)
    gog = np.empty((*go.shape[:2], 1, q_end + 2 * margin), dtype=go.dtype)
    to_grid(go, 0, gog, grid[1:], margin)
    return gog.reshape(*go.shape[:2], -1)


def _single_input_channel(geom):
    """A convolution of a single input channel into several at stride 1 (a first layer on
    grayscale images or mono audio): its weight gradient runs the flat loops, not the depthwise
    ones. Those fill their plane buffer again for every output channel and pad the kernel to
    whole 3x3 blocks (5x5 to 6x6, 1x9 to 3x9), while the flat loops keep a sample's two planes in
    L1 for every tap. Measured, whole calls, depthwise -> flat: LeNet's c1 (1 -> 6, 5x5, 32x32)
    at batch 64 1.66 -> 0.87 ms, at batch 16 0.44 -> 0.31; (8, 1, 16000) -> 16, k = 9, 3.6 ->
    2.3. The forward pass gains only at batch 64 (0.66 -> 0.51, but 0.11 -> 0.17 at batch 8) and
    stays with the depthwise loops, as does every shape with more input channels (3x3 and 5x5,
    multiplier 1 or 4: the depthwise weight gradient 1.0-4.8x faster)."""
    return geom.in_channels == 1 < geom.out_channels and geom.stride == (1, 1, 1)


def forward(x, w, b, out, geom, workspace=None, epilogue=IDENTITY, residual=None):
    """out = epilogue(conv(x, w) + b + residual) (b, residual may be None), written over ``out``.

    A residual (an array of out's shape) is added after the loops, in one pass with the
    epilogue: the loops would have to read it inside their innermost accumulation otherwise."""
    if residual is not None:
        forward(x, w, None, out, geom)
        run_epilogue(out, b, epilogue, residual)
        return
    slope, lo, hi = (x.dtype.type(v) for v in epilogue)
    if depthwise.is_depthwise(geom):
        depthwise.forward(x, w, b, out, geom, slope, lo, hi)
        return
    if b is None:
        b = np.zeros(w.shape[0], dtype=w.dtype)
    if geom.stride == (1, 1, 1):
        _forward_flat(_padded(x, geom), w, b, out, geom.dilation, slope, lo, hi)
    else:
        _forward(x, w, b, out, geom.stride, geom.dilation, geom.padding, geom.groups, slope, lo, hi)


def grad_input(go, w, gx, geom, workspace=None):
    """gx = the input gradient of conv for output gradient ``go``, written over ``gx``."""
    if depthwise.is_depthwise(geom):
        depthwise.grad_input(go, w, gx, geom)
    elif geom.stride == (1, 1, 1):
        gxp = np.empty((*gx.shape[:2], *_grid_shape(geom)), dtype=gx.dtype)
        margin = 2 * geom.dilation[2]  # what the gathered triples of taps read past the grid positions
        _grad_input_flat(_on_grid(go, geom, margin), w, gxp, geom.dilation, margin)
        inner, outer = _window(gx.shape[2:], geom.padding, gxp.shape[2:])
        gx[...] = 0
        gx[(..., *inner)] = gxp[(..., *outer)]
    else:
        _grad_input(go, w, gx, geom.stride, geom.dilation, geom.padding, geom.groups)


def grad_weight(go, x, gw, geom, workspace=None):
    """gw = the weight gradient of conv for output gradient ``go``, written over ``gw``."""
    if depthwise.is_depthwise(geom) and not _single_input_channel(geom):
        depthwise.grad_weight(go, x, gw, geom)
    elif geom.stride == (1, 1, 1):
        _grad_weight_flat(_on_grid(go, geom), _padded(x, geom), gw, geom.dilation)
    else:
        _grad_weight(go, x, gw, geom.stride, geom.dilation, geom.padding, geom.groups)
