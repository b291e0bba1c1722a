"""What every CPU kernel shares: how it is compiled, and the index arithmetic of windows."""

import functools

import numba
import numpy as np
from numba import njit

from ... import _threads, config

#: Inner-loop indices are cast to this unsigned type. Numba gives every signed index a
#: negative-index wraparound branch, and that branch stops LLVM from vectorizing the loop
#: (measured: 3x slower on a row update). The valid ranges below guarantee indices are >= 0.
U = np.uint64


def parallel_kernel(py_func):
    """``@njit(parallel=True, cache=True, fastmath=FASTMATH)``, run on the calling thread alone
    when its largest array has fewer than ``config.PARALLEL_MIN_ELEMENTS`` elements.

    Waking Numba's sleeping worker threads costs about 70 us (measured, 2 cores, passive OpenMP
    wait): more than a small kernel takes on one thread (softmax over (64, 1000): 170 us
    parallel against 21 us in PyTorch). ``numba.set_num_threads`` is per calling thread, so
    other threads' calls are not affected.
    """
    compiled = njit(parallel=True, cache=True, fastmath=FASTMATH)(py_func)

    def call(args):
        largest = max((a.size for a in args if isinstance(a, np.ndarray)), default=0)
        if largest >= config.PARALLEL_MIN_ELEMENTS:
            return compiled(*args)
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return compiled(*args)
        finally:
            numba.set_num_threads(threads)

    @functools.wraps(py_func)
    def run(*args):
        if _threads.serialize:  # a threading layer that aborts when entered twice at once
            with _threads.lock:
                return call(args)
        return call(args)

    run.compiled = compiled
    return run

#: fastmath flags for kernels: contraction to FMA and reassociation of sums (what lets LLVM
#: vectorize reductions). No 'nnan'/'ninf': NaN and inf must propagate as in PyTorch.
FASTMATH = {"contract", "reassoc"}


@njit(inline="always", cache=True)
def valid_outputs(offset, stride, n_in, n_out):
    """Range [lo, hi) of output positions o with 0 <= o * stride + offset < n_in.

    ``offset`` is ``tap * dilation - padding``. Loops run over exactly this range, so no
    index is checked (or goes out of bounds) inside an inner loop.
    """
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = n_in - 1 - offset
    hi = 0 if last < 0 else min(n_out, last // stride + 1)
    return lo, max(lo, hi)


@njit(inline="always", cache=True)
def tap_offsets(t, kernel, dilation, padding):
    """(d, h, w) input offsets of flat kernel tap ``t``: input index = output index * stride + offset."""
    KD, KH, KW = kernel
    return ((t // (KH * KW)) * dilation[0] - padding[0],
            ((t // KW) % KH) * dilation[1] - padding[1],
            (t % KW) * dilation[2] - padding[2])
