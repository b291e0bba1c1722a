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

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._math import exp
from ._window import U, parallel_kernel

BLOCK = 1 << 10


@njit(inline="always", cache=True)
def _task(task, inner):
    blocks = (inner + BLOCK - 1) // BLOCK
    o, i0 = task // blocks, (task % blocks) * BLOCK
    return o, i0, min(inner, i0 + BLOCK)


def _key(v):
    """The bits of float ``v`` as a signed integer that orders as the floats do (-0 just below
    +0; a NaN above inf or below -inf, by its sign bit). A max over keys vectorizes where a max
    over floats (a compare and a select) does not. Implemented by the overload below."""
    raise NotImplementedError


def _unkey(k):
    """The float whose ``_key`` is ``k`` (float32 for an int32 key, float64 for an int64 one)."""
    raise NotImplementedError


@overload(_key, inline="always")
def _key_overload(v):
    # key = bits with the 31 (63) bits below the sign flipped where the sign is set: its own inverse
    if v == types.float32:
        def key32(v):
            b = np.float32(v).view(np.int32)
            return np.int32(b ^ ((b >> np.int32(31)) & np.int32(0x7FFFFFFF)))
        return key32
    if v == types.float64:
        def key64(v):
            b = np.float64(v).view(np.int64)
            return np.int64(b ^ ((b >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF)))
        return key64
    return None


@overload(_unkey, inline="always")
def _unkey_overload(k):
    if k == types.int32:
        return lambda k: np.int32(k ^ ((k >> np.int32(31)) & np.int32(0x7FFFFFFF))).view(np.float32)
    if k == types.int64:
        return lambda k: np.int64(k ^ ((k >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF))).view(np.float64)
    return None


@njit(inline="always", cache=True)
def _forward_rows(x, out, log):
    """``forward`` for inner = 1 on (outer, D) views: one task per row, each reduction over D in
    a scalar accumulator, so every loop runs along a contiguous row and vectorizes.

    The max is taken over ``_key``s. It may pick a NaN, or skip one: a NaN in the row makes the
    sum, and so every output, NaN either way."""
    O, D = x.shape
    for o in prange(O):
        k = _key(x[o, 0])
        for d in range(1, D):
            kd = _key(x[o, U(d)])
            k = kd if kd > k else k
        mx = _unkey(k)
        t = out.dtype.type(0)
        for d in range(D):
            e = exp(x[o, U(d)] - mx)
            out[o, U(d)] = e
            t += e
        if log:
            lt = out.dtype.type(math.log(t))
            for d in range(D):
                out[o, U(d)] = (x[o, U(d)] - mx) - lt
        else:
            rt = out.dtype.type(1) / t
            for d in range(D):
                out[o, U(d)] *= rt


@njit(inline="always", cache=True)
def _backward_rows(go, y, out, log):
    """``backward`` for inner = 1 on (outer, D) views, sums in scalar accumulators."""
    O, D = go.shape
    for o in prange(O):
        t = out.dtype.type(0)
        if log:
            for d in range(D):
                t += go[o, U(d)]
            for d in range(D):
                out[o, U(d)] = go[o, U(d)] - exp(y[o, U(d)]) * t
        else:
            for d in range(D):
                t += go[o, U(d)] * y[o, U(d)]
            for d in range(D):
                out[o, U(d)] = y[o, U(d)] * (go[o, U(d)] - t)


#: ``parallel_kernel``'s factor for softmax: half the plain streaming kernels', since an
#: exponential per element makes it compute-bound. Over (64, 1000) on 2 cores with TBB's threads
#: (medians of seven alternating bursts, either import order): forward 37 -> 26 us (PyTorch 22),
#: backward 18 -> 16 us, and a linear into 1000 classes followed by the softmax no slower (354 ->
#: 308 us, and 315 -> 290 with PyTorch imported first). (Under the workqueue layer, whose
#: hand-offs cost 70-100 us, it had taken 46 us on one thread and 140 on two.)
STREAMING = 8


@parallel_kernel(streaming=STREAMING)
def forward(x, out, m, s, log):
    """out = softmax(x) along axis 1 (log_softmax when ``log``); m, s: (outer, inner) scratch."""
    O, D, I = x.shape
    if I == 1:
        _forward_rows(x.reshape(O, D), out.reshape(O, D), log)
        return
    blocks = (I + BLOCK - 1) // BLOCK
    for task in prange(O * blocks):
        o, i0, i1 = _task(task, I)
        # the running max goes from m into s and back, never over the value it was read from:
        # ``if v > m[i]: m[i] = v`` became a masked store, microcoded on AMD's AVX2 cores
        for i in range(i0, i1):
            m[o, U(i)] = x[o, 0, U(i)]
        for d in range(1, D):
            if d & 1:
                for i in range(i0, i1):
                    v, best = x[o, d, U(i)], m[o, U(i)]
                    s[o, U(i)] = v if v > best else best
            else:
                for i in range(i0, i1):
                    v, best = x[o, d, U(i)], s[o, U(i)]
                    m[o, U(i)] = v if v > best else best
        if D % 2 == 0:  # the last pass wrote s
            for i in range(i0, i1):
                m[o, U(i)] = s[o, U(i)]
        for i in range(i0, i1):
            s[o, U(i)] = 0
        for d in range(D):
            for i in range(i0, i1):
                e = exp(x[o, d, U(i)] - m[o, U(i)])
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


@parallel_kernel(streaming=STREAMING)
def backward(go, y, out, s, log):
    """Input gradient from the forward's output y; s: (outer, inner) scratch.

    softmax:     grad_x = y * (grad_out - sum_d(grad_out * y))
    log_softmax: grad_x = grad_out - exp(y) * sum_d(grad_out)
    """
    O, D, I = go.shape
    if I == 1:
        _backward_rows(go.reshape(O, D), y.reshape(O, D), out.reshape(O, D), log)
        return
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
                    out[o, d, U(i)] = go[o, d, U(i)] - exp(y[o, d, U(i)]) * s[o, U(i)]
        else:
            for d in range(D):
                for i in range(i0, i1):
                    s[o, U(i)] += go[o, d, U(i)] * y[o, d, U(i)]
            for d in range(D):
                for i in range(i0, i1):
                    out[o, d, U(i)] = y[o, d, U(i)] * (go[o, d, U(i)] - s[o, U(i)])
