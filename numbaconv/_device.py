"""Where arrays live: the host (NumPy arrays) or an NVIDIA GPU (numba.cuda device arrays).

A public op looks at its array arguments once, with ``placement``: all on the host runs the CPU
kernels, all on the GPU runs the CUDA kernels, a mix is an error that says which argument is
where. GPU arrays are numba device arrays or any object with ``__cuda_array_interface__``
(CuPy arrays, PyTorch CUDA tensors), taken without a copy. numba.cuda is imported only when a
GPU array or a GPU is asked for, so importing numbaconv never needs the ``cuda`` extra, a GPU or
a driver. Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same code runs on the
simulator's arrays.
"""

import os

import numpy as np

CPU, CUDA = "cpu", "cuda"


def _cuda():
    """numba.cuda, or None when it cannot be imported (no ``numba-cuda``)."""
    try:
        from numba import cuda
    except ImportError:
        return None
    return cuda


def _simulated():
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda_status():
    """(available, why): whether the CUDA kernels can run here, and the reason in words."""
    cuda = _cuda()
    if cuda is None:
        return False, "numba.cuda is not importable (install numbaconv[cuda])"
    try:
        if not cuda.is_available():
            return False, "no CUDA driver or GPU found"
        if _simulated():
            return True, "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
        name = cuda.get_current_device().name
        return True, name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # a broken driver says so here rather than at the first kernel
        return False, f"{type(exc).__name__}: {exc}"


def require_cuda(op):
    """numba.cuda, or RuntimeError naming ``op`` and why CUDA is not available."""
    ok, why = cuda_status()
    if not ok:
        raise RuntimeError(f"{op}: CUDA is not available: {why}")
    return _cuda()


def is_device_array(a):
    """Whether ``a`` lives on the GPU (a numba device array or a ``__cuda_array_interface__``)."""
    if isinstance(a, np.ndarray) or a is None:
        return False
    if hasattr(a, "__cuda_array_interface__"):
        return True
    if _simulated():  # the simulator's arrays have no interface attribute
        cuda = _cuda()
        return cuda is not None and cuda.devicearray.is_cuda_ndarray(a)
    return False


def placement(op, **arrays):
    """"cpu" or "cuda": where the (non-None) ``arrays`` all live, else a ValueError naming each.

    Called once per public op, before its other checks.
    """
    where = {name: CUDA if is_device_array(a) else CPU for name, a in arrays.items() if a is not None}
    kinds = set(where.values())
    if len(kinds) > 1:
        said = ", ".join(f"{name} on {'the GPU' if w == CUDA else 'the host'}" for name, w in where.items())
        raise ValueError(f"{op}: all arrays must be on one device, got {said}; "
                         "move them with numbaconv.to_device or numbaconv.to_host")
    return kinds.pop() if kinds else CPU


def side(a):
    """Where ``a`` lives, CPU or CUDA (an op's ``placement`` has checked that its arrays agree)."""
    return CUDA if is_device_array(a) else CPU


def place(op, **arrays):
    """(where, arrays): the ``placement`` of the op's arrays, CPU or CUDA, and the arrays in the
    order given, as the checks and kernels take them: host arrays unchanged; GPU arrays (CuPy
    arrays and PyTorch CUDA tensors too) as numba device arrays, without a copy, with a
    ValueError naming any that is not C-contiguous (``kernels.cuda._launch.device_arrays``).
    Every public op starts with this one call."""
    for a in arrays.values():  # a loop, not all() over a generator: 0.4 of 0.9 us, on every op's call
        if a is not None and not isinstance(a, np.ndarray):
            break
    else:
        return CPU, tuple(arrays.values())  # the common case, without building a placement
    where = placement(op, **arrays)
    if where != CUDA:
        return where, tuple(arrays.values())
    from .kernels.cuda._launch import device_arrays

    return where, device_arrays(op, **arrays)


def as_device(a):
    """A numba device array for a GPU array, without a copy."""
    cuda = _cuda()
    if _simulated() or isinstance(a, cuda.devicearray.DeviceNDArray):
        return a
    return cuda.as_cuda_array(a)


def to_device(x):
    """Copy a host array to the GPU (a numba device array); a GPU array is returned as is."""
    if is_device_array(x):
        return as_device(x)
    cuda = require_cuda("to_device")
    return cuda.to_device(np.asarray(x, order="C"))  # ascontiguousarray would make a 0-d array 1-d


def to_host(x):
    """Copy a GPU array to a NumPy array; a host array is returned as is."""
    if is_device_array(x):
        return as_device(x).copy_to_host()
    return x
