"""Softmax and log-softmax along the middle axis of a C-contiguous (outer, D, inner) device array:
the twin of ``kernels.cpu.softmax``, same entry points and scratch arguments.

One thread per (outer, inner) position sweeps its D values three times (max, sum of
exponentials, write), the statistics in registers: neighbouring threads hold neighbouring inner
positions, so for dim=1 of (N, C, H, W) each sweep reads contiguous rows (coalesced). For the
last dim (inner = 1) of rows of at least a warp's length (class scores), one thread per row
would leave the GPU nearly idle and read with stride D, so a block takes each row instead
(``_forward_rows``, as the CPU twin has its own row kernel): its threads stride along the row
and meet in shared-memory trees for the max and the sum (float64). ``m`` and ``s``, the CPU
kernels' (outer, inner) scratch, are accepted for the same signature and unused.
Stable as on the CPU: exp(x - max) never overflows, and a NaN, a +inf or a slice of only -inf
makes its slice NaN.
"""

import math

from numba import cuda, float64

from ._launch import THREADS, WARP, block_sum, line, pow2_at_least


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


@cuda.jit(device=True, inline=True)
def _block_max(value, shared):
    """The max of ``value`` over the threads of a 1-D block (a power of two), to every thread;
    a NaN is skipped, as by ``v > max`` in the sweeps (it makes the sum NaN anyway)."""
    t = cuda.threadIdx.x
    shared[t] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half and shared[t + half] > shared[t]:
            shared[t] = shared[t + half]
        cuda.syncthreads()
        half //= 2
    return shared[0]


@cuda.jit
def _forward_rows(x, out, log):
    """``_forward`` for (O, D) rows, one block per row."""
    o, D = cuda.blockIdx.x, x.shape[1]
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    peak = cuda.shared.array(THREADS, float64)
    sums = cuda.shared.array(THREADS, float64)
    mx = -math.inf
    for d in range(t, D, step):
        v = x[o, d]
        if v > mx:
            mx = v
    mx = out.dtype.type(_block_max(mx, peak))
    total = 0.0
    for d in range(t, D, step):
        e = math.exp(x[o, d] - mx)
        out[o, d] = e
        total += e
    total = block_sum(total, sums)
    if log:
        lt = out.dtype.type(math.log(total))
        for d in range(t, D, step):
            out[o, d] = (x[o, d] - mx) - lt
    else:
        rt = out.dtype.type(1.0 / total)
        for d in range(t, D, step):
            out[o, d] *= rt


@cuda.jit
def _backward_rows(go, y, out, log):
    """``_backward`` for (O, D) rows, one block per row."""
    o, D = cuda.blockIdx.x, go.shape[1]
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    sums = cuda.shared.array(THREADS, float64)
    total = 0.0
    for d in range(t, D, step):
        total += go[o, d] if log else go[o, d] * y[o, d]
    total = out.dtype.type(block_sum(total, sums))
    for d in range(t, D, step):
        if log:
            out[o, d] = go[o, d] - math.exp(y[o, d]) * total
        else:
            out[o, d] = y[o, d] * (go[o, d] - total)


def _rows(a):
    """Whether (O, D, I) is rows for the block-per-row kernels: I = 1 and D at least a warp."""
    return a.shape[2] == 1 and a.shape[1] >= WARP


def forward(x, out, m, s, log):
    """out = softmax(x) along axis 1 (log_softmax when ``log``)."""
    if _rows(x):
        O, D, _ = x.shape
        _forward_rows[O, pow2_at_least(D, THREADS)](x.reshape(O, D), out.reshape(O, D), log)
        return
    _forward[line(x.shape[0] * x.shape[2])](x, out, log)


def backward(go, y, out, s, log):
    """Input gradient from the forward's output y: y * (go - sum(go * y)), or go - exp(y) * sum(go)."""
    if _rows(go):
        O, D, _ = go.shape
        _backward_rows[O, pow2_at_least(D, THREADS)](go.reshape(O, D), y.reshape(O, D), out.reshape(O, D), log)
        return
    _backward[line(go.shape[0] * go.shape[2])](go, y, out, log)
