"""Start Numba's worker threads so that they give the cores back when idle.

numbaconv's kernels alternate with NumPy's BLAS, whose worker threads keep spinning for a
while after each GEMM. Worker threads that spin too when idle are not woken ahead of them, and
on 2 cores a parallel kernel right after a GEMM waited 6-7 ms for a core. Two ways out:

- OpenMP (Numba's "omp" layer) with ``config.OPENMP_ENV`` (passive waiting) in the environment
  when the OpenMP runtime loads. It reads its environment once, when it is loaded.
- When another library loaded the OpenMP runtime first (``import torch`` before numbaconv
  does), it is too late for that: the runtime spins, and ResNet-18 inference took 224 ms
  instead of 32 (batch 1, 2 cores). numbaconv then starts Numba's own "workqueue" layer, whose
  idle threads sleep (40 ms). The workqueue layer must not be entered from two threads at once
  (it aborts the process), so numbaconv's parallel kernels then run one at a time, under
  ``lock`` (see ``kernels/cpu/_window.parallel_kernel``).

A choice the user made (``NUMBA_THREADING_LAYER``, or an OpenMP wait variable) is kept.

NumPy's own BLAS threads are the other half (``quiet_blas``). OpenBLAS, which NumPy's wheels
bundle, lets its workers spin for 2^28 cycles (a tenth of a second) after each call before
they sleep, so every Numba kernel between two GEMMs shares its cores with a spinning thread: max
pooling over (1, 64, 112x112) took 4.2 ms right after a GEMM against 2.2 ms alone. OpenBLAS
reads its ``OPENBLAS_THREAD_TIMEOUT`` only when it starts its threads, so numbaconv sets it
and restarts them, which only a process with no other thread yet can do safely (a restart under
a running GEMM would pull its workers away), and not under the workqueue layer. Then im2col's copy kernels, serial while BLAS
spins, run parallel too (``_window.parallel_kernel(beside_blas=True)``).
"""

import ctypes
import os
import threading

from . import config

#: Variables by which a user already chose how OpenMP threads wait: numbaconv then adds nothing.
_USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

#: What ``start`` put in the environment while the threads started ({} when it added nothing).
applied = {}

#: Why the threading layer is the one it is, in words (``numbaconv info`` prints it).
reason = ""

#: True when parallel kernels must run one at a time (a layer that is not thread-safe).
serialize = False

#: Held by a parallel kernel while it runs, when ``serialize`` is set.
lock = threading.RLock()

#: OpenBLAS's idle wait, as ``OPENBLAS_THREAD_TIMEOUT`` spells it: its workers spin for
#: 2**n cycles after a call (16: about 25 us), then sleep. Measured against its default in one
#: process, calls alternating, with im2col's copies parallel (2 cores): ResNet-18 inference
#: 0.84-0.93x the time at batch 1 and 0.82-0.91x at batch 8, a LeNet-5 training step 0.90-0.97x;
#: ResNet-18 training on (2, 3, 64x64) 1.03-1.04x (its many small GEMMs wake the workers). 4,
#: OpenBLAS's least, did no better on inference and worse on training (1.01-1.09x); 20 gave
#: inference back half the gain.
BLAS_THREAD_TIMEOUT = 16

#: True while NumPy's BLAS threads may still spin after each call (``quiet_blas`` did not or
#: could not make them sleep): im2col's copy kernels then stay on one thread.
blas_spins = True

#: What ``quiet_blas`` found or did, in words (``numbaconv info`` prints it).
blas_reason = "not checked"


def _openmp_loaded():
    """Whether GNU OpenMP (the runtime Numba's omp layer links) is already in this process."""
    try:
        ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except (OSError, AttributeError):  # not loaded, or no RTLD_NOLOAD on this platform
        return False
    return True


def start():
    """Choose the threading layer and launch Numba's threads now (see the module docstring).

    The variables of ``config.OPENMP_ENV`` are removed again right after the threads start, so
    the rest of the process sees the environment it had.
    """
    global applied, reason, serialize
    import numba

    try:
        from numba.np.ufunc import parallel
    except ImportError:  # a Numba without this module: its own choice, at the first kernel
        reason = "Numba's default"
        return
    if numba.config.THREADING_LAYER != "default" or "NUMBA_THREADING_LAYER" in os.environ:
        reason = "chosen by the user (NUMBA_THREADING_LAYER)"
    elif any(name in os.environ for name in _USER_CHOICES):
        reason = "OpenMP wait policy chosen by the user"
    elif config.OPENMP_ENV and _openmp_loaded():
        numba.config.THREADING_LAYER = "workqueue"
        reason = ("workqueue: another library loaded OpenMP first, with threads that spin when idle; "
                  "kernels run one at a time")
    else:
        applied = {k: v for k, v in config.OPENMP_ENV.items() if k not in os.environ}
        reason = "Numba's default order" + (", OpenMP threads wait passively" if applied else "")
    os.environ.update(applied)
    try:
        parallel._launch_threads()
    except Exception:  # threads then start at the first kernel, with Numba's own choice
        pass
    finally:
        for name in applied:
            os.environ.pop(name, None)
    try:
        serialize = numba.threading_layer() == "workqueue"
    except ValueError:  # no layer started
        serialize = False


def _openblas():
    """NumPy's OpenBLAS as a ctypes library, when it is loaded and has the entry points
    ``quiet_blas`` needs; else None. Found in the process's memory map (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            if all(hasattr(lib, f) for f in ("openblas_read_env", "blas_thread_shutdown_", "blas_thread_init")):
                return lib
        except (OSError, AttributeError):
            continue
    return None


def quiet_blas(timeout=BLAS_THREAD_TIMEOUT):
    """Make NumPy's OpenBLAS threads sleep ``timeout`` (``OPENBLAS_THREAD_TIMEOUT``'s scale)
    after each call, by restarting them with that setting (see the module docstring). Sets
    ``blas_spins`` and ``blas_reason``; does nothing when the user chose a timeout, when the BLAS
    is not OpenBLAS, when another thread exists that might be inside a BLAS call, or under
    Numba's workqueue layer (``serialize``): there, measured the same way as
    ``BLAS_THREAD_TIMEOUT``, the change made a LeNet-5 training step 1.08-1.15x slower, and a
    short BLAS spin with serial copies slowed every model (1.04-1.17x)."""
    global blas_spins, blas_reason
    import numpy  # noqa: F401  (loads the BLAS, which starts its threads)

    if "OPENBLAS_THREAD_TIMEOUT" in os.environ or "GOTO_THREAD_TIMEOUT" in os.environ:
        blas_reason = "its idle wait chosen by the user (OPENBLAS_THREAD_TIMEOUT)"
        return
    if serialize:
        blas_reason = ("left spinning: Numba's workqueue layer hands each parallel kernel to its threads "
                       "too slowly for im2col's copies to gain")
        return
    lib = _openblas()
    if lib is None:
        blas_reason = "not OpenBLAS, or not one numbaconv can reach: threads left as they are"
        return
    if threading.active_count() > 1:
        blas_reason = "OpenBLAS: other threads were running at import, so its threads were left spinning"
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(timeout)
    try:
        lib.openblas_read_env()  # its copy of the variable, read again
        lib.blas_thread_shutdown_()
        lib.blas_thread_init()  # the workers restart now, reading the timeout
    finally:
        del os.environ["OPENBLAS_THREAD_TIMEOUT"]
    blas_spins = False
    blas_reason = f"OpenBLAS, its threads sleep after 2^{timeout} cycles idle (numbaconv)"
