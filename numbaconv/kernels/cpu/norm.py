"""Normalization kernels on planes: x seen as a C-contiguous (N, C, S) array, S = prod(spatial).

Batch norm and group norm differ only in which planes (n, c) share a statistic: one channel
across the batch, or one group of channels within a sample. The kernels therefore work on single
planes, with per-plane coefficients in C-contiguous float64 (N, C) arrays, and the public layer
combines or broadcasts those (N, C) arrays with NumPy (a few values per plane, not per element):

* ``plane_moments``: mean and sum of squared deviations of every plane, block by block: two
  passes over each block of ``BLOCK`` elements while it sits in L1 (the data is read from
  memory once; a second pass over a whole 112x112 plane, from L2, made the backward's
  reductions 1.6x slower), each block's sums merged by Chan's pairwise formula, which stays
  as exact as two passes over the plane;
* ``plane_affine``: ``out = (x - center) * scale + shift``, the forward of both norms (and the
  eval-mode input gradient of batch norm, with center and shift zero); its coefficients, and
  ``plane_grad_input``'s, may have one row for every sample (``_row``): batch norm's are per
  channel, and spelling them out per plane took more of a small call than the kernel did;
* ``plane_sums``: the backward's reductions ``sum(go)`` and ``sum(go * (x - mean))`` together
  with the plane's moments, so a backward that recomputes the statistics of x reads x and go
  once for all its reductions (and once more for the input gradient);
* ``plane_grad_input``: ``gx = go * p + (x - center) * q + r``, the input gradient of both norms
  once the reductions have been combined into p, q and r;
* ``channel_backward``: batch norm's training backward whole, a task per channel, whose second
  pass finds the channel's planes still in the cache.

An input gradient of ``_simd.STREAM_MIN_BYTES`` or more is written past the caches (as the
element-wise backwards write theirs): batch norm's training backward over (8, 64, 112x112)
float32, medians taking turns with PyTorch's, 0.97 -> 1.15 of its speed.

Sums are accumulated in float64 for float32 data too, as PyTorch does on the CPU, and every
coefficient is float64: a float32 result is rounded once, when stored.

Local response normalization sums squares along channels, a window of rows of one sample:
``lrn_forward`` and ``lrn_backward``, with the window sum written once (``_window_sum_of_squares``).

Arrays are indexed in full (``x[n, c, s]``), never through sub-array views: in a parallel loop
every view would atomically touch the parent's reference count. Inner indices are cast with ``U``
so that the loops vectorize.
"""

import math

from numba import njit, prange

from ._simd import lanes, store_fence, stream_start, vcast, vload, vstream
from ._window import U, parallel_kernel


#: Elements per block of a plane's statistics: a block's second pass reads it from L1.
BLOCK = 1 << 10


@njit(inline="always", cache=True)
def _block_sum(x, n, c, s0, s1):
    """Sum of x[n, c, s0:s1], accumulated in float64."""
    total = 0.0
    for s in range(s0, s1):
        total += x[n, c, U(s)]
    return total


@njit(inline="always", cache=True)
def _merge_weights(count, total, nb, tb):
    """Chan's pairwise update, merging a block of nb elements summing to tb into ``count``
    elements summing to ``total``: (mean before, block mean, mean after, count * nb / merged
    count). With count = 0 the weight is 0 and the block's sums pass through unchanged."""
    merged = count + nb
    before = total / max(count, 1)
    block = tb / nb
    return before, block, (total + tb) / merged, count * nb / merged


@parallel_kernel(streaming=True)
def plane_moments(x, mean, m2):
    """mean[n, c] and m2[n, c] = sum((x[n, c, :] - mean[n, c]) ** 2), for S >= 1."""
    N, C, S = x.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        count, total, deviations = 0, 0.0, 0.0
        for s0 in range(0, S, BLOCK):
            s1 = min(S, s0 + BLOCK)
            tb = _block_sum(x, n, c, s0, s1)
            mb = tb / (s1 - s0)
            db = 0.0
            for s in range(s0, s1):
                d = x[n, c, U(s)] - mb
                db += d * d
            before, block, _, w = _merge_weights(count, total, s1 - s0, tb)
            deviations += db + (block - before) * (block - before) * w
            count, total = count + s1 - s0, total + tb
        mean[n, c] = total / S
        m2[n, c] = deviations


@parallel_kernel(streaming=True)
def plane_totals(x, out):
    """out[n, c] = sum(x[n, c, :]), accumulated in float64: a convolution's bias gradient, per
    plane (the caller sums the batch's). NumPy's sum over the batch and plane axes took 0.28 ms
    over (1, 64, 16000) float32, on one thread, this 0.07 on two."""
    N, C, S = x.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        out[n, c] = _block_sum(x, n, c, 0, S)


@njit(inline="always", cache=True)
def _row(a, n):
    """Sample n's row of a coefficient array of N rows, or its one row."""
    return min(n, a.shape[0] - 1)


@parallel_kernel(streaming=True)
def plane_affine(x, center, scale, shift, out):
    """out[n, c, :] = (x[n, c, :] - center[n, c]) * scale[n, c] + shift[n, c] (each coefficient
    array (N, C) or (1, C))."""
    N, C, S = x.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        m, a, b = center[_row(center, n), c], scale[_row(scale, n), c], shift[_row(shift, n), c]
        for s in range(S):
            out[n, c, U(s)] = (x[n, c, U(s)] - m) * a + b


@njit(inline="always", cache=True)
def _shift(x, n, c):
    """The center the backward's sums are taken about: the mean of plane (n, c)'s first block.

    Sums about a center k lose float64 digits to cancellation in proportion to count (mean -
    k)^2 against the sum of squared deviations m2; the first block's n elements are part of the
    data, so n (mean - k)^2 <= m2 and the loss is at most count / n (planes of 112x112: 13
    blocks; batch norm over 8 of them: 98) units in the last place. (Taking each block about its
    own mean, from a first pass over it, and merging the blocks by Chan's formula had bound the
    reductions to 26 GB/s against 34: a float32 element converted twice, and divisions per
    block.)"""
    first = min(x.shape[2], BLOCK)
    return _block_sum(x, n, c, 0, first) / first


@njit(inline="always", cache=True)
def _shifted_sums(go, x, n, c, k, sums):
    """``sums`` = (sum(x - k), sum((x - k)^2), sum(go), sum(go * (x - k))) with plane (n, c)'s added."""
    sd, sdd, gb, sgd = sums
    for s in range(x.shape[2]):
        d = x[n, c, U(s)] - k
        g = go[n, c, U(s)]
        sd += d
        sdd += d * d
        gb += g
        sgd += g * d
    return sd, sdd, gb, sgd


@njit(inline="always", cache=True)
def _centered(sums, count, k):
    """(mean, m2, sum(go), sum(go * (x - mean))) from ``_shifted_sums`` of count elements about k."""
    sd, sdd, gb, sgd = sums
    shift = sd / count  # mean - k
    return k + shift, max(sdd - shift * sd, 0.0), gb, sgd - shift * gb


@parallel_kernel(streaming=True)
def plane_sums(go, x, mean, m2, sum_go, dot):
    """The backward's reductions and the statistics of x, in one read of the data per plane:
    mean[n, c] and m2[n, c] as ``plane_moments``, sum_go[n, c] = sum(go[n, c, :]) and
    dot[n, c] = sum(go[n, c, :] * (x[n, c, :] - mean[n, c])), all about ``_shift``'s center.
    Sums about another center m follow exactly: sum(go * (x - m)) = dot + (mean - m) * sum_go.
    """
    N, C, S = x.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        k = _shift(x, n, c)
        sums = _shifted_sums(go, x, n, c, k, (0.0, 0.0, 0.0, 0.0))
        mean[n, c], m2[n, c], sum_go[n, c], dot[n, c] = _centered(sums, S, k)


@njit(inline="always", cache=True)
def _gx(g, v, m, a, b, d):
    """The input gradient g * a + (v - m) * b + d of one element or of a vector of them, in
    float64, the coefficients' type."""
    return g * a + (v - m) * b + d


@njit(inline="always", cache=True)
def _grad_input_plane(go, x, lo, hi, m, a, b, d, gx, start):
    """gx[lo:hi] = ``_gx`` of go's and x's, all three flat (N * C * S,) views; from ``start``
    on (``_simd.stream_start``, -1 for none) whole vectors past the caches, the elements before
    the first aligned one and after the last whole vector one at a time. A vector widens to
    float64 and rounds back once, as a single element does; LLVM may fuse the two ways' products
    into different multiply-adds (the scalar loop's sums may be reassociated, the loop
    invariants hoisted), so float64 results can differ in the last place."""
    if start < 0:
        for i in range(lo, hi):
            gx[U(i)] = _gx(go[U(i)], x[U(i)], m, a, b, d)
        return
    V = lanes(gx)
    i = lo
    while i < hi and (i - start) % V != 0:
        gx[U(i)] = _gx(go[U(i)], x[U(i)], m, a, b, d)
        i += 1
    while i + V <= hi:
        vstream(gx, i, vcast(_gx(vcast(vload(go, i), 0.0), vcast(vload(x, i), 0.0), m, a, b, d), gx))
        i += V
    while i < hi:
        gx[U(i)] = _gx(go[U(i)], x[U(i)], m, a, b, d)
        i += 1
    store_fence()


@njit(inline="always", cache=True)
def _flat(a):
    return a.reshape(a.size)


@parallel_kernel(streaming=True)
def plane_grad_input(go, x, center, p, q, r, gx):
    """gx[n, c, :] = go[n, c, :] * p[n, c] + (x[n, c, :] - center[n, c]) * q[n, c] + r[n, c]
    (each coefficient array (N, C) or (1, C))."""
    N, C, S = x.shape
    gof, xf, gxf = _flat(go), _flat(x), _flat(gx)
    start = stream_start(gxf)
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        _grad_input_plane(gof, xf, plane * S, plane * S + S, center[_row(center, n), c], p[_row(p, n), c],
                          q[_row(q, n), c], r[_row(r, n), c], gxf, start)


@parallel_kernel  # not a streaming kernel's threshold: about 0.6 elements a nanosecond on one thread
def channel_backward(go, x, scale, eps, gx, mean, m2, sum_go, dot):
    """Batch norm's training backward, a task per channel: its reductions over every plane of the
    channel (as ``plane_sums``, about one center for the channel), mean[c], m2[c], sum_go[c], dot[c]
    (about the channel's mean), then gx = invstd * (g - mean(g) - xhat * mean(g * xhat)), g =
    go * scale[c], from the coefficients they give.

    The second pass reads the channel's planes again while they sit in the cache (8 planes of
    112x112 of x and go: 0.8 MB), where the plane kernels' second pass, after every channel's
    reductions, read them from memory again: 3 streams of memory traffic instead of 5.
    """
    N, C, S = x.shape
    gof, xf, gxf = _flat(go), _flat(x), _flat(gx)
    start = stream_start(gxf)
    for c in prange(C):
        k = _shift(x, 0, c)
        sums = (0.0, 0.0, 0.0, 0.0)
        for n in range(N):
            sums = _shifted_sums(go, x, n, c, k, sums)
        count = N * S
        center, deviations, grads, product = _centered(sums, count, k)
        mean[c], m2[c], sum_go[c], dot[c] = center, deviations, grads, product
        invstd = 1.0 / math.sqrt(deviations / count + eps)
        a = invstd * scale[c]
        for n in range(N - 1, -1, -1):  # the planes read last first: they are the likeliest still in L2
            _grad_input_plane(gof, xf, (n * C + c) * S, (n * C + c + 1) * S, center, a,
                              -a * invstd * invstd * product / count, -a * grads / count, gxf, start)


@njit(inline="always", cache=True)
def _window_sum_of_squares(x, n, c, before, after, out):
    """out[n, c, :] = sum of x[n, j, :] ** 2 over channels j in [c - before, c + after] (clipped).

    Each window is summed afresh: a running sum (add the entering channel, subtract the leaving
    one) would save ``size - 2`` additions but leave the rounding error of large values behind.
    """
    C, S = x.shape[1], x.shape[2]
    for s in range(S):
        out[n, c, U(s)] = 0
    for j in range(max(0, c - before), min(C, c + after + 1)):
        for s in range(S):
            v = x[n, j, U(s)]
            out[n, c, U(s)] += v * v


@parallel_kernel
def lrn_forward(x, before, after, scale, beta, k, out):
    """out = x * d ** -beta, d = k + scale * (sum of x ** 2 over the channel window)."""
    N, C, S = x.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        _window_sum_of_squares(x, n, c, before, after, out)
        for s in range(S):
            out[n, c, U(s)] = x[n, c, U(s)] * (k + scale * out[n, c, U(s)]) ** -beta


@parallel_kernel
def lrn_backward(go, x, before, after, scale, beta, k, t, gx):
    """gx = the input gradient of ``lrn_forward`` for output gradient ``go``; ``t`` is scratch.

    y[c] = x[c] * d[c] ** -beta, so dy[c]/dx[j] = [c == j] d[c] ** -beta
    - 2 * scale * beta * x[c] * x[j] * d[c] ** (-beta - 1) for every j in c's window. Channel j
    lies in the windows of channels c in [j - after, j + before]: the window reversed.
    """
    N, C, S = x.shape
    for plane in prange(N * C):  # the diagonal term, and t = go * x * d ** (-beta - 1)
        n, c = plane // C, plane % C
        _window_sum_of_squares(x, n, c, before, after, gx)
        for s in range(S):
            d = k + scale * gx[n, c, U(s)]
            dpow = d ** -beta
            g = go[n, c, U(s)]
            gx[n, c, U(s)] = g * dpow
            t[n, c, U(s)] = g * x[n, c, U(s)] * dpow / d
    coef = (scale + scale) * beta  # 2 * scale * beta, in the data's dtype
    for plane in prange(N * C):  # every t above is written: gather the window of each channel
        n, j = plane // C, plane % C
        for c in range(max(0, j - after), min(C, j + before + 1)):
            for s in range(S):
                gx[n, j, U(s)] -= coef * x[n, j, U(s)] * t[n, c, U(s)]
