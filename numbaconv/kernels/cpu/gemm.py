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
threads of ``_Pool``, which look for their next part for ``WORKER_SPIN_S`` (50 us) and then
sleep: far shorter than OpenBLAS's tenth of a second, and long enough for the next GEMM of a
convolution called in a loop. Where OpenBLAS's threads do not spin long, the split measured no
faster and ``matmul`` is NumPy's matmul as it is.

What it costs: a worker starts its part some 17 us after the caller (it takes Python's lock,
which the caller holds until its own BLAS call), and two parts run 8-20% slower side by side
than alone (on the AVX2 host, 20-50 us and 40%: ``SPLIT_MIN_WORK``). A product of 6.4 million
multiply-adds called in a loop took 96-110 us split, 131 whole on one thread, and 71-82 on
OpenBLAS's own two threads kept awake by the loop (AVX-512 host): a layer that small, timed
alone, runs slower than before; models run faster (below). Calling the BLAS per part from a
Numba ``prange`` instead (through its C entry point, no Python lock) was measured on the AVX2
host and gained nothing: 0.77-1.35x the split's time, the parts' own slowdown being the cost.

A woken worker often started on the calling thread's own core and waited there for
milliseconds, the other core idle, until the kernel's scheduler moved it (a worker must take
Python's lock before its BLAS call, from the caller, which then goes on computing): ResNet-18 at
batch 1 took 29.5 ms with the pool against 23.6 with numbaconv imported first, the time lost in
a few convolutions at a time. So each worker may run on any core but the caller's
(``_keep_off``): 25 ms.

Altogether, ResNet-18 inference with PyTorch imported first (compiled graph, calls taking
turns in one process, 2 cores): 24.6 ms against 28.4 on OpenBLAS's own threads at batch 1, 163
against 237 at batch 8; PyTorch's own took 25.0 and 198.

The BLAS's thread count is process-wide: ``_one_blas_thread`` sets it to one while any GEMM of
numbaconv runs and gives the count back after the last one, so NumPy products of the caller's
own, running at that moment in another thread, get one thread too.
"""

import ctypes
import functools
import math
import os
import queue
import threading
import time

import numba
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from ... import _threads

#: Fewest multiply-adds worth a part of its own. Measured, products called back to back, split in
#: two against whole on one thread: on a 2-core AVX-512 host (Zen 4), 2.4 million multiply-adds
#: 54 against 56 us, 7.2 million 120 against 154, 29 million 361-385 against 581-645; on a
#: 2-core AVX2 host (Zen 3, the benchmark suite's target), where a worker's part ran 40% slower
#: than alone and started 20-50 us late, 6.4 million 183-475 against 153-193, 29 million 618-669
#: against 845-862. Whole below 8.4 million: there, ResNet-18's 1x1/2 convolutions at batch 1
#: (6.4 million) went from 1.26-1.74 of PyTorch's time to 0.76-1.24 (forward) and from
#: 0.91-1.38 to 0.83-1.03 (backward), the whole network unchanged within its noise (0.90 and
#: 0.88 of PyTorch's time, calls taking turns), at the AVX-512 host's 34 us on such a product.
SPLIT_MIN_WORK = 1 << 23

#: Rows and columns of a part come in multiples of this (the BLAS kernels' register tiles).
SPLIT_ALIGN = 16

#: NumPy lets go of Python's lock during a matmul only when the output has more elements than
#: this (its ``NPY_BEGIN_THREADS_THRESHOLDED``): a part with fewer runs alone, whatever the
#: threads (9 x 32 outputs of 16,000-long sums, split in two by columns: 1.03 ms, against 0.72
#: whole on one thread).
GIL_FREE_OUTPUT = 500

#: How many more multiply-adds the calling thread takes on than each worker: it starts its part
#: first, while a worker still waits for Python's lock (about 17 us after the caller, in which a
#: core does about a million).
LEAD_WORK = 1 << 20


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
        parts, partials = _parts(a, b, out, numba.get_num_threads())
        _Pool.run(parts)
    with np.errstate(invalid="ignore", over="ignore"):
        for partial in partials:
            np.add(out, partial, out=out)
    return out


def _product(a, b, out):
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        np.matmul(a, b, out=out)


def _parts(a, b, out, threads):
    """(parts, partials): the product as at most ``threads`` calls of ``_product``, the first
    for the calling thread, on slices of the operands; partials, products the caller then adds
    into out (a split of the sum, for a small output). Each call's output has more than
    ``GIL_FREE_OUTPUT`` elements, else it would hold Python's lock and run alone."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = out.size // max(1, M * N)
    work = batch * M * N * K
    parts = max(1, min(threads, work // SPLIT_MIN_WORK))
    if parts == 1 or out.size <= GIL_FREE_OUTPUT:
        return [functools.partial(_product, a, b, out)], []
    lead = min(1.0, LEAD_WORK / work)  # the caller's extra share, as a fraction of the whole

    def big_enough(cuts, size):
        return min(e - s for s, e in cuts) * size > GIL_FREE_OUTPUT

    if out.ndim > 2 and out.shape[0] >= parts:
        # whole matrices of the leading batch axis (an operand that broadcasts along it is whole)
        cuts = _cuts(out.shape[0], parts, 1, lead)
        if big_enough(cuts, out.size // out.shape[0]):
            def cut(m, s, e):
                return m[s:e] if m.ndim == out.ndim and m.shape[0] > 1 else m
            return [functools.partial(_product, cut(a, s, e), cut(b, s, e), out[s:e]) for s, e in cuts], []
    cuts = _cuts(max(M, N), parts, SPLIT_ALIGN, lead)
    if big_enough(cuts, batch * min(M, N)):
        if M >= N:
            return [functools.partial(_product, a[..., s:e, :], b, out[..., s:e, :]) for s, e in cuts], []
        return [functools.partial(_product, a, b[..., s:e], out[..., s:e]) for s, e in cuts], []
    # few outputs from long sums (a weight gradient): each part sums a stretch of the products
    cuts = _cuts(K, parts, SPLIT_ALIGN, lead)
    partials = [np.empty_like(out) for _ in cuts[1:]]
    return [functools.partial(_product, a[..., s:e], b[..., s:e, :], o)
            for (s, e), o in zip(cuts, [out] + partials)], partials


def _cuts(length, parts, align, lead=0.0):
    """[(start, end)]: ``length`` in at most ``parts`` pieces, each but the last a multiple of
    ``align`` long, the first longer than the others by about ``lead`` of the length (to the
    nearest multiple of ``align``: rounded up, 64 columns split 48 and 16)."""
    first = length * (1 + lead * (parts - 1)) / parts
    first = min(length, max(align, round(first / align) * align))
    if first >= length:
        return [(0, length)]
    step = min(length, -(-math.ceil((length - first) / (parts - 1)) // align) * align)
    return [(0, first)] + [(s, min(s + step, length)) for s in range(first, length, step)]


@intrinsic
def _read(typingctx, flags):
    """flags[0] of an int64 array, read from memory each time (an atomic load, which the
    compiler may not hoist out of a loop that waits for another thread's store)."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(array.data, "acquire", 8)
    return types.int64(flags), codegen


@njit(nogil=True, cache=True)
def _spin(flags, rounds):
    """Whether flags[0] turned nonzero within ``rounds`` reads, waiting without Python's lock."""
    for _ in range(rounds):
        if _read(flags) != 0:
            return True
    return False


#: About how long a worker keeps looking for its next part before it sleeps, and how long the
#: caller looks for the workers' parts to end before it sleeps, in seconds. Waking a sleeping
#: thread and handing it Python's lock took about 15 us each way: a product split in two took
#: 83 us, of 56 whole (2.4 million multiply-adds, 2 cores).
WORKER_SPIN_S = 50e-6
CALLER_SPIN_S = 1e-3


class _Worker:
    def __init__(self):
        self.jobs = queue.SimpleQueue()
        self.ready, self.done = np.zeros(1, np.int64), np.zeros(1, np.int64)  # set by the caller, by the worker
        self.cpus = None  # the CPUs it may run on, as last set
        started = queue.SimpleQueue()
        threading.Thread(target=self._work, args=(started,), daemon=True, name="numbaconv-gemm").start()
        self.tid = started.get()

    def _work(self, started):
        started.put(threading.get_native_id())
        while True:
            _spin(self.ready, _rounds(WORKER_SPIN_S))  # the next part is often microseconds away
            part, errors = self.jobs.get()
            self.ready[0] = 0
            try:
                part()
            except BaseException as error:  # handed to the caller, who raises it
                errors.append(error)
            self.done[0] = 1


class _Pool:
    """Threads that run the parts of a GEMM beside the calling thread, looking for work for
    ``WORKER_SPIN_S`` after each part, then sleeping until the next.

    One GEMM at a time uses them: a GEMM that finds them busy (another Python thread's, as when
    a served model is called from many threads) runs its parts on its own thread, in turn.
    """
    workers = []
    busy = threading.Lock()

    @classmethod
    def run(cls, parts):
        if len(parts) == 1 or not cls.busy.acquire(blocking=False):
            for part in parts:
                part()
            return
        try:
            while len(cls.workers) < len(parts) - 1:
                cls.workers.append(_Worker())
            workers = cls.workers[:len(parts) - 1]
            _keep_off(workers)
            errors = []
            for worker, part in zip(workers, parts[1:]):
                worker.done[0] = 0
                worker.jobs.put((part, errors))
                worker.ready[0] = 1
            try:
                parts[0]()
            finally:  # every part ends before the operands may go
                for worker in workers:
                    while not _spin(worker.done, _rounds(CALLER_SPIN_S)):
                        time.sleep(50e-6)
            if errors:
                raise errors[0]
        finally:
            cls.busy.release()


@functools.lru_cache(maxsize=None)
def _rounds(seconds):
    """How many reads ``_spin`` makes in about ``seconds`` on this machine (timed once)."""
    flags, n = np.zeros(1, np.int64), 1 << 16
    _spin(flags, n)
    start = time.perf_counter()
    _spin(flags, n)
    return max(1, int(seconds * n / max(time.perf_counter() - start, 1e-9)))


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
        if worker.cpus != mask:
            try:
                os.sched_setaffinity(worker.tid, mask)
            except OSError:  # not allowed here: the worker runs where the scheduler puts it
                pass
            worker.cpus = mask


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
