"""Softmax and log-softmax along the middle axis of a C-contiguous (outer, D, inner) device array:
the twin of ``kernels.cpu.softmax``, same entry points and scratch arguments.

One thread per (outer, inner) position sweeps its D values three times (max, sum of
exponentials, write), the statistics in registers: neighbouring threads hold neighbouring inner
positions, so for dim=1 of (N, C, H, W) each sweep reads contiguous rows (coalesced). ``m`` and
``s``, the CPU kernels' (outer, inner) scratch, are accepted for the same signature and unused.
Stable as on the CPU: exp(x - max) never overflows, and a NaN, a +inf or a slice of only -inf
makes its slice NaN.
"""

import math

from numba import cuda

from ._launch import line


@cuda.jit
def _forward(x, out, log):
    O, D, I = x.shape
    t = cuda.grid(1)
    if t < O * I:
        o, i = t // I, t % I
        mx = out.dtype.type(-math.inf)
        for d in range(D):
            v = x[o, d, i]
            if v > mx:
                mx = v
        total = out.dtype.type(0)
        for d in range(D):
            e = math.exp(x[o, d, i] - mx)
            out[o, d, i] = e
            total += e
        if log:  # (x - max) - log(sum), as on the CPU
            lt = math.log(total)
            for d in range(D):
                out[o, d, i] = (x[o, d, i] - mx) - lt
        else:
            rt = out.dtype.type(1) / total
            for d in range(D):
                out[o, d, i] *= rt


@cuda.jit
def _backward(go, y, out, log):
    O, D, I = go.shape
    t = cuda.grid(1)
    if t < O * I:
        o, i = t // I, t % I
        total = out.dtype.type(0)
        if log:
            for d in range(D):
                total += go[o, d, i]
            for d in range(D):
                out[o, d, i] = go[o, d, i] - math.exp(y[o, d, i]) * total
        else:
            for d in range(D):
                total += go[o, d, i] * y[o, d, i]
            for d in range(D):
                out[o, d, i] = y[o, d, i] * (go[o, d, i] - total)


def forward(x, out, m, s, log):
    """out = softmax(x) along axis 1 (log_softmax when ``log``)."""
    _forward[line(x.shape[0] * x.shape[2])](x, out, log)


def backward(go, y, out, s, log):
    """Input gradient from the forward's output y: y * (go - sum(go * y)), or go - exp(y) * sum(go)."""
    _backward[line(go.shape[0] * go.shape[2])](go, y, out, log)
