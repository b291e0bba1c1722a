"""What every CUDA kernel shares: launch sizes from the problem size, device arrays, the
block-wide sum, and the per-channel bias kernels of the convolutions.

This package imports ``numba.cuda`` at its top; numbaconv imports the package only when an op
is called on GPU arrays, so ``import numbaconv`` never needs the ``cuda`` extra or a GPU.
"""

import functools

import numba
import numpy as np
from numba import cuda

from ..._device import as_device

#: Threads per block of the one-thread-per-element kernels: a multiple of the warp size that
#: keeps every SM busy with several resident blocks.
THREADS = 256
WARP = 32

#: Shared memory a block may take without asking for the opt-in carve-out (every GPU since
#: Kepler has at least this much per block).
SHARED_BYTES = 48 * 1024


def ceil_div(a, b):
    return -(-a // b)


def pow2_at_least(n, limit):
    """The smallest power of two >= n (at least 1), capped at ``limit``."""
    p = 1
    while p < n and p < limit:
        p *= 2
    return p


def line(n):
    """(blocks, threads) of a launch with one thread per element of ``n``: small problems get
    one small block (no idle warps beyond the first), large ones THREADS-wide blocks."""
    threads = min(THREADS, max(WARP, pow2_at_least(n, THREADS)))
    return max(1, ceil_div(n, threads)), threads


def reduction_threads(n):
    """Threads of a block that sums ``n`` terms: a power of two (the tree below halves it)."""
    return max(WARP, pow2_at_least(n, THREADS))


def device_arrays(op, **arrays):
    """The GPU ``arrays`` (None stays None) as numba device arrays, in the order given, without a
    copy; ValueError naming any that is not C-contiguous. The kernels index contiguous memory,
    and a silent device copy of a strided view would hide a cost the caller can avoid (by
    ``.copy()`` or ``cupy.ascontiguousarray`` where the view is made)."""
    taken = []
    for name, a in arrays.items():
        if a is not None:
            a = as_device(a)
            if not a.is_c_contiguous():
                raise ValueError(f"{op}: {name} must be C-contiguous on the GPU, got a strided view of shape "
                                 f"{tuple(a.shape)}; copy it first (a.copy())")
        taken.append(a)
    return tuple(taken)


def empty(shape, dtype):
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def zeros(shape, dtype):
    a = empty(shape, dtype)
    fill(a.reshape(a.size), 0)
    return a


def flat(a):
    """A contiguous device array as one dimension (a view)."""
    return as_device(a).reshape(int(np.prod(a.shape)))


def numba_type(dtype):
    return numba.from_dtype(np.dtype(dtype))


def per_dtype(make):
    """A kernel factory ``make(nb)``, nb the numba type of the arrays, compiled once per dtype:
    for kernels that hold a zero, a local or a shared array of their arrays' dtype."""
    compiled = functools.cache(lambda dtype: make(numba_type(dtype)))
    return lambda dtype: compiled(np.dtype(dtype))


@cuda.jit
def _fill(a, value):
    i = cuda.grid(1)
    if i < a.size:
        a[i] = value


def fill(a, value):
    """Set every element of a 1-D device array."""
    if a.size:
        blocks, threads = line(a.size)
        _fill[blocks, threads](a, a.dtype.type(value))


@cuda.jit(device=True, inline=True)
def block_sum(value, shared):
    """The sum of ``value`` over the threads of a 1-D block of ``len(shared)`` threads (a power
    of two), returned to thread 0: a tree in shared memory, log2(threads) steps."""
    t = cuda.threadIdx.x
    shared[t] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            shared[t] += shared[t + half]
        cuda.syncthreads()
        half //= 2
    return shared[0]


@cuda.jit(device=True, inline=True)
def source(a, k, s, d, pad, O):
    """Output index o with o * s + k * d - pad == a, or -1 when there is none."""
    q = a + pad - k * d
    if q < 0:
        return -1
    if s > 1:  # 64-bit division is dozens of instructions: only where the stride needs it
        if q % s:
            return -1
        q //= s
    return q if q < O else -1


@cuda.jit(device=True, inline=True)
def valid_outputs(offset, stride, n_in, n_out):
    """Range [lo, hi) of output positions o with 0 <= o * stride + offset < n_in (the twin of
    kernels/cpu/_window.valid_outputs)."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = n_in - 1 - offset
    hi = 0 if last < 0 else min(n_out, last // stride + 1)
    return lo, max(lo, hi)


#: The largest grid y (and z) of a launch, on every GPU numba-cuda supports.
MAX_GRID_Y = 65535


def batch_slices(batch, depth):
    """(n0, n1) ranges of samples whose ``plane_grid`` launches, outer = samples x ``depth``,
    keep grid y within MAX_GRID_Y: one range unless the batch is very large."""
    step = max(1, MAX_GRID_Y // max(1, depth))
    return [(n0, min(n0 + step, batch)) for n0 in range(0, batch, step)]


def plane_grid(plane, outer, count):
    """(grid, threads) of a kernel with a thread per element of ``count`` planes of ``plane``
    elements, times ``outer``: grid x = plane index * tiles + tile (no 65535 limit), grid y =
    the outer index; a thread finds its place with one division per dimension, not one per
    dimension of the whole tensor."""
    _, threads = line(plane)
    return (count * ceil_div(plane, threads), outer), threads


@cuda.jit
def _add_bias(out, b, plane):
    """out[n, k, p] += b[k], out viewed (N * K * plane,)."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] += b[(i // plane) % b.size]


def add_bias(out, b):
    """out (N, K, ...) += b[k] per channel, in place."""
    if out.size:
        plane = int(np.prod(out.shape[2:]))
        blocks, threads = line(out.size)
        _add_bias[blocks, threads](flat(out), as_device(b), plane)


@per_dtype
def _channel_sum(nb):
    @cuda.jit
    def channel_sum(g, total, N, K, plane):
        """total[k] = sum over n, p of g[n, k, p], g viewed (N * K * plane,): a block per channel."""
        shared = cuda.shared.array(THREADS, nb)
        k = cuda.blockIdx.x
        acc = nb(0)
        for r in range(cuda.threadIdx.x, N * plane, cuda.blockDim.x):
            acc += g[((r // plane) * K + k) * plane + r % plane]
        s = block_sum(acc, shared)
        if cuda.threadIdx.x == 0:
            total[k] = s

    return channel_sum


def channel_sum(g):
    """The sum of g (N, K, ...) over every axis but the channel axis: (K,), g's dtype."""
    N, K = g.shape[:2]
    plane = int(np.prod(g.shape[2:]))
    total = empty((K,), g.dtype)
    if N * plane == 0:
        fill(total, 0)
    elif K:
        _channel_sum(g.dtype)[K, reduction_threads(N * plane)](flat(g), total, N, K, plane)
    return total


@per_dtype
def _sum_rows(nb):
    @cuda.jit
    def sum_rows(partial, out, accumulate):
        e = cuda.grid(1)
        if e < out.size:
            acc = nb(0)
            for s in range(partial.shape[0]):
                acc += partial[s, e]
            if accumulate:
                out[e] += acc
            else:
                out[e] = acc

    return sum_rows


def sum_rows(partial, out, accumulate=False):
    """out (=, or += with ``accumulate``) the sum of the rows of ``partial`` (S, out.size): how
    kernels that split a long sum over S slices of threads add the slices up, in a fixed order
    (no atomics, so the result does not depend on thread timing)."""
    blocks, threads = line(out.size)
    _sum_rows(out.dtype)[blocks, threads](partial, flat(out), bool(accumulate))
