"""The process-wide random generator behind weight initialization and dropout.

``numbaconv.manual_seed(s)`` makes every later initialization and dropout mask reproducible, as
``torch.manual_seed`` does; an explicit ``rng`` argument (a ``numpy.random.Generator`` or an int
seed) overrides it for one layer or call.
"""

from numbers import Integral

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Reseed numbaconv's generator: the same seed gives the same weights and dropout masks."""
    global _generator
    if not isinstance(seed, Integral) or isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"manual_seed: seed must be an int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"manual_seed: seed must be >= 0, got {seed}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def generator(op, rng=None, name="rng"):
    """``rng`` as a Generator: None means numbaconv's own, an int seeds a fresh one. ``name`` is
    the argument's name in error messages."""
    if rng is None:
        return _generator
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, Integral) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise ValueError(f"{op}: {name} must be a numpy.random.Generator, a non-negative int seed or None, "
                             f"got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"{op}: {name} must be a numpy.random.Generator, a non-negative int seed or None, got {rng!r}")
