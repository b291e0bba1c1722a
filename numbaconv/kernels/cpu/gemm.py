"""numbaconv's GEMMs: NumPy's matmul (the BLAS NumPy links), split over numbaconv's own
threads where the BLAS's threads would spin.

OpenBLAS's worker threads spin for a while after each call before they sleep: 2^28 cycles
(about a tenth of a second) unless numbaconv quieted them when NumPy loaded (see ``_threads``).
When NumPy was imported first (as ``import torch`` does), every kernel numbaconv runs between
two GEMMs shared the cores with those spinning threads: ResNet-18 inference took 1.15-1.23x
PyTorch's time at batch 1 and 8 (2 cores), against 0.95-0.96x with numbaconv imported first.

There (``_threads.blas_split``), ``matmul`` runs the BLAS on one thread, which wakes none of its
workers, and splits the product itself: into as many parts as Numba has threads, along the
batch of matrices, or the rows or the columns of the product, whichever is longer, so each part
stays one BLAS call on contiguous rows. One part runs on the calling thread, the others on
threads of ``_Pool``, which sleep when idle. Where OpenBLAS's threads do not spin long, the split
measured no faster and ``matmul`` is NumPy's matmul as it is.

A woken worker often started on the calling thread's own core and waited there for
milliseconds, the other core idle, until the kernel's scheduler moved it (a worker must take
Python's lock before its BLAS call, from the caller, which then goes on computing): ResNet-18 at
batch 1 took 29.5 ms with the pool against 23.6 with numbaconv imported first, the time lost in
a few convolutions at a time. So each worker may run on any core but the caller's
(``_keep_off``): 25 ms, and 0.93 and 0.92x PyTorch's time at batch 1 and 8 (compiled graph,
calls alternating).

The BLAS's thread count is process-wide: ``_one_blas_thread`` sets it to one while any GEMM of
numbaconv runs and gives the count back after the last one, so NumPy products of the caller's
own, running at that moment in another thread, get one thread too.
"""

import ctypes
import functools
import os
import queue
import threading

import numba
import numpy as np

from ... import _threads

#: Fewest multiply-adds worth a part of its own: a sleeping thread takes tens of microseconds
#: to wake. Measured on 2 cores, products called back to back, split in two against whole on
#: one thread: 2.4 million multiply-adds 95 against 61 us, 7.2 million 142 against 156, 29
#: million 368 against 586.
SPLIT_MIN_WORK = 1 << 22

#: Rows and columns of a part come in multiples of this (the BLAS kernels' register tiles).
SPLIT_ALIGN = 16


def matmul(a, b, out=None):
    """``np.matmul(a, b, out=out)`` for a and b of at least 2 dimensions, NaN and inf passing
    silently; returns out (a new array when None)."""
    if out is None:
        out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]),
                       np.result_type(a, b))
    if not _threads.blas_split:
        _product(a, b, out)
        return out
    with _one_blas_thread:
        _Pool.run(_parts(a, b, out, numba.get_num_threads()))
    return out


def _product(a, b, out):
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        np.matmul(a, b, out=out)


def _parts(a, b, out, threads):
    """The product as at most ``threads`` calls of ``_product`` on slices of the operands."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = out.size // max(1, M * N)
    parts = max(1, min(threads, batch * M * N * K // SPLIT_MIN_WORK))
    if parts == 1:
        return [functools.partial(_product, a, b, out)]
    if out.ndim > 2 and out.shape[0] >= parts:
        # whole matrices of the leading batch axis (an operand that broadcasts along it is whole)
        cuts = _cuts(out.shape[0], parts, 1)

        def cut(m, s, e):
            return m[s:e] if m.ndim == out.ndim and m.shape[0] > 1 else m
        return [functools.partial(_product, cut(a, s, e), cut(b, s, e), out[s:e]) for s, e in cuts]
    if M >= N:
        return [functools.partial(_product, a[..., s:e, :], b, out[..., s:e, :])
                for s, e in _cuts(M, parts, SPLIT_ALIGN)]
    return [functools.partial(_product, a, b[..., s:e], out[..., s:e]) for s, e in _cuts(N, parts, SPLIT_ALIGN)]


def _cuts(length, parts, align):
    """[(start, end)]: ``length`` in at most ``parts`` pieces, each but the last a multiple of
    ``align`` long."""
    step = -(-length // parts)
    step = min(length, -(-step // align) * align)
    return [(s, min(s + step, length)) for s in range(0, length, step)]


class _Pool:
    """Threads that run the parts of a GEMM beside the calling thread, sleeping when idle.

    One GEMM at a time uses them: a GEMM that finds them busy (another Python thread's, as when
    a served model is called from many threads) runs its parts on its own thread, in turn.
    """
    workers = []  # [its queue of parts, its native thread id, the CPUs it may run on]
    busy = threading.Lock()

    @classmethod
    def run(cls, parts):
        if len(parts) == 1 or not cls.busy.acquire(blocking=False):
            for part in parts:
                part()
            return
        try:
            while len(cls.workers) < len(parts) - 1:
                jobs, started = queue.SimpleQueue(), queue.SimpleQueue()
                threading.Thread(target=cls._work, args=(jobs, started), daemon=True, name="numbaconv-gemm").start()
                cls.workers.append([jobs, started.get(), None])
            _keep_off(cls.workers[:len(parts) - 1])
            done = queue.SimpleQueue()
            for worker, part in zip(cls.workers, parts[1:]):
                worker[0].put((part, done))
            try:
                parts[0]()
            finally:  # every part ends before the operands may go
                errors = [e for e in (done.get() for _ in parts[1:]) if e is not None]
            if errors:
                raise errors[0]
        finally:
            cls.busy.release()

    @staticmethod
    def _work(jobs, started):
        started.put(threading.get_native_id())
        while True:
            part, done = jobs.get()
            try:
                part()
            except BaseException as error:  # handed to the caller, who raises it
                done.put(error)
            else:
                done.put(None)


try:
    _sched_getcpu = ctypes.CDLL(None).sched_getcpu  # Linux's C library
except (OSError, AttributeError, TypeError):
    _sched_getcpu = None


def _keep_off(workers):
    """Let the workers run on any of the calling thread's CPUs but the one it runs on now (a
    system call only when that changed); nothing where the platform cannot say or set it."""
    if _sched_getcpu is None or not hasattr(os, "sched_setaffinity"):
        return
    allowed = os.sched_getaffinity(0)
    mask = allowed - {_sched_getcpu()} or allowed
    for worker in workers:
        if worker[2] != mask:
            try:
                os.sched_setaffinity(worker[1], mask)
            except OSError:  # not allowed here: the worker runs where the scheduler puts it
                pass
            worker[2] = mask


class _OneBlasThread:
    """The BLAS on one thread while any GEMM of numbaconv runs (see the module docstring)."""

    def __init__(self):
        self.lock, self.depth, self.saved = threading.Lock(), 0, 1

    def __enter__(self):
        get, put = _threads.blas_threads
        with self.lock:
            if self.depth == 0:
                self.saved = get()
                put(1)
            self.depth += 1

    def __exit__(self, *exc):
        get, put = _threads.blas_threads
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                put(self.saved)


_one_blas_thread = _OneBlasThread()


def _after_fork():
    """A forked child has none of the pool's threads, and no GEMM running."""
    global _one_blas_thread
    if _one_blas_thread.depth:  # forked while a GEMM ran: the child's BLAS gets its count back
        _threads.blas_threads[1](_one_blas_thread.saved)
    _Pool.workers, _Pool.busy = [], threading.Lock()
    _one_blas_thread = _OneBlasThread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
