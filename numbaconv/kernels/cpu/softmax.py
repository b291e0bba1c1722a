"""Softmax and log-softmax along the middle axis of a C-contiguous (outer, D, inner) array.

Any ``dim`` of any array is this view: outer = the product of the sizes before ``dim``, inner =
the product of those after. Each task takes one outer index and a block of up to ``BLOCK`` inner
positions, and sweeps the D axis three times (max, sum of exponentials, write), with the inner
positions innermost: for dim=1 of (N, C, H, W) the inner loops run along contiguous H*W rows
and vectorize; for the last dim (inner = 1) a task is one row.

The per-position statistics (max, sum) live in caller-allocated (outer, inner) arrays, indexed
in full, so a kernel allocates nothing. Stable: exp(x - max) never overflows. A NaN anywhere in
a slice makes its sum NaN and so every output of the slice NaN, as in PyTorch; so does a +inf
(inf - inf) or a slice of only -inf.
"""

import math

from numba import njit, prange

from ._window import U, parallel_kernel

BLOCK = 1 << 10


@njit(inline="always", cache=True)
def _task(task, inner):
    blocks = (inner + BLOCK - 1) // BLOCK
    o, i0 = task // blocks, (task % blocks) * BLOCK
    return o, i0, min(inner, i0 + BLOCK)


@parallel_kernel
def forward(x, out, m, s, log):
    """out = softmax(x) along axis 1 (log_softmax when ``log``); m, s: (outer, inner) scratch."""
    O, D, I = x.shape
    blocks = (I + BLOCK - 1) // BLOCK
    for task in prange(O * blocks):
        o, i0, i1 = _task(task, I)
        for i in range(i0, i1):
            m[o, U(i)] = -math.inf
            s[o, U(i)] = 0
        for d in range(D):
            for i in range(i0, i1):
                v = x[o, d, U(i)]
                if v > m[o, U(i)]:
                    m[o, U(i)] = v
        for d in range(D):
            for i in range(i0, i1):
                e = math.exp(x[o, d, U(i)] - m[o, U(i)])
                out[o, d, U(i)] = e
                s[o, U(i)] += e
        if log:  # (x - max) - log(sum): no log of a tiny quotient, and x - max is exact near the max
            for i in range(i0, i1):
                s[o, U(i)] = math.log(s[o, U(i)])
            for d in range(D):
                for i in range(i0, i1):
                    out[o, d, U(i)] = (x[o, d, U(i)] - m[o, U(i)]) - s[o, U(i)]
        else:
            for i in range(i0, i1):
                s[o, U(i)] = 1 / s[o, U(i)]
            for d in range(D):
                for i in range(i0, i1):
                    out[o, d, U(i)] *= s[o, U(i)]


@parallel_kernel
def backward(go, y, out, s, log):
    """Input gradient from the forward's output y; s: (outer, inner) scratch.

    softmax:     grad_x = y * (grad_out - sum_d(grad_out * y))
    log_softmax: grad_x = grad_out - exp(y) * sum_d(grad_out)
    """
    O, D, I = go.shape
    blocks = (I + BLOCK - 1) // BLOCK
    for task in prange(O * blocks):
        o, i0, i1 = _task(task, I)
        for i in range(i0, i1):
            s[o, U(i)] = 0
        if log:
            for d in range(D):
                for i in range(i0, i1):
                    s[o, U(i)] += go[o, d, U(i)]
            for d in range(D):
                for i in range(i0, i1):
                    out[o, d, U(i)] = go[o, d, U(i)] - math.exp(y[o, d, U(i)]) * s[o, U(i)]
        else:
            for d in range(D):
                for i in range(i0, i1):
                    s[o, U(i)] += go[o, d, U(i)] * y[o, d, U(i)]
            for d in range(D):
                for i in range(i0, i1):
                    out[o, d, U(i)] = y[o, d, U(i)] * (go[o, d, U(i)] - s[o, U(i)])
