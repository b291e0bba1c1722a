"""Every tunable of numbaconv, in one place.

Values are read at call time, so assigning to them (``numbaconv.config.WORKSPACE_BYTES = 64 << 20``)
takes effect on the next call.
"""

#: Upper bound, in bytes, of the im2col column buffer. The batch is processed in chunks small
#: enough to keep the buffer under this limit (one sample at a time at the very least). The
#: buffer is kept for reuse by later calls, one per calling thread.
WORKSPACE_BYTES = 256 * 2**20

#: Environment Numba's OpenMP worker threads start with, where the environment does not already
#: set these variables. numbaconv's kernels alternate with NumPy's BLAS, whose worker threads keep
#: spinning for a while after each GEMM. An OpenMP worker that spins too is not woken ahead of
#: them, and on 2 cores a parallel kernel right after a GEMM waited 6-7 ms for a core; workers
#: that sleep when idle are woken in 20-80 us (LeNet's two convolutions and a small GEMM: 10.7 ms
#: a step with OpenMP's default, 1.2 ms with this). Applied once, when numbaconv is imported and
#: starts Numba's threads, and only if no OpenMP runtime is running in the process yet; the
#: process environment is restored afterwards. Set it to {} to keep OpenMP's defaults.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

#: Parallel kernels whose largest array has fewer elements than this run on the calling thread:
#: waking the other threads costs more than they would save (see kernels/cpu/_window.py).
PARALLEL_MIN_ELEMENTS = 16384

#: Autotune mode, like cuDNN's benchmark mode: when True, ``algorithm="auto"`` times the candidate
#: algorithms on the first call of each (geometry, direction, dtype) and keeps the fastest for the
#: rest of the process, instead of following the rules of ``functional.conv.choose_algorithm``.
#: ``algorithm="tune"`` does so whatever this says. Set it with ``numbaconv.set_autotune``.
AUTOTUNE = False

#: Timed calls per candidate when autotuning (after one untimed warm-up call); the median decides.
#: A candidate whose first timed call takes over twice the best median so far gets no more.
AUTOTUNE_REPEATS = 3
