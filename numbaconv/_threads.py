"""Start Numba's worker threads so that they give the cores back soon when idle.

numbaconv's kernels alternate with NumPy's BLAS, whose worker threads keep spinning for a
while after each GEMM. Worker threads that spin long too when idle are not woken ahead of them,
and on 2 cores a parallel kernel right after a GEMM waited 6-7 ms for a core. numbaconv tries
the layers in ``config.THREADING_LAYER_PRIORITY``:

- TBB (Numba's "tbb" layer, the ``tbb`` extra): its workers spin for well under a millisecond
  after a kernel, then sleep, and its pool is its own, whatever another library loaded. pip's
  ``tbb`` wheel puts the library where the loader does not look (``_load_tbb`` loads it).
- OpenMP (Numba's "omp" layer) with ``config.OPENMP_ENV`` (a spin of about 50 us, then sleep)
  in the environment when the OpenMP runtime loads. It reads its environment once, when it is
  loaded.
- When another library loaded the OpenMP runtime first (``import torch`` before numbaconv
  does), it is too late for that: the runtime spins, and ResNet-18 inference took 224 ms
  instead of 32 (batch 1, 2 cores). Without TBB, numbaconv then starts Numba's own "workqueue"
  layer, whose idle threads sleep (40 ms). The workqueue layer must not be entered from two
  threads at once (it aborts the process), so numbaconv's parallel kernels then run one at a
  time, under ``lock`` (see ``kernels/cpu/_window.parallel_kernel``).

A choice the user made (``NUMBA_THREADING_LAYER``, or an OpenMP wait variable) is kept.

NumPy's own BLAS threads are the other half (``quiet_blas_env``, ``check_blas``). OpenBLAS,
which NumPy's wheels bundle, lets its workers spin for 2^28 cycles (a tenth of a second) after
each call before they sleep, so every Numba kernel between two GEMMs shares its cores with a
spinning thread: max pooling over (1, 64, 112x112) took 4.2 ms right after a GEMM against 2.2
ms alone. OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` once, when NumPy loads it, so numbaconv
can set it only when it is imported before NumPy. Imported after NumPy, numbaconv runs
OpenBLAS on one thread for its own GEMMs and splits them over its own threads instead
(``blas_split``, ``kernels/cpu/gemm.py``), so OpenBLAS's workers are not woken. Either way
im2col's copy kernels, serial while BLAS spins, run parallel too
(``_window.parallel_kernel(beside_blas=True)``). Restarting OpenBLAS's threads after the fact
(its ``blas_thread_shutdown_`` and ``blas_thread_init``) also worked, but with it
``tests/test_pool.py`` aborted on a corrupted heap in 3 of 24 runs from an empty kernel cache,
against none of 28 without it: not done.
"""

import ctypes
import math
import os
import sys
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

#: How long Numba's threads spin after a parallel kernel (``config.SPIN_WINDOW_S`` for TBB, and
#: for OpenMP where ``start`` applied its spin; else 0: they sleep at once); when the last
#: parallel kernel ended, and which kernel ran last and when it ended (``time.perf_counter``):
#: ``kernels/cpu/_window.runs_serial`` reads them.
spin_window = 0.0
last_parallel_end = -math.inf
last_kernel, last_kernel_end = None, -math.inf

#: OpenBLAS's idle wait, as ``OPENBLAS_THREAD_TIMEOUT`` spells it: its workers spin for
#: 2**n cycles after a call (16: about 25 us), then sleep. Measured against its default in one
#: process, calls alternating, with im2col's copies parallel (2 cores): ResNet-18 inference
#: 0.84-0.93x the time at batch 1 and 0.82-0.91x at batch 8, a LeNet-5 training step 0.90-0.97x;
#: ResNet-18 training on (2, 3, 64x64) 1.03-1.04x (its many small GEMMs wake the workers). 4,
#: OpenBLAS's least, did no better on inference and worse on training (1.01-1.09x); 20 gave
#: inference back half the gain.
BLAS_THREAD_TIMEOUT = 16

#: The variables by which OpenBLAS takes its idle wait.
_BLAS_TIMEOUT_VARIABLES = ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")

#: True while NumPy's BLAS threads may still spin after each call (``check_blas``): im2col's
#: copy kernels then stay on one thread.
blas_spins = True

#: True where numbaconv splits its GEMMs over its own threads and runs the BLAS on one thread,
#: which wakes none of the BLAS's workers (``kernels/cpu/gemm.py``): where they would spin long.
blas_split = False

#: The BLAS's ``(get_num_threads, set_num_threads)`` as ctypes functions, or None where
#: numbaconv cannot reach them.
blas_threads = None

#: What ``check_blas`` found, in words (``numbaconv info`` prints it).
blas_reason = "not checked"

#: How many cycles NumPy's OpenBLAS threads spin after each call (``check_blas``; 0 where that
#: is not known): ``numbaconv bench`` lets them settle before timing the next candidate.
blas_spin_cycles = 0

#: Whether ``quiet_blas_env`` set OpenBLAS's idle wait while NumPy loaded it.
_blas_env_set = False


def _openmp_loaded():
    """Whether GNU OpenMP (the runtime Numba's omp layer links) is already in this process."""
    try:
        ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except (OSError, AttributeError):  # not loaded, or no RTLD_NOLOAD on this platform
        return False
    return True


def _load_tbb():
    """Load the ``tbb`` package's runtime library where it is installed, so that Numba's TBB
    layer can start. Numba's layer names the library by its bare file name, which the loader
    finds where conda puts it, but not in the ``lib`` folder where pip's ``tbb`` wheel puts it;
    once loaded (RTLD_GLOBAL), the bare name resolves to it."""
    name = {"win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}.get(sys.platform, "libtbb.so.12")
    try:
        ctypes.CDLL(name)
        return
    except OSError:
        pass
    try:
        from importlib import metadata
        files = metadata.files("tbb") or ()
    except Exception:  # not installed, or no record of its files
        return
    for file in files:
        if file.name == name:
            try:
                ctypes.CDLL(str(file.locate()), mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


def current_layer():
    """Numba's threading layer ("tbb", "omp" or "workqueue"), or None before one has started."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return None


def start():
    """Choose the threading layer and launch Numba's threads now (see the module docstring).

    The variables of ``config.OPENMP_ENV`` are removed again right after the threads start, so
    the rest of the process sees the environment it had.
    """
    global applied, reason, serialize, spin_window
    import numba

    try:
        from numba.np.ufunc import parallel
    except ImportError:  # a Numba without this module: its own choice, at the first kernel
        reason = "Numba's default"
        return
    chosen = str(numba.config.THREADING_LAYER).lower()
    if chosen != "default" or "NUMBA_THREADING_LAYER" in os.environ:
        if chosen in ("tbb", "safe", "threadsafe"):
            _load_tbb()
        reason = "chosen by the user (NUMBA_THREADING_LAYER)"
    elif any(name in os.environ for name in _USER_CHOICES):
        reason = "OpenMP wait policy chosen by the user"
    else:
        _load_tbb()
        order = list(config.THREADING_LAYER_PRIORITY)
        if config.OPENMP_ENV and _openmp_loaded():
            # its threads spin as the library that loaded it set them: anything but OpenMP
            order.remove("omp")
            order.append("omp")
            reason = "another library loaded OpenMP first, with threads that spin when idle"
        else:
            applied = {k: v for k, v in config.OPENMP_ENV.items() if k not in os.environ}
            reason = "numbaconv's order: " + ", ".join(order)
        numba.config.THREADING_LAYER_PRIORITY = order
    os.environ.update(applied)
    try:
        parallel._launch_threads()
    except Exception:  # threads then start at the first kernel, with Numba's own choice
        pass
    finally:
        for name in applied:
            os.environ.pop(name, None)
    layer = current_layer()
    if layer != "omp":
        applied = {}
    serialize = layer == "workqueue"
    if serialize:
        reason += "; kernels run one at a time (the workqueue is not thread-safe)"
    elif "GOMP_SPINCOUNT" in applied:
        reason += "; OpenMP threads spin briefly, then sleep"
    # TBB's workers spin a while after each kernel as they are; OpenMP's where numbaconv set it
    if layer == "tbb" or "GOMP_SPINCOUNT" in applied:
        spin_window = config.SPIN_WINDOW_S[layer]
        config.PARALLEL_MIN_ELEMENTS = config.PARALLEL_MIN_ELEMENTS_SPINNING


def _openblas():
    """NumPy's OpenBLAS as a ctypes library, when it is loaded and says which idle wait it
    runs with; else None. Found in the process's memory map (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            if hasattr(lib, "openblas_thread_timeout"):
                return lib
        except (OSError, AttributeError):
            continue
    return None


def _thread_count_functions(lib):
    """OpenBLAS's get and set of its thread count, by whichever names this build gives them
    (NumPy's wheels prefix and suffix its symbols), or None."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            try:
                get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
                put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
            except AttributeError:
                continue
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            return get, put
    return None


def quiet_blas_env():
    """Load NumPy with ``OPENBLAS_THREAD_TIMEOUT=BLAS_THREAD_TIMEOUT`` in the environment, then
    give the environment back: OpenBLAS reads it when it loads. Only when NumPy is not loaded
    yet and the user did not choose a timeout; any other BLAS ignores the variable. Runs before
    anything of numbaconv imports NumPy."""
    global _blas_env_set
    if "numpy" in sys.modules or any(v in os.environ for v in _BLAS_TIMEOUT_VARIABLES):
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(BLAS_THREAD_TIMEOUT)
    try:
        import numpy  # noqa: F401  (loads the BLAS, which reads the variable)
    finally:
        del os.environ["OPENBLAS_THREAD_TIMEOUT"]
    _blas_env_set = True


def check_blas():
    """Set ``blas_spins``, ``blas_split`` and ``blas_reason`` from the idle wait NumPy's OpenBLAS
    runs with (``openblas_thread_timeout``, what it read at load; 0 for its default). Where that
    wait is longer than ``BLAS_THREAD_TIMEOUT``, numbaconv splits its GEMMs itself when it can
    set OpenBLAS's thread count (``kernels/cpu/gemm.py``), and its BLAS threads then stay asleep.
    Copies go parallel where the BLAS's threads are quiet either way and Numba's layer is not the
    workqueue: there, measured as ``BLAS_THREAD_TIMEOUT`` is, the short wait made a LeNet-5
    training step 1.08-1.15x slower with parallel copies, and every model 1.04-1.17x slower with
    serial ones."""
    global blas_spins, blas_reason, blas_spin_cycles, blas_split, blas_threads
    import numba

    lib = _openblas()
    timeout = lib.openblas_thread_timeout() if lib is not None else 0
    quiet = 0 < timeout <= BLAS_THREAD_TIMEOUT
    blas_threads = _thread_count_functions(lib) if lib is not None else None
    blas_split = not quiet and blas_threads is not None and numba.get_num_threads() > 1
    blas_spins = serialize or not (quiet or blas_split)
    # OpenBLAS clamps the exponent to 4..30 and takes 28 for 0 (its default)
    blas_spin_cycles = 0 if lib is None else 2 ** (min(max(timeout, 4), 30) if timeout else 28)
    if lib is None:
        blas_reason = "not OpenBLAS, or not one numbaconv can reach: threads left as they are"
    elif not quiet:
        spin = min(max(timeout, 4), 30) if timeout else 28  # OpenBLAS's clamp, and its default
        why = ("chosen by the user" if any(v in os.environ for v in _BLAS_TIMEOUT_VARIABLES)
               else "NumPy was imported before numbaconv")
        blas_reason = f"OpenBLAS, its threads spin 2^{spin} cycles after each call ({why})"
        if blas_split:
            blas_reason += ": numbaconv splits its GEMMs over its own threads, each on one BLAS thread"
            if serialize:
                blas_reason += "; im2col's copies stay serial under the workqueue layer"
        else:
            blas_reason += (f"; OPENBLAS_THREAD_TIMEOUT={BLAS_THREAD_TIMEOUT} or importing numbaconv first "
                            f"quiets them")
    else:
        who = "numbaconv" if _blas_env_set else "OPENBLAS_THREAD_TIMEOUT"
        blas_reason = f"OpenBLAS, its threads sleep after 2^{max(timeout, 4)} cycles idle ({who})"
        if serialize:
            blas_reason += "; im2col's copies stay serial under the workqueue layer"
