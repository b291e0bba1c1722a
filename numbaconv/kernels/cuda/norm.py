"""Normalization kernels on the GPU: the twin of ``kernels.cpu.norm``, same entry points.

x is a C-contiguous (N, C, S) device array of planes. The per-plane coefficients and statistics,
C-contiguous float64 (N, C) arrays, are host NumPy arrays here as on the CPU: the public layer
combines them with NumPy (a few numbers per plane, the same code for both devices), and each
entry point copies them in or out, N * C values, while the data stays on the GPU.

* ``plane_moments`` and ``plane_sums``: one block per plane; its threads stride over the plane
  and their float64 partial sums meet in a shared-memory tree (``_launch.block_sum``), twice:
  the mean first, then the deviations from it (no cancellation, as on the CPU);
* ``plane_affine`` and ``plane_grad_input``: one thread per element, float64 coefficients, as on
  the CPU (a float32 result is rounded once, when stored);
* ``lrn_forward`` and ``lrn_backward``: one thread per element, summing its channel window in
  the data's dtype; the backward's second kernel gathers what the first one wrote for the
  channels whose windows hold it.
"""

import numpy as np
from numba import cuda, float64

from ._launch import THREADS, block_sum, line, pow2_at_least


def _plane_threads(S):
    """Threads of a block that reduces a plane of S values: a power of two (the tree halves it),
    no more than the plane has values, so a small plane leaves no thread idle."""
    return pow2_at_least(S, THREADS)


@cuda.jit
def _plane_moments(x, mean, m2):
    C, S = x.shape[1], x.shape[2]
    n, c = cuda.blockIdx.x // C, cuda.blockIdx.x % C
    sums = cuda.shared.array(THREADS, float64)
    squares = cuda.shared.array(THREADS, float64)
    total = 0.0
    for s in range(cuda.threadIdx.x, S, cuda.blockDim.x):
        total += x[n, c, s]
    mu = block_sum(total, sums) / S
    deviations = 0.0
    for s in range(cuda.threadIdx.x, S, cuda.blockDim.x):
        d = x[n, c, s] - mu
        deviations += d * d
    deviations = block_sum(deviations, squares)
    if cuda.threadIdx.x == 0:
        mean[n, c] = mu
        m2[n, c] = deviations


@cuda.jit
def _plane_sums(go, x, mean, m2, sum_go, dot):
    C, S = x.shape[1], x.shape[2]
    n, c = cuda.blockIdx.x // C, cuda.blockIdx.x % C
    sums = cuda.shared.array(THREADS, float64)
    squares = cuda.shared.array(THREADS, float64)
    grads = cuda.shared.array(THREADS, float64)
    products = cuda.shared.array(THREADS, float64)
    total = 0.0
    for s in range(cuda.threadIdx.x, S, cuda.blockDim.x):
        total += x[n, c, s]
    mu = block_sum(total, sums) / S
    deviations = 0.0
    g_total = 0.0
    product = 0.0
    for s in range(cuda.threadIdx.x, S, cuda.blockDim.x):
        d = x[n, c, s] - mu
        g = go[n, c, s]
        deviations += d * d
        g_total += g
        product += g * d
    deviations = block_sum(deviations, squares)
    g_total = block_sum(g_total, grads)
    product = block_sum(product, products)
    if cuda.threadIdx.x == 0:
        mean[n, c] = mu
        m2[n, c] = deviations
        sum_go[n, c] = g_total
        dot[n, c] = product


@cuda.jit(device=True, inline=True)
def _row(a, n):
    """Sample n's row of a coefficient array of N rows, or its one row (as on the CPU)."""
    return min(n, a.shape[0] - 1)


@cuda.jit
def _plane_affine(x, center, scale, shift, out):
    C, S = x.shape[1], x.shape[2]
    i = cuda.grid(1)
    if i < x.size:
        plane, s = i // S, i % S
        n, c = plane // C, plane % C
        out[n, c, s] = (x[n, c, s] - center[_row(center, n), c]) * scale[_row(scale, n), c] + shift[_row(shift, n), c]


@cuda.jit
def _plane_grad_input(go, x, center, p, q, r, gx):
    C, S = x.shape[1], x.shape[2]
    i = cuda.grid(1)
    if i < x.size:
        plane, s = i // S, i % S
        n, c = plane // C, plane % C
        gx[n, c, s] = (go[n, c, s] * p[_row(p, n), c] + (x[n, c, s] - center[_row(center, n), c]) * q[_row(q, n), c]
                       + r[_row(r, n), c])


@cuda.jit(device=True, inline=True)
def _window_sum_of_squares(x, n, c, s, before, after):
    """The sum of x[n, j, s] ** 2 over channels j in [c - before, c + after] (clipped)."""
    total = x.dtype.type(0)
    for j in range(max(0, c - before), min(x.shape[1], c + after + 1)):
        v = x[n, j, s]
        total += v * v
    return total


@cuda.jit
def _lrn_forward(x, before, after, scale, beta, k, out):
    C, S = x.shape[1], x.shape[2]
    i = cuda.grid(1)
    if i < x.size:
        n, c, s = i // (C * S), (i // S) % C, i % S
        out[n, c, s] = x[n, c, s] * (k + scale * _window_sum_of_squares(x, n, c, s, before, after)) ** -beta


@cuda.jit
def _lrn_backward_diagonal(go, x, before, after, scale, beta, k, t, gx):
    """gx = go * d ** -beta (the diagonal term) and t = go * x * d ** (-beta - 1), per element."""
    C, S = x.shape[1], x.shape[2]
    i = cuda.grid(1)
    if i < x.size:
        n, c, s = i // (C * S), (i // S) % C, i % S
        d = k + scale * _window_sum_of_squares(x, n, c, s, before, after)
        dpow = d ** -beta
        g = go[n, c, s]
        gx[n, c, s] = g * dpow
        t[n, c, s] = g * x[n, c, s] * dpow / d


@cuda.jit
def _lrn_backward_gather(x, before, after, coef, t, gx):
    """gx[n, j, s] -= coef * x[n, j, s] * t[n, c, s] for every channel c whose window holds j."""
    C, S = x.shape[1], x.shape[2]
    i = cuda.grid(1)
    if i < x.size:
        n, j, s = i // (C * S), (i // S) % C, i % S
        v = x[n, j, s]
        acc = gx[n, j, s]
        for c in range(max(0, j - after), min(C, j + before + 1)):
            acc -= coef * v * t[n, c, s]
        gx[n, j, s] = acc


# --------------------------------------------------------------------------- entry points


def plane_moments(x, mean, m2):
    """mean[n, c] and m2[n, c] = sum((x[n, c, :] - mean[n, c]) ** 2), into host (N, C) arrays."""
    N, C, S = x.shape
    d_mean, d_m2 = cuda.device_array((N, C), np.float64), cuda.device_array((N, C), np.float64)
    _plane_moments[N * C, _plane_threads(S)](x, d_mean, d_m2)
    d_mean.copy_to_host(mean)
    d_m2.copy_to_host(m2)


def plane_sums(go, x, mean, m2, sum_go, dot):
    """The backward's reductions and the statistics of x, as the CPU twin, into host (N, C) arrays."""
    N, C, S = x.shape
    out = [cuda.device_array((N, C), np.float64) for _ in range(4)]
    _plane_sums[N * C, _plane_threads(S)](go, x, *out)
    for d, h in zip(out, (mean, m2, sum_go, dot)):
        d.copy_to_host(h)


def plane_affine(x, center, scale, shift, out):
    """out[n, c, :] = (x[n, c, :] - center[n, c]) * scale[n, c] + shift[n, c]; host coefficients, (N, C)
    or (1, C)."""
    _plane_affine[line(x.size)](x, *map(cuda.to_device, (center, scale, shift)), out)


def plane_grad_input(go, x, center, p, q, r, gx):
    """gx[n, c, :] = go[n, c, :] * p[n, c] + (x[n, c, :] - center[n, c]) * q[n, c] + r[n, c]."""
    _plane_grad_input[line(x.size)](go, x, *map(cuda.to_device, (center, p, q, r)), gx)


def lrn_forward(x, before, after, scale, beta, k, out):
    """out = x * d ** -beta, d = k + scale * (sum of x ** 2 over the channel window)."""
    _lrn_forward[line(x.size)](x, before, after, scale, beta, k, out)


def lrn_backward(go, x, before, after, scale, beta, k, t, gx):
    """gx = the input gradient of ``lrn_forward`` for output gradient ``go``; ``t`` is scratch."""
    _lrn_backward_diagonal[line(x.size)](go, x, before, after, scale, beta, k, t, gx)
    _lrn_backward_gather[line(x.size)](x, before, after, (scale + scale) * beta, t, gx)
