"""Pooling kernels: max and average over windows given as per-dimension tables.

Every pooling op (sliding-window max / average with any stride, padding, dilation and
ceil_mode, and adaptive max / average) is described by the same tables, ``PoolGeometry.windows()``
(cached: built once per window layout, not per call), taken from the geometry with its fully
read trailing dimensions merged (``PoolGeometry.coalesced()``: global pooling reads one
contiguous run per plane): along dimension ``dim``, output position ``o`` reads
``count[dim, o]`` input positions from ``first[dim, o]`` on, ``step[dim]`` apart, the padding
already cut away. So the loops below have no bounds checks and exist once for all the ops.
Average pooling divides each window's sum by the product of its three ``divisor`` factors.

Arrays are 5-D and C-contiguous: x (N, C, D, H, W), out (N, C, OD, OH, OW); 1-D and 2-D calls
are views with singleton dimensions. Max pooling's indices are flat positions in the input's
(D, H, W) plane, as PyTorch returns them, so the index scatter sees gradients as (N, C, plane).
Average pooling sees the (sample, channel) planes as one axis, (N * C, D, H, W). Forward loops
run one (plane, output depth) slab per task; backward loops one input plane per task, so their
scatter never races. Arrays are indexed in full
(``x[n, c, i, j, l]``) rather than through sub-array views, which would contend on the parent's
reference count inside the parallel loops.
"""

import math

import numpy as np
from numba import prange

from ._window import U, parallel_kernel


@parallel_kernel
def _max_forward(x, out, idx, first, count, step, with_indices):
    """out = the max of each window, idx = its flat position in the plane (if ``with_indices``).

    PyTorch's rule: scan the window in order; a value replaces the max when it is larger or NaN,
    so ties keep the first maximum and NaN propagates. A window that reads no input (possible
    only with dilation reaching past the input) gives -inf and its first candidate position.
    """
    N, C, D, H, W = x.shape
    OD, OH, OW = out.shape[2:]
    sd, sh, sw = step
    for task in prange(N * C * OD):
        n, c, od = task // (C * OD), (task // OD) % C, task % OD
        d0, nd = first[0, od], count[0, od]
        for oh in range(OH):
            h0, nh = first[1, oh], count[1, oh]
            for ow in range(OW):
                w0, nw = first[2, ow], count[2, ow]
                best = -np.inf
                at = (d0 * H + h0) * W + w0
                for a in range(nd):
                    i = d0 + a * sd
                    for b in range(nh):
                        j = h0 + b * sh
                        for e in range(nw):
                            v = x[n, c, i, j, U(w0 + e * sw)]
                            if v > best or v != v:
                                best = v
                                at = (i * H + j) * W + w0 + e * sw
                out[n, c, od, oh, U(ow)] = best
                if with_indices:
                    idx[n, c, od, oh, U(ow)] = at


@parallel_kernel
def _max_backward(go, idx, gx, count):
    """gx (N, C, plane) = every output gradient added at the position its max was read from."""
    N, C, P = gx.shape
    OD, OH, OW = go.shape[2:]
    for nc in prange(N * C):  # one input plane per task: the scatter below never races
        n, c = nc // C, nc % C
        for p in range(P):
            gx[n, c, U(p)] = 0
        for od in range(OD):
            for oh in range(OH):
                if count[0, od] == 0 or count[1, oh] == 0:
                    continue
                for ow in range(OW):
                    if count[2, ow] != 0:  # a window that read nothing routes nothing
                        gx[n, c, U(idx[n, c, od, oh, U(ow)])] += go[n, c, od, oh, U(ow)]


@parallel_kernel
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


@parallel_kernel
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


def _view(a, size):
    """``a`` (N, C, ...) C-contiguous, seen as (N, C, *size) (None stays None)."""
    return None if a is None else a.reshape(*a.shape[:2], *size)


def _planes(a, size):
    """``a`` (N, C, ...) C-contiguous, seen as (N * C, *size): one axis of planes."""
    return a.reshape(a.shape[0] * a.shape[1], *size)


def max_forward(x, out, idx, geom):
    """out (and idx, unless None) = max pooling of x, written over them."""
    g = geom.coalesced()  # the same windows, fewer dimensions (same flat indices)
    first, count = g.windows()
    with_indices = idx is not None
    if idx is None:
        idx = np.empty((1, 1, 1, 1, 1), dtype=np.int64)
    _max_forward(_view(x, g.in_size), _view(out, g.out_size), _view(idx, g.out_size) if with_indices else idx,
                 first, count, g.step, with_indices)


def max_backward(go, idx, gx, geom):
    """gx = the input gradient of max pooling, routed by the flat indices ``idx``."""
    g = geom.coalesced()
    _, count = g.windows()
    _max_backward(_view(go, g.out_size), _view(idx, g.out_size), _view(gx, (math.prod(gx.shape[2:]),)), count)


def avg_forward(x, out, geom, count_include_pad=False, divisor_override=None):
    """out = average pooling of x: each window's sum divided by its divisor (``PoolGeometry.divisors``)."""
    g = geom.coalesced()
    first, count = g.windows()
    _avg_forward(_planes(x, g.in_size), _planes(out, g.out_size), first, count,
                 g.divisors(count_include_pad, divisor_override))


def avg_backward(go, gx, geom, count_include_pad=False, divisor_override=None):
    """gx = the input gradient of average pooling, written over ``gx``."""
    g = geom.coalesced()
    first, count = g.windows()
    _avg_backward(_planes(go, g.out_size), _planes(gx, g.in_size), first, count,
                  g.divisors(count_include_pad, divisor_override))
