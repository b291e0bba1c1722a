"""numbaconv: Numba-compiled convolution on NumPy arrays, with PyTorch's names and semantics."""

import atexit
import gc

from . import _threads  # first: NumPy must load with the BLAS settings it chooses

_threads.quiet_blas_env()
from . import config, functional, nn  # noqa: E402
from .io import load, save
from ._device import cuda_status, to_device, to_host
from ._random import manual_seed
from .functional import *  # noqa: F401,F403  (the public ops: conv1d, conv2d_backward, ...)
from .functional import __all__ as _ops
from .functional._autotune import autotune_cache, clear_autotune_cache, set_autotune
from . import models
from . import optim
from .training import evaluate, fit, predict
from .summary import summary
from . import inference, onnx  # onnx: the reader; the onnx package itself loads only with a model
from .inference.from_nn import compile

__version__ = "0.1.0"

_threads.start()
_threads.check_blas()
# At exit the interpreter collects every object still alive. Numba's typing and lowering
# registries, loaded by the first kernel, make that collection 0.2-0.4 s of a short script's
# wall time (half again the import). Freezing what is alive at exit skips it; Python promises
# no finalizer for objects alive at exit, and the frozen ones are freed with the process.
atexit.register(gc.freeze)
__all__ = ["config", "functional", "nn", "models", "summary", "optim", "fit", "evaluate", "predict", "manual_seed", "save", "load",
           "compile", "inference", "onnx",
           "to_device", "to_host", "cuda_status", "set_autotune", "autotune_cache", "clear_autotune_cache",
           "__version__", *_ops]
