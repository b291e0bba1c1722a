"""What every CPU kernel shares: how it is compiled, and the index arithmetic of windows."""

import functools
import math
import threading
import time
import types

import numpy as np
from numba import njit

from ... import _threads, config

#: Inner-loop indices are cast to this unsigned type. Numba gives every signed index a
#: negative-index wraparound branch, and that branch stops LLVM from vectorizing the loop
#: (measured: 3x slower on a row update). The valid ranges below guarantee indices are >= 0.
U = np.uint64


#: A streaming kernel (``parallel_kernel(streaming=True)``: a few operations per element read,
#: as element-wise ops, normalization and pooling) goes parallel only at this many times
#: ``config.PARALLEL_MIN_ELEMENTS``: on one thread it streams about 5 elements a nanosecond, so
#: below that size the threads' hand-off costs more than they save (relu and batch norm over
#: (1, 64, 56, 56), 2 cores: 114 and 96 us on one thread, 152 and 122 us on two).
STREAMING_FACTOR = 16


def parallel_kernel(py_func=None, *, streaming=False, beside_blas=False):
    """``@njit(parallel=True, cache=True, fastmath=FASTMATH)``, run as a serial twin on the calling
    thread when its largest array has fewer than ``config.PARALLEL_MIN_ELEMENTS`` elements
    (times ``STREAMING_FACTOR`` for a ``streaming`` kernel, or times ``streaming`` itself when it
    is a number: a kernel that does more per element read than plain streaming).

    A kernel ``beside_blas`` runs between GEMMs (im2col's copies): it also stays serial while
    NumPy's BLAS threads spin after each call (``_threads.blas_spins``). Parallel, it would share
    the cores with them, and ran 2-6 ms instead of 5 us (2 cores); serial, it runs beside them.

    Waking Numba's sleeping worker threads costs about 70 us (measured, 2 cores, passive OpenMP
    wait; threads that still spin from the last parallel kernel take work from a fraction of the
    threshold, ``config.PARALLEL_AWAKE_DIVISOR``): more than a small kernel takes on one thread (softmax over (64, 1000): 170 us
    parallel against 21 us in PyTorch). Setting the parallel kernel's thread count to one is
    not enough: the workqueue layer still hands the work to a worker thread and waits for it
    (log_softmax over (64, 10): 53 us, against 4 us serial; milliseconds when other processes
    hold the cores). So small calls run the same function compiled with ``parallel=False``
    (``prange`` is then ``range``), under a name of its own so that the two do not share cache
    entries; it is compiled, or loaded from the cache, at its first call. The twin uses NumPy's
    error model, as Numba's parallel loops do: with Python's, every division checks for zero,
    and that branch stopped LLVM from vectorizing (sigmoid over 200,704 elements: 1044 us
    against 81 us).
    """
    if py_func is None:
        return functools.partial(parallel_kernel, streaming=streaming, beside_blas=beside_blas)
    compiled = njit(parallel=True, cache=True, fastmath=FASTMATH)(py_func)
    factor = STREAMING_FACTOR if streaming is True else (streaming or 1)
    serial = []  # the serial twin, made at the first small call

    def serial_twin():
        if not serial:
            twin = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + "_onethread",
                                      py_func.__defaults__, py_func.__closure__)
            twin.__qualname__ = py_func.__qualname__ + "_onethread"
            serial.append(njit(cache=True, fastmath=FASTMATH, error_model="numpy")(twin))
        return serial[0]

    @functools.wraps(py_func)
    def run(*args):
        largest = 0
        for a in args:  # a loop, not max() over a generator: this runs on every kernel call
            size = getattr(a, "size", 0)  # arrays (and NumPy scalars, of size 1)
            if size > largest:
                largest = size
        if runs_serial(largest, factor, beside_blas, run):
            result = (serial[0] if serial else serial_twin())(*args)
        else:
            if _threads.serialize:  # a threading layer that aborts when entered twice at once
                with _threads.lock:
                    result = compiled(*args)
            else:
                result = compiled(*args)
            _threads.last_parallel_end = time.perf_counter()
        # (a kernel that raised leaves these as they were: the next call's guess is all they feed)
        _threads.last_kernel, _threads.last_kernel_end = run, time.perf_counter()
        return result

    run.compiled = compiled
    return run


def runs_serial(largest, factor=1, beside_blas=False, kernel=None):
    """Whether a ``parallel_kernel`` call whose largest array has ``largest`` elements runs its
    serial twin (see ``parallel_kernel``): below ``config.PARALLEL_MIN_ELEMENTS`` times
    ``factor``; below a ``config.PARALLEL_AWAKE_DIVISOR``-th of it where the threads spin
    after a kernel (``_threads.spin_window``) and either still spin from the last parallel
    kernel, or ``kernel`` is called again right after its own last call (a loop over one
    kernel: the first parallel call wakes the threads, and the rest find them awake)."""
    threshold = config.PARALLEL_MIN_ELEMENTS
    now = time.perf_counter()
    window = _threads.spin_window
    if now - _threads.last_parallel_end < window or (
            kernel is not None and _threads.last_kernel is kernel and now - _threads.last_kernel_end < window):
        threshold //= config.PARALLEL_AWAKE_DIVISOR
    return largest < threshold * factor or (beside_blas and _threads.blas_spins)


#: fastmath flags for kernels: contraction to FMA and reassociation of sums (what lets LLVM
#: vectorize reductions). No 'nnan'/'ninf': NaN and inf must propagate as in PyTorch.
FASTMATH = {"contract", "reassoc"}


#: The epilogue that changes nothing: ``activate`` with (slope, lo, hi) = IDENTITY is the identity
#: (conv_direct's docstring says what the epilogue is).
IDENTITY = (1.0, -np.inf, np.inf)


@njit(inline="always", cache=True)
def activate(v, slope, lo, hi):
    """clip(leaky(v), lo, hi), NaN kept (every comparison with NaN is false)."""
    if v < 0:
        v = v * slope
    if v < lo:
        v = lo
    if v > hi:
        v = hi
    return v


@njit(inline="always", cache=True)
def is_identity(slope, lo, hi):
    return slope == 1 and lo == -np.inf and hi == np.inf


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


_scratch = threading.local()


def scratch_array(name, shape, dtype):
    """An uninitialized array kept per thread under ``name`` and reused by later calls.

    A fresh buffer of tens of MB is paid for again on every call with a page fault per 4 KiB at
    first touch (measured on 58 MB: 8.8 ms to allocate and fill against 3.6 ms to refill). Per
    thread, so that calls from several threads never share one."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    held = getattr(_scratch, name, None)
    if held is None or held.nbytes < nbytes:
        held = np.empty(nbytes, dtype=np.uint8)
        setattr(_scratch, name, held)
    return held[:nbytes].view(dtype).reshape(shape)
