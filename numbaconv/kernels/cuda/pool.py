"""Pooling kernels on the GPU: the twin of ``kernels.cpu.pool``, same entry points, plus the
power-average (lp) pooling that the CPU side composes from NumPy operations.

The windows are the CPU kernels' tables (``PoolGeometry.windows()`` and ``divisors()`` of the
coalesced geometry), copied to the device once per geometry and kept (``_on_device``). Forward
kernels run one thread per output element, every (sample, channel) plane in one launch.

Backward:
* max pooling adds each output gradient at the flat position its index names, with an atomic
  add (overlapping windows may name the same position); any in-plane index routes, as on the
  CPU, and a window that read nothing routes nothing;
* average pooling gathers instead, one thread per input element, from the outputs whose windows
  cover it: along each dimension those are a contiguous range (windows only move forward),
  given by ``_cover`` tables built once per geometry. No atomics, so the result is deterministic.

Sums run in the data's dtype and divisors are float64, as on the CPU.
"""

import functools
import math

import numpy as np
from numba import cuda

from ._launch import fill, line


@cuda.jit(device=True, inline=True)
def _unravel(t, OD, OH, OW):
    """(plane, d, h, w) of flat position t of (P, OD, OH, OW)."""
    return t // (OD * OH * OW), (t // (OH * OW)) % OD, (t // OW) % OH, t % OW


@cuda.jit(device=True, inline=True)
def _window_mean(x, p, od, oh, ow, first, count, divisor, power, powered):
    """The sum over the window of (p, od, oh, ow) of x (of x ** power when ``powered``), divided
    by the product of its divisor factors, rounded to x's dtype."""
    d0, nd = first[0, od], count[0, od]
    h0, nh = first[1, oh], count[1, oh]
    w0, nw = first[2, ow], count[2, ow]
    acc = x.dtype.type(0)
    for a in range(nd):
        for b in range(nh):
            for e in range(nw):
                v = x[p, d0 + a, h0 + b, w0 + e]
                acc += v ** power if powered else v
    return x.dtype.type(acc / (divisor[0, od] * divisor[1, oh] * divisor[2, ow]))


@cuda.jit(device=True, inline=True)
def _sign(v, zero, one):
    """torch.sign: -1, 0 or 1 (``zero`` and ``one`` of v's type), and 0 for NaN."""
    return one if v > zero else (-one if v < zero else zero)


@cuda.jit
def _max_forward(x, out, idx, first, count, step, with_indices, absolute):
    """out = the max of each window (of |x| when ``absolute``), idx = its flat position in the
    plane; PyTorch's scan order and NaN rule, as on the CPU."""
    P, D, H, W = x.shape
    OD, OH, OW = out.shape[1:]
    t = cuda.grid(1)
    if t < out.size:
        p, od, oh, ow = _unravel(t, OD, OH, OW)
        d0, nd = first[0, od], count[0, od]
        h0, nh = first[1, oh], count[1, oh]
        w0, nw = first[2, ow], count[2, ow]
        sd, sh, sw = step[0], step[1], step[2]
        best = out.dtype.type(-np.inf)
        at = (d0 * H + h0) * W + w0
        for a in range(nd):
            i = d0 + a * sd
            for b in range(nh):
                j = h0 + b * sh
                for e in range(nw):
                    v = x[p, i, j, w0 + e * sw]
                    if absolute:
                        v = abs(v)
                    if v > best or v != v:
                        best = v
                        at = (i * H + j) * W + w0 + e * sw
        out[p, od, oh, ow] = best
        if with_indices:
            idx[p, od, oh, ow] = at


@cuda.jit
def _max_backward(go, idx, gx, count, outside):
    """gx (P, plane), zeroed, += each output gradient at the position its max was read from;
    outside[0] = 1 if an index fell outside the plane (routed nowhere)."""
    OD, OH, OW = go.shape[1:]
    t = cuda.grid(1)
    if t < go.size:
        p, od, oh, ow = _unravel(t, OD, OH, OW)
        if count[0, od] != 0 and count[1, oh] != 0 and count[2, ow] != 0:
            j = idx[p, od, oh, ow]
            if 0 <= j < gx.shape[1]:
                cuda.atomic.add(gx, (p, j), go[p, od, oh, ow])
            else:
                outside[0] = 1


@cuda.jit
def _index_range(idx, count, lohi):
    """lohi = (min, max) of the indices of windows that read something (atomically)."""
    OD, OH, OW = idx.shape[1:]
    t = cuda.grid(1)
    if t < idx.size:
        p, od, oh, ow = _unravel(t, OD, OH, OW)
        if count[0, od] != 0 and count[1, oh] != 0 and count[2, ow] != 0:
            v = idx[p, od, oh, ow]
            cuda.atomic.min(lohi, 0, v)
            cuda.atomic.max(lohi, 1, v)


@cuda.jit
def _avg_forward(x, out, first, count, divisor):
    OD, OH, OW = out.shape[1:]
    t = cuda.grid(1)
    if t < out.size:
        p, od, oh, ow = _unravel(t, OD, OH, OW)
        out[p, od, oh, ow] = _window_mean(x, p, od, oh, ow, first, count, divisor, x.dtype.type(1), False)


@cuda.jit
def _avg_backward(go, gx, first, count, divisor, cover, x, power, powered):
    """gx = the sum of the output gradients, divided as the forward divided, whose windows cover
    each input element; times power * x ** (power - 1) when ``powered`` (lp pooling's chain rule)."""
    D, H, W = gx.shape[1:]
    OD, OH, OW = go.shape[1:]
    t = cuda.grid(1)
    if t < gx.size:
        p, i, j, l = _unravel(t, D, H, W)
        acc = gx.dtype.type(0)
        for od in range(cover[0, 0, i], cover[0, 1, i]):
            if first[0, od] <= i < first[0, od] + count[0, od]:
                for oh in range(cover[1, 0, j], cover[1, 1, j]):
                    if first[1, oh] <= j < first[1, oh] + count[1, oh]:
                        for ow in range(cover[2, 0, l], cover[2, 1, l]):
                            if first[2, ow] <= l < first[2, ow] + count[2, ow]:
                                acc += go[p, od, oh, ow] / (divisor[0, od] * divisor[1, oh] * divisor[2, ow])
        if powered:
            v = x[p, i, j, l]
            gx[p, i, j, l] = acc * (power * v ** (power - gx.dtype.type(1)))
        else:
            gx[p, i, j, l] = acc


@cuda.jit
def _lp_forward(x, out, first, count, divisor, power, inv_power, kvol):
    """out = (sign(a) * |a| * kvol) ** (1 / p), a = the window mean of x ** p (lp pooling, as
    PyTorch composes it and the CPU side computes it)."""
    OD, OH, OW = out.shape[1:]
    t = cuda.grid(1)
    if t < out.size:
        p, od, oh, ow = _unravel(t, OD, OH, OW)
        a = _window_mean(x, p, od, oh, ow, first, count, divisor, power, True)
        zero = out.dtype.type(0)
        s = _sign(a, zero, out.dtype.type(1))
        out[p, od, oh, ow] = (s * abs(a) * kvol) ** inv_power


@cuda.jit
def _lp_grad_out(go, x, g, first, count, divisor, power, inv_power, kvol):
    """g = the gradient with respect to the window mean a of x ** p, through pow(1 / p), the
    factor kvol and sign(a) * relu(|a|), in the steps PyTorch's autograd (and the CPU side) takes."""
    OD, OH, OW = go.shape[1:]
    t = cuda.grid(1)
    if t < go.size:
        p, od, oh, ow = _unravel(t, OD, OH, OW)
        a = _window_mean(x, p, od, oh, ow, first, count, divisor, power, True)
        zero = g.dtype.type(0)
        s = _sign(a, zero, g.dtype.type(1))
        v = s * abs(a) * kvol
        r = go[p, od, oh, ow] * (inv_power * v ** (inv_power - g.dtype.type(1))) * kvol
        g[p, od, oh, ow] = (zero if abs(a) <= zero else r * s) * s


@cuda.jit
def _times_sign(gx, x):
    """gx *= sign(x), flat: lp pooling with p = inf is max pooling of |x|."""
    i = cuda.grid(1)
    if i < gx.size:
        v = x[i]
        zero = gx.dtype.type(0)
        gx[i] *= _sign(v, zero, gx.dtype.type(1))


# --------------------------------------------------------------------------- tables on the device


@functools.lru_cache(maxsize=256)
def _on_device(geom, what, *args):
    """A geometry's table (``windows``, ``divisors`` or ``cover``), copied to the GPU once."""
    if what == "windows":
        return tuple(cuda.to_device(t) for t in geom.windows())
    if what == "divisors":
        return cuda.to_device(geom.divisors(*args))
    if what == "step":
        return cuda.to_device(np.array(geom.step, dtype=np.int64))
    return cuda.to_device(_cover(geom))


def _cover(geom):
    """(3, 2, max(in_size)) int64: along dim ``d``, the outputs [cover[d, 0, i], cover[d, 1, i])
    are the only ones whose windows may contain input position i (an empty range for none)."""
    table = np.zeros((3, 2, max(geom.in_size)), dtype=np.int64)
    for d, (n, first, count) in enumerate(zip(geom.in_size, geom.first, geom.count)):
        i = np.arange(n)[:, None]
        first, count = np.asarray(first)[None, :], np.asarray(count)[None, :]
        inside = (first <= i) & (i < first + count)
        some = inside.any(axis=1)
        table[d, 0, :n] = np.where(some, inside.argmax(axis=1), 0)
        table[d, 1, :n] = np.where(some, inside.shape[1] - inside[:, ::-1].argmax(axis=1), 0)
    return table


def _planes(a, size):
    """``a`` (N, C, ...) C-contiguous, seen as (N * C, *size)."""
    return a.reshape(a.shape[0] * a.shape[1], *size)


def _flat(a):
    return a.reshape(a.size)


# --------------------------------------------------------------------------- entry points


def max_forward(x, out, idx, geom, absolute=False):
    """out (and idx, unless None) = max pooling of x (of |x| with ``absolute``), written over them."""
    g = geom.coalesced()
    first, count = _on_device(g, "windows")
    with_indices = idx is not None
    idx = _planes(idx, g.out_size) if with_indices else cuda.device_array((1, 1, 1, 1), np.int64)
    out = _planes(out, g.out_size)
    _max_forward[line(out.size)](_planes(x, g.in_size), out, idx, first, count, _on_device(g, "step"),
                                 with_indices, absolute)


def max_backward(go, idx, gx, geom):
    """gx = the input gradient of max pooling, routed by the flat indices ``idx``. Returns whether
    every index that routes a gradient lies in the input plane (if not, gx is unspecified)."""
    g = geom.coalesced()
    _, count = _on_device(g, "windows")
    fill(_flat(gx), 0)
    go = _planes(go, g.out_size)
    outside = cuda.to_device(np.zeros(1, np.int8))
    _max_backward[line(go.size)](go, _planes(idx, g.out_size), gx.reshape(go.shape[0], math.prod(g.in_size)), count,
                                 outside)
    return not outside.copy_to_host()[0]


def index_range(idx, geom):
    """(min, max) of the indices of the windows that read something, or None if none did."""
    g = geom.coalesced()
    _, count = _on_device(g, "windows")
    lohi = cuda.to_device(np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min]))
    idx = _planes(idx, g.out_size)
    _index_range[line(idx.size)](idx, count, lohi)
    lo, hi = lohi.copy_to_host()
    return None if lo > hi else (int(lo), int(hi))


def avg_forward(x, out, geom, count_include_pad=False, divisor_override=None):
    """out = average pooling of x: each window's sum divided by its divisor."""
    g = geom.coalesced()
    first, count = _on_device(g, "windows")
    out = _planes(out, g.out_size)
    _avg_forward[line(out.size)](_planes(x, g.in_size), out, first, count,
                                 _on_device(g, "divisors", count_include_pad, divisor_override))


def avg_backward(go, gx, geom, count_include_pad=False, divisor_override=None, x=None, power=1.0):
    """gx = the input gradient of average pooling, written over ``gx``; with ``x``, times
    power * x ** (power - 1) (the gradient of avg_pool(x ** power))."""
    g = geom.coalesced()
    first, count = _on_device(g, "windows")
    gx = _planes(gx, g.in_size)
    powered = x is not None
    x = _planes(x, g.in_size) if powered else gx
    _avg_backward[line(gx.size)](_planes(go, g.out_size), gx, first, count,
                                 _on_device(g, "divisors", count_include_pad, divisor_override),
                                 _on_device(g, "cover"), x, gx.dtype.type(power), powered)


def lp_forward(x, out, geom, p):
    """out = lp pooling of x for a finite p: (avg_pool(x ** p) * prod(kernel)) ** (1 / p)."""
    g = geom.coalesced()
    first, count = _on_device(g, "windows")
    out = _planes(out, g.out_size)
    t = x.dtype.type
    _lp_forward[line(out.size)](_planes(x, g.in_size), out, first, count, _on_device(g, "divisors", True, None),
                                t(p), t(1 / p), t(np.prod(geom.kernel)))


def lp_backward(go, x, gx, geom, p):
    """gx = the input gradient of lp pooling for a finite p; ``go`` is only read."""
    g = geom.coalesced()
    first, count = _on_device(g, "windows")
    t = x.dtype.type
    grad_mean = cuda.device_array(go.shape, go.dtype)
    _lp_grad_out[line(go.size)](_planes(go, g.out_size), _planes(x, g.in_size), _planes(grad_mean, g.out_size),
                                first, count, _on_device(g, "divisors", True, None), t(p), t(1 / p),
                                t(np.prod(geom.kernel)))
    avg_backward(grad_mean, gx, geom, True, None, x=x, power=p)


def times_sign(gx, x):
    """gx *= sign(x), in place (gx and x flat, of one size)."""
    _times_sign[line(gx.size)](gx, x)
