"""Small matrix products of the linear layer, on the calling thread.

NumPy's BLAS splits a GEMM over its own threads once it exceeds a few hundred thousand
multiply-adds. For a classifier head (LeNet's 64 x 400 x 120) that split costs more than it
saves: the BLAS threads wait for cores that numbaconv's kernels, or other processes, just used,
and in a LeNet training step such a product took 0.3-2.7 ms against about 0.1 ms on one thread
(2 cores). ``functional.linear`` sends products up to ``SMALL_MACS`` multiply-adds here and the
larger ones to BLAS, where the threads pay off. The loops are register-blocked (four rows of x
per pass over a weight row; four rows of the right operand per pass over an output row) so that
each load feeds several multiply-adds, and their innermost loops run along contiguous rows, which
LLVM vectorizes (``fastmath`` reassociation lets it split the dot products' sums).

The twin of ``kernels.cuda.linear``: forward, grad_input and grad_weight, each written over
``out``; the bias gradient is a column sum, NumPy's.
"""

import numpy as np
from numba import njit

from ._window import FASTMATH, U

#: Products of at most this many multiply-adds (M * N * K) run here; larger ones go to BLAS.
SMALL_MACS = 1 << 23


@njit(cache=True, fastmath=FASTMATH)
def _nt(a, b, bias, out):
    """out (M, N) = a (M, K) @ b (N, K).T (+ bias (N,) when it has N elements)."""
    M, K = a.shape
    N = b.shape[0]
    with_bias = bias.shape[0] == N
    m = 0
    while m < M:
        rows = min(4, M - m)
        for n in range(N):
            z = out.dtype.type(0)
            s0 = s1 = s2 = s3 = z
            if rows == 4:
                for k in range(K):
                    bk = b[n, U(k)]
                    s0 += a[m, U(k)] * bk
                    s1 += a[m + 1, U(k)] * bk
                    s2 += a[m + 2, U(k)] * bk
                    s3 += a[m + 3, U(k)] * bk
            else:
                for r in range(rows):
                    s = z
                    for k in range(K):
                        s += a[m + r, U(k)] * b[n, U(k)]
                    if r == 0:
                        s0 = s
                    elif r == 1:
                        s1 = s
                    else:
                        s2 = s
            if with_bias:
                c = bias[n]
                s0 += c
                s1 += c
                s2 += c
                s3 += c
            out[m, U(n)] = s0
            if rows > 1:
                out[m + 1, U(n)] = s1
            if rows > 2:
                out[m + 2, U(n)] = s2
            if rows > 3:
                out[m + 3, U(n)] = s3
        m += rows


@njit(cache=True, fastmath=FASTMATH)
def _nn(a, b, out):
    """out (M, N) = a (M, K) @ b (K, N); ``a`` may be a strided view (a transpose)."""
    M, K = a.shape
    N = b.shape[1]
    K4 = K - K % 4
    for m in range(M):
        for n in range(N):
            out[m, U(n)] = 0
        for k in range(0, K4, 4):
            s0, s1, s2, s3 = a[m, k], a[m, k + 1], a[m, k + 2], a[m, k + 3]
            for n in range(N):
                out[m, U(n)] += s0 * b[k, U(n)] + s1 * b[k + 1, U(n)] + s2 * b[k + 2, U(n)] + s3 * b[k + 3, U(n)]
        for k in range(K4, K):
            s = a[m, k]
            for n in range(N):
                out[m, U(n)] += s * b[k, U(n)]


def is_small(m, n, k):
    """Whether an (m x k) @ (k x n) product runs here rather than in BLAS."""
    return m * n * k <= SMALL_MACS


def forward(x, w, b):
    """x (M, K) @ w (N, K).T + b: a new C-contiguous (M, N) array."""
    out = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
    _nt(np.ascontiguousarray(x), np.ascontiguousarray(w), np.empty(0, x.dtype) if b is None else b, out)
    return out


def grad_input(go, w):
    """go (M, N) @ w (N, K): the gradient with respect to x."""
    out = np.empty((go.shape[0], w.shape[1]), dtype=go.dtype)
    _nn(go, np.ascontiguousarray(w), out)
    return out


def grad_weight(go, x):
    """go (M, N).T @ x (M, K): the gradient with respect to the weight."""
    out = np.empty((go.shape[1], x.shape[1]), dtype=go.dtype)
    _nn(go.T, np.ascontiguousarray(x), out)
    return out
