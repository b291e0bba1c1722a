"""Activations, forward and backward, with ``torch.nn.functional``'s names and semantics.

Any shape, float32 or float64; results keep the dtype and are C-contiguous; inputs are never
modified. Each backward takes ``grad_out`` first, then what PyTorch's own backward uses: the
input x (relu, leaky_relu, elu) or the forward's output y (sigmoid, tanh, softmax, log_softmax).
NaN and inf propagate as in PyTorch. Element-wise ops run ``kernels.cpu.elementwise`` on flat
views; softmax runs ``kernels.cpu.softmax`` on an (outer, dim, inner) view.

GPU arrays run the ``kernels.cuda`` twins and give numba device arrays; the helpers that let
every functional module treat both devices alike (``place``, ``side``, ``kernels``,
``contiguous``, ``flat``, ``empty``) live here.
"""

import functools
import importlib
import math
from numbers import Integral, Real

import numpy as np

from .._device import CUDA, as_device, is_device_array, place
from .._geometry import check_array, check_grad_out
from ..kernels.cpu import elementwise

__all__ = [
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "elu", "elu_backward",
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
]


# --------------------------------------------------------------------------- checks


def check_real(op, name, value):
    """A real number (not a bool), as a float."""
    if not isinstance(value, Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
    return float(value)


def check_dim(op, name, dim, ndim):
    """An int in [-ndim, ndim), as a non-negative axis. A 0-d array counts as 1-d, as in PyTorch."""
    # a plain int skips the abstract-class check, which costs more than the rest of the call
    if type(dim) is not int and (not isinstance(dim, Integral) or isinstance(dim, (bool, np.bool_))):
        raise TypeError(f"{op}: {name} must be an int, got {dim!r}")
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise ValueError(f"{op}: {name} must be in [{-n}, {n - 1}] for an array of {ndim} dimensions, got {dim}")
    return int(dim) % n


# --------------------------------------------------------------------------- both devices


@functools.lru_cache(maxsize=None)  # every call of every op asks: import_module costs a microsecond
def kernels(where, name):
    """The kernel module ``kernels.cpu.<name>``, or its twin ``kernels.cuda.<name>`` when ``where``
    is "cuda" (imported only then: numba.cuda is an optional dependency)."""
    return importlib.import_module(f"{__package__.rpartition('.')[0]}.kernels.{where}.{name}")


def contiguous(a):
    """``a`` C-contiguous where it lives: a host copy only when ``a`` is not contiguous; a GPU
    array (``place`` has checked it is contiguous) as a numba device array, without a copy."""
    return as_device(a) if is_device_array(a) else np.ascontiguousarray(a)


def flat(a):
    """A C-contiguous 1-D view of ``a`` (a copy only when ``a`` is not contiguous)."""
    return contiguous(a).reshape(a.size)


def empty(shape, dtype, where):
    """An uninitialized C-contiguous array on the host or, for "cuda", on the GPU."""
    if where == CUDA:
        from numba import cuda
        return cuda.device_array(shape, dtype)
    return np.empty(shape, dtype)


# --------------------------------------------------------------------------- element-wise


def _forward(op, code, x, a=0.0):
    where, (x,) = place(op, x=x)
    check_array(op, "x", x)
    out = empty(x.shape, x.dtype, where)
    kernels(where, "elementwise").forward(code, flat(x), x.dtype.type(a), out.reshape(out.size))
    return out


def _backward(op, code, grad_out, t, name, a=0.0):
    where, (grad_out, t) = place(op, grad_out=grad_out, **{name: t})
    check_array(op, name, t)
    check_grad_out(op, grad_out, t.shape, t.dtype)
    out = empty(t.shape, t.dtype, where)
    kernels(where, "elementwise").backward(code, flat(grad_out), flat(t), t.dtype.type(a), out.reshape(out.size))
    return out


def relu(x):
    """max(x, 0). x: any shape; returns x's shape and dtype. relu(NaN) is NaN."""
    return _forward("relu", elementwise.RELU, x)


def relu_backward(grad_out, x):
    """grad_out where x > 0, else 0 (0 at x == 0, as in PyTorch). grad_out, x: same shape."""
    return _backward("relu_backward", elementwise.RELU, grad_out, x, "x")


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x. x: any shape."""
    a = check_real("leaky_relu", "negative_slope", negative_slope)
    return _forward("leaky_relu", elementwise.LEAKY_RELU, x, a)


def leaky_relu_backward(grad_out, x, negative_slope=0.01):
    """grad_out where x > 0, else negative_slope * grad_out. grad_out, x: same shape."""
    a = check_real("leaky_relu_backward", "negative_slope", negative_slope)
    return _backward("leaky_relu_backward", elementwise.LEAKY_RELU, grad_out, x, "x", a)


def elu(x, alpha=1.0):
    """x where x > 0, else alpha * (exp(x) - 1). x: any shape."""
    a = check_real("elu", "alpha", alpha)
    return _forward("elu", elementwise.ELU, x, a)


def elu_backward(grad_out, x, alpha=1.0):
    """grad_out where x > 0, else grad_out * alpha * exp(x). grad_out, x: same shape."""
    a = check_real("elu_backward", "alpha", alpha)
    return _backward("elu_backward", elementwise.ELU, grad_out, x, "x", a)


def sigmoid(x):
    """1 / (1 + exp(-x)). x: any shape."""
    return _forward("sigmoid", elementwise.SIGMOID, x)


def sigmoid_backward(grad_out, y):
    """grad_out * y * (1 - y), y = sigmoid(x) (the forward's output). grad_out, y: same shape."""
    return _backward("sigmoid_backward", elementwise.SIGMOID, grad_out, y, "y")


def tanh(x):
    """Hyperbolic tangent. x: any shape."""
    return _forward("tanh", elementwise.TANH, x)


def tanh_backward(grad_out, y):
    """grad_out * (1 - y**2), y = tanh(x) (the forward's output). grad_out, y: same shape."""
    return _backward("tanh_backward", elementwise.TANH, grad_out, y, "y")


# --------------------------------------------------------------------------- softmax


def _view3(a, dim):
    """``a`` as a C-contiguous (outer, a.shape[dim], inner) array (a copy only if not contiguous)."""
    shape = a.shape or (1,)
    return contiguous(a).reshape(math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:]))


#: The scratch the CPU kernels get where they need none (inner = 1: a row's statistics live in
#: scalars), one per dtype. With it, ``check_dim``'s plain-int path and ``out`` reshaped without
#: a second ``_view3``, a softmax over (4, 10) takes 4.4 us a call instead of 5.8 (its backward
#: 5.1 instead of 6.4): the Python around a kernel of a few microseconds.
_NO_SCRATCH = {np.dtype(t): np.empty((0, 0), t) for t in (np.float32, np.float64)}


def _scratch(a3, where):
    """The CPU kernels' (outer, inner) scratch for the statistics; the CUDA ones keep theirs in registers."""
    if where == CUDA:
        return None
    if a3.shape[2] == 1:
        return _NO_SCRATCH[a3.dtype]
    return np.empty((a3.shape[0], a3.shape[2]), dtype=a3.dtype)


def _softmax(op, x, dim, log):
    where, (x,) = place(op, x=x)
    check_array(op, "x", x)
    dim = check_dim(op, "dim", dim, x.ndim)
    out = empty(x.shape, x.dtype, where)
    if x.size:
        x3 = _view3(x, dim)
        kernels(where, "softmax").forward(x3, out.reshape(x3.shape), _scratch(x3, where), _scratch(x3, where), log)
    return out


def _softmax_backward(op, grad_out, y, dim, log):
    where, (grad_out, y) = place(op, grad_out=grad_out, y=y)
    check_array(op, "y", y)
    check_grad_out(op, grad_out, y.shape, y.dtype)
    dim = check_dim(op, "dim", dim, y.ndim)
    out = empty(y.shape, y.dtype, where)
    if y.size:
        y3 = _view3(y, dim)
        kernels(where, "softmax").backward(_view3(grad_out, dim), y3, out.reshape(y3.shape), _scratch(y3, where), log)
    return out


def softmax(x, dim):
    """exp(x) / sum(exp(x)) along ``dim``, computed as exp(x - max) / sum(exp(x - max)).

    x: any shape; dim: an int in [-x.ndim, x.ndim). Returns x's shape and dtype.
    """
    return _softmax("softmax", x, dim, False)


def softmax_backward(grad_out, y, dim):
    """y * (grad_out - sum(grad_out * y, dim)), y = softmax(x, dim). grad_out, y: same shape."""
    return _softmax_backward("softmax_backward", grad_out, y, dim, False)


def log_softmax(x, dim):
    """x - max - log(sum(exp(x - max))) along ``dim``. x: any shape; returns x's shape and dtype."""
    return _softmax("log_softmax", x, dim, True)


def log_softmax_backward(grad_out, y, dim):
    """grad_out - exp(y) * sum(grad_out, dim), y = log_softmax(x, dim). grad_out, y: same shape."""
    return _softmax_backward("log_softmax_backward", grad_out, y, dim, True)
