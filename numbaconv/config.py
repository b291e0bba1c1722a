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
#: Numba's threads spin a while after each kernel (``OPENMP_ENV`` applied to its OpenMP layer),
#: numbaconv sets it to ``PARALLEL_MIN_ELEMENTS_SPINNING`` when it starts them.
PARALLEL_MIN_ELEMENTS = 16384

#: ``PARALLEL_MIN_ELEMENTS`` where the threads spin for ``SPIN_WINDOW_S`` after each kernel and
#: then sleep; while they still spin (a kernel that starts within the window of the last
#: parallel kernel's end, or a kernel called again right after its own last call), a
#: ``PARALLEL_AWAKE_DIVISOR``-th of it. Medians of seven alternating fresh processes a setting,
#: 2 cores (``bench/thread_wait.py --settings @4096/1,@8192/2,@16384/4``,
#: bench/results/thread-wait.md), 4096 whatever the threads do / 8192 and 4096 while they spin /
#: 16384 and 4096: the compiled LeNet-5 at batch 1, whose kernels are tens of microseconds of
#: Python apart, so that its threads have gone to sleep when its first parallel kernel starts,
#: 0.178 / 0.143 / 0.144 ms; a LeNet-5 training step 4.79 / 4.85 / 5.08 ms; LeNet's c2 at batch
#: 64 called in a loop 0.30 / 0.35 / 0.49 ms; depthwise 3x3 over (8, 1024, 7x7) in a loop 0.148 /
#: 0.149 / 0.159 ms; a MobileNet-style block and ResNet-18 within the noise. (Against 16384
#: whatever the threads do, 4096 had taken depthwise 3x3 over (8, 1024, 7x7) from 0.28 to 0.15
#: ms and a LeNet-5 training step from 5.3 to 4.75.) Under the workqueue layer (PyTorch imported
#: first), whose idle threads sleep, the threshold stays: 4096 made small kernels slower there
#: ((1, 128, 56x56): 0.17 -> 0.28 ms).
PARALLEL_MIN_ELEMENTS_SPINNING = 8192
PARALLEL_AWAKE_DIVISOR = 2

#: How long after a parallel kernel Numba's threads still spin, per threading layer: OpenMP
#: with ``OPENMP_ENV``'s 3000 spins (a call 40 us or less after the last found them awake,
#: bench/results/thread-wait.md), TBB's workers (awake 800 us or less after the last, asleep
#: after 1 ms). The workqueue's threads sleep at once.
SPIN_WINDOW_S = {"omp": 40e-6, "tbb": 500e-6}

#: The threading layers in the order numbaconv tries them when the user named none (Numba's own
#: order). TBB (the ``tbb`` extra) first: its pool is apart from any OpenMP runtime another
#: library loaded, so it runs the same whatever was imported first, and it is thread- and
#: fork-safe. Medians of five to seven alternating fresh processes, 2 cores
#: (``bench/thread_wait.py``, bench/results/thread-wait.md). With PyTorch imported first, the
#: workqueue -> TBB: depthwise 3x3/2 over (1, 64, 112x112) 0.45 -> 0.158 ms, LeNet c2 at batch 64
#: 0.66 -> 0.34, a MobileNet-style block 1.75 -> 1.47, a LeNet-5 training step 7.0 -> 6.1,
#: ResNet-18 at batch 1 32.7 -> 29.6. With numbaconv first, OpenMP with ``OPENMP_ENV`` -> TBB:
#: the same within the noise (MobileNet-style block 1.27 -> 1.13, LeNet-5 step 5.1 -> 4.8,
#: ResNet-18 25.6 -> 25.7 at batch 1 and 171 -> 168 at batch 8). Without TBB, OpenMP with
#: ``OPENMP_ENV``; where another library loaded OpenMP first (its threads spin as that library
#: set them), the workqueue, with kernels one at a time (_threads.py).
THREADING_LAYER_PRIORITY = ("tbb", "omp", "workqueue")

#: Autotune mode, like cuDNN's benchmark mode: when True, ``algorithm="auto"`` times the candidate
#: algorithms on the first call of each (geometry, direction, dtype) and keeps the fastest for the
#: rest of the process, instead of following the rules of ``functional.conv.choose_algorithm``.
#: ``algorithm="tune"`` does so whatever this says. Set it with ``numbaconv.set_autotune``.
AUTOTUNE = False

#: Timed calls per candidate when autotuning (after one untimed warm-up call); the median decides.
#: A candidate whose first timed call takes over twice the best median so far gets no more.
AUTOTUNE_REPEATS = 3
