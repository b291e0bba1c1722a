"""What every zoo constructor shares: one generator for all its layers, and a checked dtype."""

from .._random import generator
from ..nn.module import check_dtype


def setup(op, dtype, rng):
    """(dtype, rng) for the layers of model ``op``.

    dtype None stays None (the layers' float32 default) once checked. rng None stays None, so
    every layer draws from numbaconv's generator at construction (reproducible after
    ``numbaconv.manual_seed``); an int seed becomes one Generator shared by all the layers, so
    two layers of the same shape get different weights, and a Generator is used as given.
    """
    check_dtype(op, dtype)
    return dtype, (None if rng is None else generator(op, rng))
