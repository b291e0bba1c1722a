"""numbaconv.nn: layers and models over the functional ops, with torch.nn's names, signatures
and state_dict keys. Each layer's backward sits next to its forward; see module.py for the
contract (forward keeps what backward needs; backward returns the input's gradient and adds
into the parameters' ``grad``)."""

from . import activation, conv, init, linear, loss, norm, pool
from .activation import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .module import Identity, IncompatibleKeys, Module, Parameter, Residual, Sequential
from .norm import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403

__all__ = [
    "Module", "Parameter", "Sequential", "Residual", "Identity", "IncompatibleKeys",
    *conv.__all__, *pool.__all__, *activation.__all__, *linear.__all__, *norm.__all__, *loss.__all__,
]
