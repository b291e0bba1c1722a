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
#: spinning for a while after each GEMM. An OpenMP worker that spins for long too is not woken
#: ahead of them, and on 2 cores a parallel kernel right after a GEMM waited 6-7 ms for a core
#: with OpenMP's default spin (about 3 ms): LeNet's two convolutions and a small GEMM took 10.7 ms
#: a step, against 1.2 ms with workers that sleep at once. But waking a sleeping worker costs
#: 50-100 us, more than a small kernel takes: so GNU OpenMP's workers (Numba's omp layer) spin
#: 3000 times, about 50 us here, then sleep. That covers the Python between two kernels
#: called back to back, and costs a GEMM after a kernel at most that long. Medians of five
#: alternating fresh processes per setting, 2 cores (``bench/thread_wait.py``,
#: bench/results/thread-wait.md), sleeping at once -> 3000 spins: depthwise 3x3/2 over
#: (1, 64, 112x112) 0.23 -> 0.155 ms (PyTorch 0.148), LeNet c2 at batch 64 0.48 -> 0.34 ms, a
#: MobileNet-style block 2.07 -> 1.39 ms, a LeNet-5 training step 6.3 -> 5.3 ms, ResNet-18
#: inference 30.5 -> 28.6 ms at batch 1 and 221 -> 218 at batch 8. 30000 spins cost ResNet-18
#: at batch 1 a third more time (39.8 ms). ``GOMP_SPINCOUNT`` overrides the wait policy in GNU
#: OpenMP; other OpenMP runtimes read the policy only, and sleep at once.
#: Applied once, when numbaconv is imported and starts Numba's threads, and only if no OpenMP
#: runtime is running in the process yet; the process environment is restored afterwards. Set
#: it to {} to keep OpenMP's defaults.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000"}

#: Parallel kernels whose largest array has fewer elements than this run on the calling thread:
#: waking the other threads costs more than they would save (see kernels/cpu/_window.py). Where
#: Numba's threads spin a while between kernels (``OPENMP_ENV`` applied to its OpenMP layer),
#: numbaconv sets it to ``PARALLEL_MIN_ELEMENTS_SPINNING`` when it starts them.
PARALLEL_MIN_ELEMENTS = 16384

#: ``PARALLEL_MIN_ELEMENTS`` where the threads spin between kernels: a kernel called soon after
#: another finds them awake, so handing work to them pays from a quarter of the size. Medians of
#: eight alternating fresh processes a setting, 2 cores, 16384 -> 4096 (``bench/thread_wait.py
#: --settings @16384,@4096``, bench/results/thread-wait.md): depthwise 3x3 over (8, 1024, 7x7)
#: 0.28 -> 0.15 ms and over (1, 128, 56x56) 0.17 -> 0.10, LeNet c2 at batch 64 0.35 -> 0.30, a
#: MobileNet-style block 1.39 -> 1.29 ms, a LeNet-5 training step 5.3 -> 4.75 ms, ResNet-18
#: inference 30.4 -> 29.3 ms at batch 1 and within the noise at batch 8 (211 -> 217 ms; 227 ->
#: 203 in an earlier run). Under the workqueue layer (PyTorch imported first), whose idle
#: threads sleep, 4096 made small kernels slower ((1, 128, 56x56): 0.17 -> 0.28 ms), so there
#: the threshold stays.
PARALLEL_MIN_ELEMENTS_SPINNING = 4096

#: Autotune mode, like cuDNN's benchmark mode: when True, ``algorithm="auto"`` times the candidate
#: algorithms on the first call of each (geometry, direction, dtype) and keeps the fastest for the
#: rest of the process, instead of following the rules of ``functional.conv.choose_algorithm``.
#: ``algorithm="tune"`` does so whatever this says. Set it with ``numbaconv.set_autotune``.
AUTOTUNE = False

#: Timed calls per candidate when autotuning (after one untimed warm-up call); the median decides.
#: A candidate whose first timed call takes over twice the best median so far gets no more.
AUTOTUNE_REPEATS = 3
