"""Weight initialization with PyTorch's default rules, drawn from numbaconv's generator.

PyTorch initializes convolution and linear weights with ``kaiming_uniform_(w, a=sqrt(5))``:
uniform in +-gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a**2)) = sqrt(1 / 3), which is
+-1 / sqrt(fan_in); the bias is uniform in +-1 / sqrt(fan_in) too. The distribution is
PyTorch's; the numbers differ (different generators), so load a state dict to get its weights.
"""

import math

import numpy as np


def fan_in(shape):
    """Inputs feeding one output: shape[1] * prod(kernel) (weights are (out, in, *kernel))."""
    return shape[1] * math.prod(shape[2:]) if len(shape) > 1 else shape[0]


def uniform(rng, shape, bound, dtype):
    """Uniform in [-bound, bound), drawn directly in ``dtype`` (float32 draws are about 4x faster
    than float64 ones and skip a conversion: VGG-16's 138M weights in about 1 s, not 4)."""
    out = rng.random(shape, dtype=dtype)
    out *= 2 * bound
    out -= bound
    return out


def kaiming_uniform(rng, shape, dtype, a=math.sqrt(5)):
    """PyTorch's kaiming_uniform_ (fan_in mode, leaky_relu gain) for a weight of ``shape``."""
    gain = math.sqrt(2.0 / (1 + a * a))
    return uniform(rng, shape, gain * math.sqrt(3.0 / max(fan_in(shape), 1)), dtype)


def default_bias(rng, weight_shape, size, dtype):
    """PyTorch's default bias: uniform in +-1 / sqrt(fan_in) of its weight (0 when fan_in is 0)."""
    fan = fan_in(weight_shape)
    return uniform(rng, (size,), 1 / math.sqrt(fan) if fan > 0 else 0.0, dtype)
