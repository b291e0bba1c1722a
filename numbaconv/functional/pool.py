"""Pooling, with ``torch.nn.functional``'s names and semantics.

Max, average and power-average (lp) pooling over sliding windows, and adaptive max and average
pooling, forward and backward, 1-D to 3-D. Each call checks its arguments and builds a
``PoolGeometry`` (``_geometry``), whose per-dimension window tables drive the kernels of
``kernels.cpu.pool``; 1-D and 2-D calls are 3-D calls on views with singleton dimensions.

lp pooling is PyTorch's composition, written with the same steps so that results and gradients
match it: ``(sign(a) * relu(|a|) * prod(kernel_size)) ** (1 / p)`` with ``a = avg_pool(x ** p)``
(so a zero window sum has gradient zero), and max pooling of ``|x|`` for ``p = inf``.

GPU arrays run the twins in ``kernels.cuda.pool`` (lp pooling there is two kernels of its own,
in the same steps) and give device arrays; max pooling's indices stay on the GPU, and only
their range comes back to the host to be checked.
"""

import math

import numpy as np

from .._geometry import (
    adaptive_pool_geometry, check_bool, check_divisor_override, check_grad_out, check_norm_type,
    pool_geometry,
)
from .._device import CUDA
from .._device import place
from .._device import side as _side
from .activation import contiguous, empty, kernels


def _pool(a):
    """The pooling kernels of ``a``'s device."""
    return kernels(_side(a), "pool")


def _as5(a, geom, size):
    """A C-contiguous (N, C, D, H, W) view (a copy only when ``a`` is not contiguous)."""
    return contiguous(a).reshape(geom.batch, geom.channels, *size)


def _user(a5, geom):
    """Drop the singleton spatial dimensions a 1-D or 2-D call does not have."""
    return a5.reshape(*a5.shape[:2], *a5.shape[5 - geom.ndim:])


def _empty(geom, size, dtype, like):
    """An uninitialized (N, C, *size) array on ``like``'s device."""
    return empty((geom.batch, geom.channels, *size), dtype, _side(like))


def _max(x, geom, return_indices):
    out = _empty(geom, geom.out_size, x.dtype, x)
    idx = _empty(geom, geom.out_size, np.int64, x) if return_indices else None
    _pool(x).max_forward(_as5(x, geom, geom.in_size), out, idx, geom)
    return (_user(out, geom), _user(idx, geom)) if return_indices else _user(out, geom)


def _check_indices(op, indices, geom):
    """indices: int64 of the output's shape. That each lies inside the input plane (windows that
    read no input, whose output is -inf, route nothing and may hold anything) is checked by the
    backward's kernel as it reads them (``_indices_outside`` words the error)."""
    if _side(indices) != CUDA and not isinstance(indices, np.ndarray):
        raise TypeError(f"{op}: indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype != np.int64:
        raise TypeError(f"{op}: indices must have dtype int64, got {indices.dtype}")
    if indices.shape != geom.out_shape:
        raise ValueError(f"{op}: indices must have the output's shape {geom.out_shape}, got {indices.shape}")
    return indices


def _indices_outside(op, idx, geom):
    """The ValueError for indices that the backward's kernel found outside the input plane."""
    lo, hi = _pool(idx).index_range(idx, geom)
    return ValueError(f"{op}: indices must lie in [0, {math.prod(geom.in_size)}) (flat positions in the input "
                      f"plane), got values from {lo} to {hi}")


def _max_backward(op, grad_out, x, geom, indices, absolute=False):
    """The max pooling gradient; with ``absolute`` (GPU only) of max pooling of |x|."""
    check_grad_out(op, grad_out, geom.out_shape, x.dtype)
    pool = _pool(x)
    if indices is None:  # recompute where each maximum was read
        idx = _empty(geom, geom.out_size, np.int64, x)
        extra = {"absolute": True} if absolute else {}
        pool.max_forward(_as5(x, geom, geom.in_size), _empty(geom, geom.out_size, x.dtype, x), idx, geom, **extra)
    else:
        idx = _as5(_check_indices(op, indices, geom), geom, geom.out_size)
    gx = _empty(geom, geom.in_size, x.dtype, x)
    if not pool.max_backward(_as5(grad_out, geom, geom.out_size), idx, gx, geom):
        raise _indices_outside(op, idx, geom)
    return _user(gx, geom)


#: divisor rules, (count_include_pad, divisor_override): the window's size with or without its padding
_WITH_PADDING, _WINDOW_SIZE = (True, None), (False, None)


def _avg(x, geom, divisor):
    """Average pooling; ``divisor`` is the (count_include_pad, divisor_override) rule of ``PoolGeometry.divisors``."""
    out = _empty(geom, geom.out_size, x.dtype, x)
    _pool(x).avg_forward(_as5(x, geom, geom.in_size), out, geom, *divisor)
    return _user(out, geom)


def _avg_backward(op, grad_out, x, geom, divisor):
    check_grad_out(op, grad_out, geom.out_shape, x.dtype)
    gx = _empty(geom, geom.in_size, x.dtype, x)
    _pool(x).avg_backward(_as5(grad_out, geom, geom.out_size), gx, geom, *divisor)
    return _user(gx, geom)


# --------------------------------------------------------------------------- max pooling


def _max_pool(op, ndim, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    _, (x,) = place(op, x=x)
    geom = pool_geometry(op, x, ndim, kernel_size, stride, padding, dilation, ceil_mode)
    return _max(x, geom, check_bool(op, "return_indices", return_indices))


def _max_pool_backward(op, ndim, grad_out, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    _, (grad_out, x, indices) = place(op, grad_out=grad_out, x=x, indices=indices)
    geom = pool_geometry(op, x, ndim, kernel_size, stride, padding, dilation, ceil_mode)
    return _max_backward(op, grad_out, x, geom, indices)


# --------------------------------------------------------------------------- average pooling


def _avg_geometry(op, ndim, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                  grad_out=None):
    """(geometry, divisor rule, x, grad_out): the arrays as ``place`` gives them."""
    _, (grad_out, x) = place(op, grad_out=grad_out, x=x)
    geom = pool_geometry(op, x, ndim, kernel_size, stride, padding, 1, ceil_mode)
    count_include_pad = check_bool(op, "count_include_pad", count_include_pad)
    return geom, (count_include_pad, check_divisor_override(op, divisor_override)), x, grad_out


def _avg_pool(op, ndim, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    geom, divisor, x, _ = _avg_geometry(op, ndim, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                        divisor_override)
    return _avg(x, geom, divisor)


def _avg_pool_backward(op, ndim, grad_out, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    geom, divisor, x, grad_out = _avg_geometry(op, ndim, x, kernel_size, stride, padding, ceil_mode,
                                               count_include_pad, divisor_override, grad_out)
    return _avg_backward(op, grad_out, x, geom, divisor)


# --------------------------------------------------------------------------- power-average pooling


def _lp_geometry(op, ndim, x, norm_type, kernel_size, stride, ceil_mode, grad_out=None):
    """(geometry, p, x, grad_out): the arrays as ``place`` gives them."""
    _, (grad_out, x) = place(op, grad_out=grad_out, x=x)
    geom = pool_geometry(op, x, ndim, kernel_size, stride, 0, 1, ceil_mode)
    return geom, check_norm_type(op, norm_type), x, grad_out


def _sign(a):
    """torch.sign: -1, 0 or 1, and 0 for NaN."""
    return (a > 0).astype(a.dtype) - (a < 0).astype(a.dtype)


def _lp_pool(op, ndim, x, norm_type, kernel_size, stride, ceil_mode):
    geom, p, x, _ = _lp_geometry(op, ndim, x, norm_type, kernel_size, stride, ceil_mode)
    if _side(x) == CUDA:
        out = _empty(geom, geom.out_size, x.dtype, x)
        if p == math.inf:
            _pool(x).max_forward(_as5(x, geom, geom.in_size), out, None, geom, absolute=True)
        else:
            _pool(x).lp_forward(_as5(x, geom, geom.in_size), out, geom, p)
        return _user(out, geom)
    if p == math.inf:
        return _max(np.abs(x), geom, False)
    with np.errstate(all="ignore"):  # NaN and inf propagate silently, as in PyTorch
        a = _avg(np.power(x, x.dtype.type(p)), geom, _WITH_PADDING)
        v = _sign(a) * np.abs(a) * x.dtype.type(math.prod(geom.kernel))
        return np.power(v, x.dtype.type(1 / p))


def _lp_pool_backward(op, ndim, grad_out, x, norm_type, kernel_size, stride, ceil_mode):
    geom, p, x, grad_out = _lp_geometry(op, ndim, x, norm_type, kernel_size, stride, ceil_mode, grad_out)
    if _side(x) == CUDA:
        return _lp_pool_backward_cuda(op, grad_out, x, geom, p)
    if p == math.inf:
        return np.ascontiguousarray(_max_backward(op, grad_out, np.abs(x), geom, None) * _sign(x))
    check_grad_out(op, grad_out, geom.out_shape, x.dtype)
    t = x.dtype.type
    kvol = t(math.prod(geom.kernel))
    with np.errstate(all="ignore"):
        a = _avg(np.power(x, t(p)), geom, _WITH_PADDING)
        s = _sign(a)
        v = s * np.abs(a) * kvol
        # the chain rule through pow(1/p), mul(kvol), sign(a) * relu(|a|) as PyTorch's autograd runs it
        g = grad_out * (t(1 / p) * np.power(v, t(1 / p - 1))) * kvol
        g = np.where(np.abs(a) <= 0, t(0), g * s) * s
        gxp = _avg_backward(op, g, x, geom, _WITH_PADDING)
        return np.ascontiguousarray(gxp * (t(p) * np.power(x, t(p - 1))))


def _lp_pool_backward_cuda(op, grad_out, x, geom, p):
    if p == math.inf:  # max pooling of |x|, then the sign of x
        gx = _max_backward(op, grad_out, x, geom, None, absolute=True)
        _pool(x).times_sign(gx.reshape(gx.size), contiguous(x).reshape(x.size))
        return gx
    check_grad_out(op, grad_out, geom.out_shape, x.dtype)
    gx = _empty(geom, geom.in_size, x.dtype, x)
    _pool(x).lp_backward(_as5(grad_out, geom, geom.out_size), _as5(x, geom, geom.in_size), gx, geom, p)
    return _user(gx, geom)


# --------------------------------------------------------------------------- adaptive pooling


def _adaptive_avg_pool(op, ndim, x, output_size):
    _, (x,) = place(op, x=x)
    geom = adaptive_pool_geometry(op, x, ndim, output_size)
    return _avg(x, geom, _WINDOW_SIZE)


def _adaptive_avg_pool_backward(op, ndim, grad_out, x, output_size):
    _, (grad_out, x) = place(op, grad_out=grad_out, x=x)
    geom = adaptive_pool_geometry(op, x, ndim, output_size)
    return _avg_backward(op, grad_out, x, geom, _WINDOW_SIZE)


def _adaptive_max_pool(op, ndim, x, output_size, return_indices):
    _, (x,) = place(op, x=x)
    geom = adaptive_pool_geometry(op, x, ndim, output_size)
    return _max(x, geom, check_bool(op, "return_indices", return_indices))


def _adaptive_max_pool_backward(op, ndim, grad_out, x, output_size, indices):
    _, (grad_out, x, indices) = place(op, grad_out=grad_out, x=x, indices=indices)
    geom = adaptive_pool_geometry(op, x, ndim, output_size)
    return _max_backward(op, grad_out, x, geom, indices)


# --------------------------------------------------------------------------- the public functions

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def _public(ndim, name, doc, impl):
    """Name and document one dimensionality of an op: the 1d/2d/3d variants are one function."""
    impl.__name__ = impl.__qualname__ = name
    impl.__doc__ = doc.format(n=ndim, s=_SPATIAL[ndim])
    return impl


_COMMON = """x: (N, C, {s}), float32 or float64 (batched only: add an axis for a single sample); any
    memory layout, never modified. The output is C-contiguous, of x's dtype. Each spatial output
    length is (in + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1, rounded up
    instead with ceil_mode (a last window starting in the right padding is dropped).
    kernel_size, stride, padding, dilation: an int or a tuple of {n} ints; stride None means
    kernel_size; padding at most half the kernel size."""

_MAX_DOC = """{n}-D max pooling (padding counts as -inf).

    """ + _COMMON + """
    Returns y (N, C, *out_size), and with return_indices also indices (N, C, *out_size), int64:
    where each maximum was read, a flat index into the input's ({s}) plane. Ties go to the first
    maximum in window order; NaN counts as the largest value.
    """

_MAX_BACKWARD_DOC = """Gradient of max_pool{n}d with respect to x.

    grad_out: (N, C, *out_size); the other arguments are max_pool{n}d's. indices: the int64
    indices max_pool{n}d returned, to route grad_out by; None recomputes them from x.
    Returns grad_x, shaped like x.
    """

_AVG_DOC = """{n}-D average pooling.

    """ + _COMMON + """
    Returns y (N, C, *out_size). Each window's sum is divided by divisor_override when given,
    else by the window's size counting padding (count_include_pad=True) or not.
    """

_AVG_BACKWARD_DOC = """Gradient of avg_pool{n}d with respect to x.

    grad_out: (N, C, *out_size); the other arguments are avg_pool{n}d's. Returns grad_x, shaped like x.
    """

_LP_DOC = """{n}-D power-average pooling: (sum of x ** norm_type over each window) ** (1 / norm_type).

    x: (N, C, {s}); kernel_size, stride as in avg_pool{n}d (no padding); norm_type > 0, inf for
    max pooling of |x|. As in PyTorch it is (avg_pool{n}d(x ** p) * prod(kernel_size)) ** (1 / p), so
    with ceil_mode a window cut short by the input's end is scaled up to a full window.
    Returns y (N, C, *out_size).
    """

_LP_BACKWARD_DOC = """Gradient of lp_pool{n}d with respect to x (zero where a window's sum of powers is zero).

    grad_out: (N, C, *out_size); the other arguments are lp_pool{n}d's. Returns grad_x, shaped like x.
    """

_ADAPTIVE_AVG_DOC = """{n}-D adaptive average pooling to a given output size.

    x: (N, C, {s}). output_size: an int or a tuple of {n} ints >= 1, None in a dimension keeping
    its input size; 1 is global average pooling. Output position i of a length-L dimension
    averages input positions floor(i * L / out) to ceil((i + 1) * L / out) - 1.
    Returns y (N, C, *output_size).
    """

_ADAPTIVE_AVG_BACKWARD_DOC = """Gradient of adaptive_avg_pool{n}d with respect to x.

    grad_out: (N, C, *output_size); the other arguments are adaptive_avg_pool{n}d's.
    Returns grad_x, shaped like x.
    """

_ADAPTIVE_MAX_DOC = """{n}-D adaptive max pooling to a given output size.

    x: (N, C, {s}); output_size as in adaptive_avg_pool{n}d, windows likewise. Returns y
    (N, C, *output_size), and with return_indices also the int64 flat indices into the input's
    ({s}) plane of each maximum (ties: the first; NaN counts as the largest value).
    """

_ADAPTIVE_MAX_BACKWARD_DOC = """Gradient of adaptive_max_pool{n}d with respect to x.

    grad_out: (N, C, *output_size); the other arguments are adaptive_max_pool{n}d's. indices:
    those adaptive_max_pool{n}d returned, or None to recompute them. Returns grad_x, shaped like x.
    """


def _define(n):
    def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        return _max_pool(f"max_pool{n}d", n, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)

    def max_pool_backward(grad_out, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, indices=None):
        return _max_pool_backward(f"max_pool{n}d_backward", n, grad_out, x, kernel_size, stride, padding, dilation,
                                  ceil_mode, indices)

    def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
        return _avg_pool(f"avg_pool{n}d", n, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override)

    def avg_pool_backward(grad_out, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                          divisor_override=None):
        return _avg_pool_backward(f"avg_pool{n}d_backward", n, grad_out, x, kernel_size, stride, padding, ceil_mode,
                                  count_include_pad, divisor_override)

    def lp_pool(x, norm_type, kernel_size, stride=None, ceil_mode=False):
        return _lp_pool(f"lp_pool{n}d", n, x, norm_type, kernel_size, stride, ceil_mode)

    def lp_pool_backward(grad_out, x, norm_type, kernel_size, stride=None, ceil_mode=False):
        return _lp_pool_backward(f"lp_pool{n}d_backward", n, grad_out, x, norm_type, kernel_size, stride, ceil_mode)

    def adaptive_avg_pool(x, output_size):
        return _adaptive_avg_pool(f"adaptive_avg_pool{n}d", n, x, output_size)

    def adaptive_avg_pool_backward(grad_out, x, output_size):
        return _adaptive_avg_pool_backward(f"adaptive_avg_pool{n}d_backward", n, grad_out, x, output_size)

    def adaptive_max_pool(x, output_size, return_indices=False):
        return _adaptive_max_pool(f"adaptive_max_pool{n}d", n, x, output_size, return_indices)

    def adaptive_max_pool_backward(grad_out, x, output_size, indices=None):
        return _adaptive_max_pool_backward(f"adaptive_max_pool{n}d_backward", n, grad_out, x, output_size, indices)

    return (
        _public(n, f"max_pool{n}d", _MAX_DOC, max_pool),
        _public(n, f"max_pool{n}d_backward", _MAX_BACKWARD_DOC, max_pool_backward),
        _public(n, f"avg_pool{n}d", _AVG_DOC, avg_pool),
        _public(n, f"avg_pool{n}d_backward", _AVG_BACKWARD_DOC, avg_pool_backward),
        _public(n, f"lp_pool{n}d", _LP_DOC, lp_pool),
        _public(n, f"lp_pool{n}d_backward", _LP_BACKWARD_DOC, lp_pool_backward),
        _public(n, f"adaptive_avg_pool{n}d", _ADAPTIVE_AVG_DOC, adaptive_avg_pool),
        _public(n, f"adaptive_avg_pool{n}d_backward", _ADAPTIVE_AVG_BACKWARD_DOC, adaptive_avg_pool_backward),
        _public(n, f"adaptive_max_pool{n}d", _ADAPTIVE_MAX_DOC, adaptive_max_pool),
        _public(n, f"adaptive_max_pool{n}d_backward", _ADAPTIVE_MAX_BACKWARD_DOC, adaptive_max_pool_backward),
    )


(max_pool1d, max_pool1d_backward, avg_pool1d, avg_pool1d_backward, lp_pool1d, lp_pool1d_backward,
 adaptive_avg_pool1d, adaptive_avg_pool1d_backward, adaptive_max_pool1d, adaptive_max_pool1d_backward) = _define(1)
(max_pool2d, max_pool2d_backward, avg_pool2d, avg_pool2d_backward, lp_pool2d, lp_pool2d_backward,
 adaptive_avg_pool2d, adaptive_avg_pool2d_backward, adaptive_max_pool2d, adaptive_max_pool2d_backward) = _define(2)
(max_pool3d, max_pool3d_backward, avg_pool3d, avg_pool3d_backward, lp_pool3d, lp_pool3d_backward,
 adaptive_avg_pool3d, adaptive_avg_pool3d_backward, adaptive_max_pool3d, adaptive_max_pool3d_backward) = _define(3)

__all__ = [
    f"{op}{n}d{suffix}"
    for n in (1, 2, 3)
    for op in ("max_pool", "avg_pool", "lp_pool", "adaptive_avg_pool", "adaptive_max_pool")
    for suffix in ("", "_backward")
]
