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
from numba import njit, prange

from ._simd import lanes, vload, vsplat, vsum
from ._window import U, parallel_kernel


@njit(inline="always", cache=True)
def _larger(v, best):
    """v where it replaces ``best`` as a window's max (larger, or NaN), else best."""
    return v if (v > best) | (v != v) else best


# The max kernels below never store ``v if take else a[i]`` back into the ``a[i]`` they read:
# LLVM turns that store into a masked store (VMASKMOVPS), which AMD's AVX2 cores (Zen 1-3) run
# microcoded, a dozen cycles a vector: ResNet's stem pooling (1, 64, 112x112) 3x3/2 took 1.2-1.6
# ms on a Zen 3, 5-7x ONNX Runtime's. Each pass over taps reads one buffer and writes another
# (the two rows of a (2, n) scratch array, or the output on the last pass), so every store is
# a plain one.


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
    read a clamped position and are discarded; each window still sees its taps in order. Tap
    pass t reads the maxima so far from scratch row 1 - t % 2 and writes row t % 2, the last
    pass out and idx (see the note above).
    """
    P, L = x.shape
    OP = out.shape[1]
    sd, sh, sw = step
    H, W = size[1], size[2]
    last = taps[0] * taps[1] * taps[2] - 1 if L else -1
    for p in prange(P):
        bv = np.empty((2, OP), dtype=out.dtype)
        bi = np.empty((2, OP), dtype=np.int64)
        for o in range(OP):  # before the first pass: nothing read yet
            bv[1, U(o)] = -np.inf
            bi[1, U(o)] = base[U(o)]
        if last < 0:
            for o in range(OP):
                out[p, U(o)] = bv[1, U(o)]
                if with_indices:
                    idx[p, U(o)] = bi[1, U(o)]
        t = 0
        for a in range(taps[0] if last >= 0 else 0):
            for b in range(taps[1]):
                for e in range(taps[2]):
                    tap = (a, b, e, (a * sd * H + b * sh) * W + e * sw)
                    k = t & 1
                    # with_indices spelled as a constant at each call: as a variable, LLVM made its
                    # branch in the loop a masked store of the indices
                    if t == last and with_indices:
                        _tap_pass(x, p, base, count, tap, bv, bi, 1 - k, out, idx, p, True)
                    elif t == last:
                        _tap_pass(x, p, base, count, tap, bv, bi, 1 - k, out, idx, p, False)
                    elif with_indices:
                        _tap_pass(x, p, base, count, tap, bv, bi, 1 - k, bv, bi, k, True)
                    else:
                        _tap_pass(x, p, base, count, tap, bv, bi, 1 - k, bv, bi, k, False)
                    t += 1


@njit(inline="always", cache=True)
def _tap_pass(x, p, base, count, tap, sv, si, s, dv, di, d, with_indices):
    """One tap of ``_max_forward`` over plane p's outputs: the maxima so far (and their indices)
    from row s of sv (si), the maxima with tap = (a, b, e, offset) taken into row d of dv (di)."""
    a, b, e, off = tap
    last = x.shape[1] - 1
    for o in range(sv.shape[1]):
        pos = min(base[U(o)] + off, last)
        v = x[p, U(pos)]
        best = sv[s, U(o)]
        inside = (a < count[0, U(o)]) & (b < count[1, U(o)]) & (e < count[2, U(o)])
        take = inside & ((v > best) | (v != v))
        dv[d, U(o)] = v if take else best
        if with_indices:
            di[d, U(o)] = pos if take else si[s, U(o)]


#: Max pooling without indices runs ``_max_separable`` for windows of more taps than
#: ``SEPARABLE_MIN_TAPS``, or output planes of more than ``WINDOW_MAX_OUTPUTS`` positions.
#: Small windows over small planes stay with ``_max_forward``, whose loops over whole planes
#: beat the separable passes' short rows there; over larger planes its gather of every tap of
#: every output (about 2 ns a tap on the AVX2 host, its serial twin and its parallel loops
#: alike; scratch rows cut to 1,024 outputs, to stay in L1, changed nothing) loses to the
#: passes' contiguous loops, which vectorize. Measured, ms, separable / ``_max_forward``, taking turns in one process:
#: 2-core AVX-512, ResNet's stem pooling (1, 64, 112x112) 3x3/2 0.71 / 1.67, at batch 8 8.3 /
#: 14.3 (PyTorch 3.3 and 25); (8, 96, 55x55) 3x3/2 3.5 / 4.1; (8, 64, 56x56) 3x3/1 1.8 / 7.0;
#: LeNet's (64, 6, 28x28) 2x2/2 0.33 / 0.15 (196 outputs a plane). 2-core AVX2, 2x2/2,
#: medians: VGG-16's (1, 64, 224x224) 0.79 / 2.98, (1, 128, 112x112) 0.42 / 1.32, (1, 256,
#: 56x56) 0.29 / 0.60, (8, 64, 56x56) 0.55 / 1.15, (1, 64, 64x64) 0.12 / 0.22, (1, 32, 32x32)
#: 0.060 / 0.070; about even at 196 outputs a plane, (1, 512, 28x28) 0.29 / 0.31, LeNet's (1,
#: 6, 28x28) 0.023 / 0.024 and (64, 6, 28x28) 0.21 / 0.24; behind at 49, (1, 512, 14x14) 0.14
#: / 0.12.
SEPARABLE_MIN_TAPS = 4
WINDOW_MAX_OUTPUTS = 196


@parallel_kernel
def _max_separable(x, out, first, count, step, inner):
    """out = the max of each window, as ``_max_forward`` takes it without indices, in two steps
    per output row: the max over the rows its windows cover along D and H, column by column, of
    every input column; then along that one row the max over each output column's window.
    ``inner`` = (o0, o1, stride): the output columns o0 <= o < o1 whose windows are whole and
    ``stride`` apart. Their maxima come from a sliding max over every column such a window
    starts at (stride 1, contiguous: tap by tap, loops that vectorize), of which every
    ``stride``-th is kept: strided loads tap by tap, which LLVM assembles lane by lane, had
    taken twice as long. The columns at the edges go window by window. Every pass goes from
    one scratch row into the other (see the note above ``_max_forward``).

    The max of a window does not depend on the order its values are scanned in: a NaN anywhere
    gives NaN, as in ``_max_forward``; so the result is the same, but for the sign of a zero
    tied with a zero of the other sign. ``_max_forward`` gathers every tap of every output,
    with its window tables. Tasks are (plane, output depth) pairs; x and out are indexed flat,
    (plane, position), so that no task makes views of them."""
    P, D, H, W = x.shape
    OD, OH, OW = out.shape[1:]
    xf, of = x.reshape(P, D * H * W), out.reshape(P, OD * OH * OW)
    sd, sh, sw = step
    o0, o1, stride = inner
    taps = count[2, o0] if o1 > o0 else 0
    s0 = first[2, o0] if o1 > o0 else 0  # the first whole window's first column
    span = (o1 - 1 - o0) * stride + 1 if o1 > o0 else 0  # the columns whole windows start at
    for task in prange(P * OD):
        p, od = task // OD, task % OD
        col = np.empty((2, W), dtype=x.dtype)  # the max over the window's rows, per input column
        slide = np.empty((2, max(span, 1)), dtype=x.dtype)  # the max over a window's first taps along W
        for oh in range(OH):
            n = 0
            for a in range(count[0, od]):
                for b in range(count[1, oh]):
                    r = ((first[0, od] + a * sd) * H + first[1, oh] + b * sh) * W
                    k = n & 1
                    if n == 0:
                        for l in range(W):
                            col[0, U(l)] = xf[p, U(r + l)]
                    else:
                        for l in range(W):
                            col[k, U(l)] = _larger(xf[p, U(r + l)], col[1 - k, U(l)])
                    n += 1
            if n == 0:  # a window that covers no row (dilation past the input)
                for l in range(W):
                    col[0, U(l)] = -np.inf
                n = 1
            c, row = (n - 1) & 1, (od * OH + oh) * OW
            for i in range(OW - (o1 - o0)):  # the edge columns only: a test per column cost more than their sums
                o = i if i < o0 else i + (o1 - o0)
                best = -np.inf
                for e in range(count[2, o]):
                    best = _larger(col[c, U(first[2, o] + e * sw)], best)
                of[p, U(row + o)] = best
            if taps == 1:
                for o in range(o0, o1):
                    of[p, U(row + o)] = col[c, U(s0 + (o - o0) * stride)]
            if taps < 2:
                continue
            for l in range(span):
                slide[0, U(l)] = _larger(col[c, U(s0 + l + sw)], col[c, U(s0 + l)])
            for e in range(2, taps):
                k = (e - 1) & 1
                for l in range(span):
                    slide[k, U(l)] = _larger(col[c, U(s0 + l + e * sw)], slide[1 - k, U(l)])
            h = (taps - 2) & 1
            if stride == 1:
                for o in range(o0, o1):
                    of[p, U(row + o)] = slide[h, U(o - o0)]
            else:
                for o in range(o0, o1):
                    of[p, U(row + o)] = slide[h, U((o - o0) * stride)]


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
def _max_backward(go, idx, gx, nonempty, outside):
    """gx (P, plane) = every output gradient added at the position its max was read from;
    outside[p] = how many of plane p's indices fell outside the plane (routed nowhere).

    go, idx (P, output plane); ``nonempty[o]``: whether window o read anything (one that read
    nothing routes nothing). The indices are checked here, as they are read: a check before, a
    pass of its own over them, made the backward over (8, 64, 112x112) 0.93 of PyTorch's speed.
    """
    P, L = gx.shape
    OP = go.shape[1]
    for p in prange(P):  # one input plane per task: the scatter below never races
        for i in range(L):
            gx[p, U(i)] = 0
        missed = 0
        for o in range(OP):
            if nonempty[U(o)]:
                j = idx[p, U(o)]
                if 0 <= j < L:
                    gx[p, U(j)] += go[p, U(o)]
                else:
                    missed += 1
        outside[p] = missed


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
    kernel took 55 us against 37 in a slower hour. The sum is taken a vector at a time
    (``_simd``), the last few elements one by one: LLVM's own vectorized loop took 32 elements a
    pass and left 17 of a 49-element plane to its scalar remainder (23.9 -> 17.4 us, one thread).
    """
    V = lanes(x)
    for p in prange(out.shape[0]):
        base = p * L
        acc = vsplat(out.dtype.type(0))
        i = 0
        while i + V <= L:
            acc = acc + vload(x, base + i)
            i += V
        total = vsum(acc)
        while i < L:
            total += x[U(base + i)]
            i += 1
        out[p] = total / divisor


@parallel_kernel(streaming=True)
def _whole_plane_avg_backward(go, gx, divisor):
    """gx[p, :] = go[p] / divisor: the gradient of ``_whole_plane_avg``."""
    P, L = gx.shape
    for p in prange(P):
        g = go[p] / divisor
        for i in range(L):
            gx[p, U(i)] = g


def _whole_plane_divisor(g, count_include_pad, divisor_override):
    """The divisor when a coalesced geometry has one window per plane reading all of it, else
    None: worked out once per geometry and rule (global pooling's calls are a few microseconds)."""
    def make():
        first, count = g.windows()
        if g.out_size != (1, 1, 1) or g.in_size[:2] != (1, 1) or (first[2, 0], count[2, 0]) != (0, g.in_size[2]):
            return None
        d = g.divisors(count_include_pad, divisor_override)
        return float(d[0, 0]) * float(d[1, 0]) * float(d[2, 0])

    return g._memo(("whole_plane_divisor", count_include_pad, divisor_override), make)


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
    if idx is None and (math.prod(taps) > SEPARABLE_MIN_TAPS or math.prod(g.out_size) > WINDOW_MAX_OUTPUTS):
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
    """gx = the input gradient of max pooling, routed by the flat indices ``idx``. Returns whether
    every index that routes a gradient lies in the input plane (if not, gx is unspecified)."""
    outside = np.empty(go.shape[0] * go.shape[1], dtype=np.int64)
    _max_backward(_flat(go), _flat(idx), _flat(gx), _plane_windows(geom.coalesced())[3], outside)
    return not outside.any()


def avg_forward(x, out, geom, count_include_pad=False, divisor_override=None):
    """out = average pooling of x: each window's sum divided by its divisor (``PoolGeometry.divisors``)."""
    g = geom.coalesced()
    whole = _whole_plane_divisor(g, count_include_pad, divisor_override)
    if whole is not None:
        _whole_plane_avg(x.reshape(x.size), out.reshape(out.size), g.in_size[2], x.dtype.type(whole))
        return
    first, count = g.windows()
    _avg_forward(_planes(x, g.in_size), _planes(out, g.out_size), first, count,
                 g.divisors(count_include_pad, divisor_override))


def avg_backward(go, gx, geom, count_include_pad=False, divisor_override=None):
    """gx = the input gradient of average pooling, written over ``gx``."""
    g = geom.coalesced()
    whole = _whole_plane_divisor(g, count_include_pad, divisor_override)
    if whole is not None:
        _whole_plane_avg_backward(go.reshape(go.size), _flat(gx), gx.dtype.type(whole))
        return
    first, count = g.windows()
    _avg_backward(_planes(go, g.out_size), _planes(gx, g.in_size), first, count,
                  g.divisors(count_include_pad, divisor_override))
