"""Compiled kernels. ``cpu/`` holds the ``@njit`` kernels; a ``cuda/`` twin with the same module
names holds the ``numba.cuda.jit`` ones. Kernels see only contiguous 5-D arrays
``(N, C, D, H, W)`` and integers: validation and allocation policy live above them."""
