"""numbaconv's public operations, with ``torch.nn.functional``'s names and semantics.

One module per family of ops; each call flows one way: check the arguments and build the
geometry (``numbaconv._geometry``), choose the algorithm, allocate the outputs, run a compiled
kernel (``numbaconv.kernels``). No loop over data is written here.
"""

from . import activation, conv, loss
from . import linear as _linear  # the module; the name linear is the function, as in torch
from .activation import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from . import pool
from .pool import *  # noqa: F401,F403
from . import norm
from .norm import *  # noqa: F401,F403

__all__ = [*conv.__all__, *activation.__all__, *_linear.__all__, *loss.__all__, *pool.__all__, *norm.__all__]
