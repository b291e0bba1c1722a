"""Explicit padding for ``padding_mode`` reflect / replicate / circular on the GPU, and its
adjoint: the twin of ``numbaconv/_padding.py``, on the same index maps.

Both directions are one gather kernel, run once per padded dimension: output position t of the
dimension sums the input positions ``sources[starts[t]:starts[t + 1]]``. Padding reads one
source per position (the index map itself); its adjoint reads, for each input position, every
padded position the map sends there, so no two threads write one element.
"""

import functools

import numpy as np
from numba import cuda

from . import _launch
from ..._padding import pad_index


@_launch.per_dtype
def _gather(nb):
    @cuda.jit
    def gather(src, dst, starts, sources):
        """dst[a, t, b] = sum of src[a, s, b] for s in sources[starts[t]:starts[t + 1]]."""
        e = cuda.grid(1)
        if e >= dst.size:
            return
        L, inner = dst.shape[1], dst.shape[2]
        b, t, a = e % inner, (e // inner) % L, e // (inner * L)
        acc = nb(0)
        for q in range(starts[t], starts[t + 1]):
            acc += src[a, sources[q], b]
        dst[a, t, b] = acc

    return gather


@functools.lru_cache(maxsize=256)
def _maps(n, before, after, mode, adjoint):
    """(starts, sources) on the device for one dimension of size n padded by (before, after):
    built and copied once per size (a training loop pads the same sizes at every step), to the
    GPU current at the first call: a process that switches GPUs needs ``_maps.cache_clear()``."""
    index = pad_index(n, before, after, mode)
    if adjoint:
        sources = np.argsort(index, kind="stable")  # padded positions grouped by their source
        starts = np.concatenate(([0], np.cumsum(np.bincount(index, minlength=n))))
    else:
        sources, starts = index, np.arange(len(index) + 1)
    return cuda.to_device(starts.astype(np.int64)), cuda.to_device(sources.astype(np.int64))


def _along(x, axis, length, maps):
    """x with dimension ``axis`` replaced by ``length`` positions gathered along ``maps``."""
    shape = tuple(x.shape)
    outer, inner = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1:]))
    out = _launch.empty((*shape[:axis], length, *shape[axis + 1:]), x.dtype)
    if out.size:
        blocks, threads = _launch.line(out.size)
        _gather(x.dtype)[blocks, threads](x.reshape(outer, shape[axis], inner), out.reshape(outer, length, inner), *maps)
    return out


def pad(x, pads, mode):
    """Pad the spatial dims of (N, C, *spatial) device array ``x`` by ``pads`` = ((before, after), ...)."""
    for axis, (before, after) in enumerate(pads, start=2):
        if before or after:
            n = x.shape[axis]
            x = _along(x, axis, n + before + after, _maps(n, before, after, mode, False))
    return x


def pad_adjoint(g, pads, mode):
    """Gradient of :func:`pad`: each padded position's gradient is added to its source."""
    for axis, (before, after) in reversed(list(enumerate(pads, start=2))):
        if before or after:
            n = g.shape[axis] - before - after
            g = _along(g, axis, n, _maps(n, before, after, mode, True))
    return g
