"""numbaconv's public operations, with ``torch.nn.functional``'s names and semantics.

One module per family of ops; each call flows one way: check the arguments and build the
geometry (``numbaconv._geometry``), choose the algorithm, allocate the outputs, run a compiled
kernel (``numbaconv.kernels``). No loop over data is written here.
"""

from . import conv
from .conv import *  # noqa: F401,F403

__all__ = [*conv.__all__]
