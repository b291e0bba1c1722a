"""Two kernels that the CUDA simulator runs and a real GPU refuses: test_cuda_compile.py shows
that its check catches both. A module of their own, so that the compiler process can import them
without the test module (which skips where the simulator is off)."""

import numpy as np
from numba import cuda


@cuda.jit
def two_types(out):
    """The simulator runs this; Numba cannot give ``v`` one type (an integer, then a tuple)."""
    i = cuda.grid(1)
    v = 0
    if i > 0:
        v = (i, i)
    if i < out.size:
        out[i] = 1.0 if v == 0 else 2.0


@cuda.jit
def too_much_shared(out):
    """64 KiB of static shared memory: more than a block gets without the opt-in."""
    stage = cuda.shared.array(16384, np.float32)
    i = cuda.grid(1)
    stage[cuda.threadIdx.x] = i
    cuda.syncthreads()
    if i < out.size:
        out[i] = stage[cuda.threadIdx.x]
