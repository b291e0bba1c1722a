"""numbaconv: Numba-compiled convolution on NumPy arrays, with PyTorch's names and semantics."""

from . import _threads, config, functional, nn
from ._random import manual_seed
from .functional import *  # noqa: F401,F403  (the public ops: conv1d, conv2d_backward, ...)
from .functional import __all__ as _ops

__version__ = "0.1.0"

_threads.start()
__all__ = ["config", "functional", "nn", "manual_seed", "__version__", *_ops]
