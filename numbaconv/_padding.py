"""Explicit padding for ``padding_mode`` reflect / replicate / circular, and its adjoint.

Each mode is an index map from padded positions to input positions; padding gathers along it
and the backward scatters the gradient back along the same map, so forward and backward cannot
disagree.
"""

import numpy as np


def pad_index(n, before, after, mode):
    """Input index of every position of a dimension of size n padded by (before, after)."""
    j = np.arange(-before, n + after)
    if mode == "reflect":  # mirror without repeating the edge; the geometry ensures pads < n
        j = np.abs(j)
        return np.where(j >= n, 2 * (n - 1) - j, j)
    if mode == "replicate":
        return np.clip(j, 0, n - 1)
    return j % n  # circular


def pad(x, pads, mode):
    """Pad the spatial dims of (N, C, *spatial) ``x`` by ``pads`` = ((before, after), ...)."""
    for axis, (before, after) in enumerate(pads, start=2):
        if before or after:
            x = np.take(x, pad_index(x.shape[axis], before, after, mode), axis=axis)
    return x


def pad_adjoint(g, pads, mode):
    """Gradient of :func:`pad`: each padded position's gradient is added to its source."""
    for axis, (before, after) in reversed(list(enumerate(pads, start=2))):
        if before or after:
            n = g.shape[axis] - before - after
            index = pad_index(n, before, after, mode)
            src = np.moveaxis(g, axis, 0)
            out = src[before:before + n].copy()
            for j in [*range(before), *range(before + n, before + n + after)]:
                out[index[j]] += src[j]
            g = np.moveaxis(out, 0, axis)
    return g
