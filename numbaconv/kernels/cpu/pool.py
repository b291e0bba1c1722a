"""Pooling kernels: max and average over windows given as per-dimension tables.

Every pooling op (sliding-window max / average with any stride, padding, dilation and
ceil_mode, and adaptive max / average) is described by the same tables, ``PoolGeometry.windows()``
(cached: built once per window layout, not per call), taken from the geometry with its fully
read trailing dimensions merged (``PoolGeometry.coalesced()``: global pooling reads one
contiguous run per plane): along dimension ``dim``, output position ``o`` reads
``count[dim, o]`` input positions from ``first[dim, o]`` on, ``step[dim]`` apart, the padding
already cut away. So the loops below have no bounds checks and exist once for all the ops.
Average pooling divides each window's sum by the product of its three ``divisor`` factors.
One case has loops of its own: one window per plane that reads the whole plane (global average
pooling, the head of every ResNet and MobileNet), where the general loops' per-window cost
outweighed a 49-element sum (``_whole_plane_avg``).

Arrays are C-contiguous, x (N, C, D, H, W) and out (N, C, OD, OH, OW); 1-D and 2-D calls are
views with singleton dimensions. Max pooling sees them as (N * C, plane): its indices are flat
positions in the input's (D, H, W) plane, as PyTorch returns them, and its window tables are
per flat output position (``_plane_windows``). Average pooling sees the (sample, channel)
planes as one axis, (N * C, D, H, W). Max pooling and the backward loops run one plane per task
(so the backward scatter never races); average pooling's forward one (plane, output depth) slab. Arrays are indexed in full
(``x[n, c, i, j, l]``) rather than through sub-array views, which would contend on the parent's
reference count inside the parallel loops.
"""

import math

import numpy as np
from numba import prange

from ._window import U, parallel_kernel


@parallel_kernel  # not streaming: its serial twin does not vectorize the gather (2-4x slower)
def _max_forward(x, out, idx, base, count, taps, step, size, with_indices):
    """out = the max of each window, idx = its flat position in the plane (if ``with_indices``).

    x (P, plane) and out, idx (P, output plane): planes flattened, windows from
    ``_plane_windows``. PyTorch's rule: scan the window in order; a value replaces the max when
    it is larger or NaN, so ties keep the first maximum and NaN propagates. A window that reads
    no input (possible only with dilation reaching past the input) gives -inf and its first
    candidate position.

    The loop over taps is outside the loop over outputs: the inner loop then runs over a whole
    output plane with a select in place of a branch (branches on random data mispredict half the
    time: 3-4x slower), and LLVM vectorizes it. Taps past an output's window (edge windows)
    read a clamped position and are discarded; each window still sees its taps in order.
    """
    P, L = x.shape
    OP = out.shape[1]
    sd, sh, sw = step
    H, W = size[1], size[2]
    if L == 0:
        taps = (0, 0, 0)
    for p in prange(P):
        for o in range(OP):
            out[p, U(o)] = -np.inf
            if with_indices:
                idx[p, U(o)] = base[U(o)]
        for a in range(taps[0]):
            for b in range(taps[1]):
                for e in range(taps[2]):
                    t = (a * sd * H + b * sh) * W + e * sw
                    for o in range(OP):
                        pos = min(base[U(o)] + t, L - 1)
                        v = x[p, U(pos)]
                        best = out[p, U(o)]
                        inside = (a < count[0, U(o)]) & (b < count[1, U(o)]) & (e < count[2, U(o)])
                        take = inside & ((v > best) | (v != v))
                        out[p, U(o)] = v if take else best
                        if with_indices:
                            idx[p, U(o)] = pos if take else idx[p, U(o)]


#: Max pooling without indices runs ``_max_separable`` for windows of more taps than this: at
#: 2x2 its two passes save nothing and their short row loops cost more than ``_max_forward``'s
#: loops over whole planes. Measured, ms, separable / ``_max_forward`` with indices, taking turns
#: in one process (2 cores): ResNet's stem pooling (1, 64, 112x112) 3x3/2 0.71 / 1.67, at batch
#: 8 8.3 / 14.3 (PyTorch 3.3 and 25); (8, 96, 55x55) 3x3/2 3.5 / 4.1; (8, 64, 56x56) 3x3/1 1.8
#: / 7.0; LeNet's (64, 6, 28x28) 2x2/2 0.33 / 0.15.
SEPARABLE_MIN_TAPS = 4


@parallel_kernel
def _max_separable(x, out, first, count, step, inner):
    """out = the max of each window, as ``_max_forward`` takes it without indices, in two passes
    per plane: the max along W of each input row over each output column's window, then for
    each output row the max, column by column, of the rows its window covers along D and H.
    ``inner`` = (o0, o1, stride): the output columns o0 <= o < o1 whose windows are whole and
    ``stride`` apart, which the first pass takes tap by tap in loops over columns that
    vectorize (stride 1 and 2 spelled out: LLVM then loads pairs and shuffles instead of
    gathering); the columns at the edges, window by window.

    The max of a window does not depend on the order its values are scanned in: a NaN anywhere
    gives NaN, as in ``_max_forward``; so the result is the same, but for the sign of a zero
    tied with a zero of the other sign. ``_max_forward`` gathers every tap of every output,
    with its window tables."""
    P, D, H, W = x.shape
    OD, OH, OW = out.shape[1:]
    sd, sh, sw = step
    o0, o1, stride = inner
    taps = count[2, o0] if o1 > o0 else 0
    for p in prange(P):
        rows = np.empty((D, H, OW), dtype=x.dtype)  # each input row's max over each column window
        for i in range(D):
            for j in range(H):
                for o in range(OW):
                    if o0 <= o < o1:
                        rows[i, j, U(o)] = -np.inf
                        continue
                    best = -np.inf
                    f = first[2, o]
                    for e in range(count[2, o]):
                        v = x[p, i, j, U(f + e * sw)]
                        best = v if (v > best) | (v != v) else best
                    rows[i, j, U(o)] = best
                for e in range(taps):
                    off = first[2, o0] - o0 * stride + e * sw  # column o's tap e reads o * stride + off
                    if stride == 1:
                        for o in range(o0, o1):
                            v, best = x[p, i, j, U(o + off)], rows[i, j, U(o)]
                            rows[i, j, U(o)] = v if (v > best) | (v != v) else best
                    elif stride == 2:
                        for o in range(o0, o1):
                            v, best = x[p, i, j, U(2 * o + off)], rows[i, j, U(o)]
                            rows[i, j, U(o)] = v if (v > best) | (v != v) else best
                    else:
                        for o in range(o0, o1):
                            v, best = x[p, i, j, U(o * stride + off)], rows[i, j, U(o)]
                            rows[i, j, U(o)] = v if (v > best) | (v != v) else best
        for od in range(OD):
            for oh in range(OH):
                for o in range(OW):
                    out[p, od, oh, U(o)] = -np.inf
                for a in range(count[0, od]):
                    i = first[0, od] + a * sd
                    for b in range(count[1, oh]):
                        j = first[1, oh] + b * sh
                        for o in range(OW):
                            v, best = rows[i, j, U(o)], out[p, od, oh, U(o)]
                            out[p, od, oh, U(o)] = v if (v > best) | (v != v) else best


def _inner_columns(g):
    """(o0, o1, stride) for ``_max_separable``: the longest run of output columns whose windows
    along W are all as long as the longest and evenly spaced (sliding windows away from the
    padding and ``ceil_mode``'s last window); (0, 0, 1) when there are fewer than two."""
    def make():
        first, count = g.windows()
        OW = g.out_size[2]
        f, c = first[2, :OW], count[2, :OW]
        full = np.flatnonzero(c == c.max(initial=0))
        if OW < 2 or full.size < 2:
            return (0, 0, 1)
        o0, o1 = int(full[0]), int(full[-1]) + 1
        stride = int(f[o0 + 1] - f[o0])
        while o1 > o0 and not (np.all(c[o0:o1] == c[o0]) and np.all(np.diff(f[o0:o1]) == stride)):
            o1 -= 1
        return (o0, o1, stride) if o1 - o0 >= 2 and stride > 0 else (0, 0, 1)

    return g._memo("inner_columns", make)


@parallel_kernel(streaming=True)
def _index_range(idx, nonempty, lohi):
    """lohi[p] = (min, max) of plane p's indices over the windows that read something; left as
    given (int64's max, its min) where none did. One read of the indices, where NumPy's min and
    max took two: the check before a max pooling backward over (8, 64, 56x56) took longer than
    the backward's own kernel."""
    P, OP = idx.shape
    for p in prange(P):
        lo, hi = lohi[p, 0], lohi[p, 1]
        for o in range(OP):
            v = idx[p, U(o)]
            read = nonempty[U(o)]
            lo = min(lo, v) if read else lo
            hi = max(hi, v) if read else hi
        lohi[p, 0], lohi[p, 1] = lo, hi


@parallel_kernel(streaming=True)
def _max_backward(go, idx, gx, nonempty):
    """gx (P, plane) = every output gradient added at the position its max was read from.

    go, idx (P, output plane); ``nonempty[o]``: whether window o read anything (one that read
    nothing routes nothing).
    """
    P, L = gx.shape
    OP = go.shape[1]
    for p in prange(P):  # one input plane per task: the scatter below never races
        for i in range(L):
            gx[p, U(i)] = 0
        for o in range(OP):
            if nonempty[U(o)]:
                gx[p, U(idx[p, U(o)])] += go[p, U(o)]


@parallel_kernel(streaming=True)
def _avg_forward(x, out, first, count, divisor):
    """out = the sum of each window divided by the product of its three divisor factors.

    x (P, D, H, W) and out (P, OD, OH, OW): the (sample, channel) planes are one axis, so a task
    costs one integer division to locate (global pooling has thousands of 50-element tasks).
    """
    P = x.shape[0]
    OD, OH, OW = out.shape[1:]
    for task in prange(P * OD):
        p, od = task // OD, task % OD
        d0, nd = first[0, od], count[0, od]
        for oh in range(OH):
            h0, nh = first[1, oh], count[1, oh]
            for ow in range(OW):
                w0, nw = first[2, ow], count[2, ow]
                out[p, od, oh, U(ow)] = 0
                acc = out[p, od, oh, U(ow)]  # a zero of the array's own dtype
                for a in range(nd):
                    i = U(d0 + a)
                    for b in range(nh):
                        j = U(h0 + b)
                        for e in range(nw):
                            acc += x[p, i, j, U(w0 + e)]
                out[p, od, oh, U(ow)] = acc / (divisor[0, od] * divisor[1, oh] * divisor[2, ow])


@parallel_kernel(streaming=True)
def _avg_backward(go, gx, first, count, divisor):
    """gx = each output gradient, divided as the forward divided, spread over its window.

    go (P, OD, OH, OW) and gx (P, D, H, W), planes as in ``_avg_forward``.
    """
    P, D, H, W = gx.shape
    OD, OH, OW = go.shape[1:]
    for p in prange(P):  # one input plane per task: the scatter below never races
        for i in range(D):
            for j in range(H):
                for l in range(W):
                    gx[p, U(i), U(j), U(l)] = 0
        for od in range(OD):
            d0, nd = first[0, od], count[0, od]
            for oh in range(OH):
                h0, nh = first[1, oh], count[1, oh]
                for ow in range(OW):
                    w0, nw = first[2, ow], count[2, ow]
                    g = go[p, od, oh, U(ow)] / (divisor[0, od] * divisor[1, oh] * divisor[2, ow])
                    for a in range(nd):
                        i = U(d0 + a)
                        for b in range(nh):
                            j = U(h0 + b)
                            for e in range(nw):
                                gx[p, i, j, U(w0 + e)] += g


@parallel_kernel(streaming=True)
def _whole_plane_avg(x, out, L, divisor):
    """out[p] = sum(x[p * L:(p + 1) * L]) / divisor: global pooling, each window a whole plane of
    the flat input.

    ``_avg_forward``'s loops cost a few dozen cycles per window besides the sum, which is most
    of the time when a window is a 7x7 plane: (8, 512, 7, 7) took 57 us there, 14 us here. Flat,
    with the divisor in the array's dtype: indexed as (P, L) with a float64 divisor the same
    kernel took 55 us against 37 in a slower hour.
    """
    for p in prange(out.shape[0]):
        base = p * L
        acc = out.dtype.type(0)
        for i in range(L):
            acc += x[U(base + i)]
        out[p] = acc / divisor


@parallel_kernel(streaming=True)
def _whole_plane_avg_backward(go, gx, divisor):
    """gx[p, :] = go[p] / divisor: the gradient of ``_whole_plane_avg``."""
    P, L = gx.shape
    for p in prange(P):
        g = go[p] / divisor
        for i in range(L):
            gx[p, U(i)] = g


def _whole_plane_divisor(g, first, count, count_include_pad, divisor_override):
    """The divisor when a coalesced geometry has one window per plane reading all of it, else None."""
    if g.out_size != (1, 1, 1) or g.in_size[:2] != (1, 1) or (first[2, 0], count[2, 0]) != (0, g.in_size[2]):
        return None
    d = g.divisors(count_include_pad, divisor_override)
    return float(d[0, 0]) * float(d[1, 0]) * float(d[2, 0])


def _planes(a, size):
    """``a`` (N, C, ...) C-contiguous, seen as (N * C, *size): one axis of planes."""
    return a.reshape(a.shape[0] * a.shape[1], *size)


def _plane_windows(g):
    """The windows of a (coalesced) geometry per flat output position, built once per geometry.

    (base, count, taps, nonempty): ``base[o]`` the flat input position of output o's first tap,
    ``count[:, o]`` its window's extent along (D, H, W), ``taps`` the largest extents,
    ``nonempty[o]`` whether the window reads anything. Output positions are C-ordered over
    ``g.out_size``.
    """
    def make():
        first, count = g.windows()
        D, H, W = g.in_size
        od, oh, ow = np.meshgrid(*(np.arange(n) for n in g.out_size), indexing="ij")
        base = ((first[0, od] * H + first[1, oh]) * W + first[2, ow]).ravel()
        counts = np.stack([count[0, od].ravel(), count[1, oh].ravel(), count[2, ow].ravel()])
        taps = tuple(int(c.max(initial=0)) for c in counts)
        base, counts, nonempty = base.astype(np.int64), counts.astype(np.int64), (counts > 0).all(axis=0)
        for a in (base, counts, nonempty):
            a.flags.writeable = False  # shared by every call with these sizes
        return base, counts, taps, nonempty

    return g._memo("plane_windows", make)


def _flat(a):
    """``a`` (N, C, ...) C-contiguous, seen as (N * C, plane)."""
    return a.reshape(a.shape[0] * a.shape[1], math.prod(a.shape[2:]))


def max_forward(x, out, idx, geom):
    """out (and idx, unless None) = max pooling of x, written over them."""
    g = geom.coalesced()  # the same windows, fewer dimensions (same flat indices)
    base, count, taps, _ = _plane_windows(g)
    if idx is None and math.prod(taps) > SEPARABLE_MIN_TAPS:
        first, count = g.windows()
        _max_separable(_planes(x, g.in_size), _planes(out, g.out_size), first, count, g.step, _inner_columns(g))
        return
    with_indices = idx is not None
    idx = _flat(idx) if with_indices else np.empty((1, 1), dtype=np.int64)
    _max_forward(_flat(x), _flat(out), idx, base, count, taps, g.step, g.in_size, with_indices)


def index_range(idx, geom):
    """(min, max) of the indices of the windows that read something, or None if none did."""
    flat = _flat(idx)
    lohi = np.empty((flat.shape[0], 2), np.int64)
    lohi[:, 0], lohi[:, 1] = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    _index_range(flat, _plane_windows(geom.coalesced())[3], lohi)
    lo, hi = int(lohi[:, 0].min(initial=np.iinfo(np.int64).max)), int(lohi[:, 1].max(initial=np.iinfo(np.int64).min))
    return None if lo > hi else (lo, hi)


def max_backward(go, idx, gx, geom):
    """gx = the input gradient of max pooling, routed by the flat indices ``idx``."""
    _max_backward(_flat(go), _flat(idx), _flat(gx), _plane_windows(geom.coalesced())[3])


def avg_forward(x, out, geom, count_include_pad=False, divisor_override=None):
    """out = average pooling of x: each window's sum divided by its divisor (``PoolGeometry.divisors``)."""
    g = geom.coalesced()
    first, count = g.windows()
    whole = _whole_plane_divisor(g, first, count, count_include_pad, divisor_override)
    if whole is not None:
        _whole_plane_avg(x.reshape(x.size), out.reshape(out.size), math.prod(x.shape[2:]), x.dtype.type(whole))
        return
    _avg_forward(_planes(x, g.in_size), _planes(out, g.out_size), first, count,
                 g.divisors(count_include_pad, divisor_override))


def avg_backward(go, gx, geom, count_include_pad=False, divisor_override=None):
    """gx = the input gradient of average pooling, written over ``gx``."""
    g = geom.coalesced()
    first, count = g.windows()
    whole = _whole_plane_divisor(g, first, count, count_include_pad, divisor_override)
    if whole is not None:
        _whole_plane_avg_backward(go.reshape(go.size), _flat(gx), gx.dtype.type(whole))
        return
    _avg_backward(_planes(go, g.out_size), _planes(gx, g.in_size), first, count,
                  g.divisors(count_include_pad, divisor_override))
