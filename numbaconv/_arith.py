"""The few array operations the layers, optimizers and training loop do outside the ops:
a sum, accumulation into a gradient, zeros, a copy to or from a host array. NumPy does them on
the host; on the GPU each is a kernel of ``kernels/cuda/arith.py`` (device arrays have no
arithmetic operators). Shapes and dtypes are the caller's to match: these are internal.
"""

import numpy as np

from ._device import as_device, is_device_array, require_cuda


def _kernels():
    from .kernels.cuda import arith

    return arith


def empty_like(a):
    if is_device_array(a):
        return require_cuda("empty_like").device_array(a.shape, dtype=a.dtype)
    return np.empty(a.shape, dtype=a.dtype)


def zeros_like(a):
    out = empty_like(a)
    fill(out, 0)
    return out


def fill(a, value):
    """Set every element of ``a`` to ``value``, in place."""
    if is_device_array(a):
        from .kernels.cuda._launch import fill as fill_flat, flat

        fill_flat(flat(a), value)
    else:
        a[...] = value


def add(a, b):
    """a + b, as a new array on their device."""
    if not is_device_array(a):
        return a + b
    out = empty_like(a)
    _kernels().add(as_device(a), as_device(b), out)
    return out


def iadd(a, b):
    """a += b, in place; returns a."""
    if is_device_array(a):
        _kernels().add(as_device(a), as_device(b), as_device(a))
    else:
        a += b
    return a


def full_like(a, value, shape=()):
    """An array of ``shape`` filled with ``value``, on a's device and of a's dtype."""
    host = np.full(shape, value, dtype=a.dtype)
    return require_cuda("full_like").to_device(host) if is_device_array(a) else host


def assign(target, value):
    """Copy host or device ``value`` into ``target`` (same shape), converting to its dtype."""
    if is_device_array(target):
        if is_device_array(value):
            value = as_device(value).copy_to_host()
        as_device(target).copy_to_device(np.asarray(value, dtype=target.dtype, order="C"))
    else:
        target[...] = value
