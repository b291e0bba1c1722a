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
