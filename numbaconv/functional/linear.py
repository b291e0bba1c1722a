"""Linear layer, flatten and dropout, with ``torch.nn.functional``'s names and semantics.

float32 or float64; results keep the dtype; inputs are never modified. ``linear`` is NumPy's
matmul (BLAS) for large products and ``kernels.cpu.linear`` (one thread) for small ones, whose
BLAS threads cost more than they save (see that module); dropout's scaling runs ``kernels.cpu.elementwise.masked_scale`` (its CUDA twin on GPU arrays,
with the mask drawn on the host). On GPU arrays, linear runs
``kernels.cuda.linear`` (numbaconv's tiled GEMM) and flatten is a reshape of the device array.
"""

import math

import numpy as np

from .._device import CUDA, place
from .._geometry import check_array, check_grad_out, check_needs
from .._random import generator
from ..kernels.cpu import gemm
from ..kernels.cpu import linear as small_gemm
from .activation import check_dim, check_real, contiguous, empty, flat, kernels

__all__ = ["linear", "linear_backward", "flatten", "dropout", "dropout_backward"]


# --------------------------------------------------------------------------- linear


def _check_linear(op, x, weight):
    check_array(op, "x", x)
    check_array(op, "weight", weight, dtype=x.dtype, ndim=2)
    if x.ndim < 1:
        raise ValueError(f"{op}: x must have at least 1 dimension (..., in_features), got shape {x.shape}")
    features = x.shape[x.ndim - 1]  # not shape[-1]: the CUDA simulator's shapes refuse negative indices
    if weight.shape[1] != features:
        raise ValueError(
            f"{op}: weight must have shape (out_features, {features}) for x of shape {x.shape}, "
            f"got {weight.shape}"
        )


def _rows(a):
    """(..., k) -> (rows, k), a view when possible (rows spelled out: k may be 0)."""
    return a.reshape(math.prod(a.shape[:-1]), a.shape[a.ndim - 1])


def _quiet():
    """NaN and inf propagate silently through matmul and sums, as in PyTorch."""
    return np.errstate(invalid="ignore", over="ignore", divide="ignore")


def linear(x, weight, bias=None):
    """x @ weight.T + bias.

    x: (..., in_features); weight: (out_features, in_features); bias: (out_features,) or None.
    Returns (..., out_features), x's dtype, C-contiguous.
    """
    op = "linear"
    where, (x, weight, bias) = place(op, x=x, weight=weight, bias=bias)
    _check_linear(op, x, weight)
    if bias is not None:
        check_array(op, "bias", bias, dtype=x.dtype)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    if where == CUDA:
        from ..kernels.cuda import linear as kernels

        return kernels.forward(_rows(x), weight, bias).reshape(*x.shape[:-1], weight.shape[0])
    rows = _rows(x)
    if small_gemm.is_small(rows.shape[0], weight.shape[0], weight.shape[1]):
        y = small_gemm.forward(rows, weight, bias)
    else:
        with _quiet():
            y = gemm.matmul(rows, weight.T)  # BLAS GEMM; weight.T is a transposed view, not a copy
            if bias is not None:
                y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def linear_backward(grad_out, x, weight, needs=(True, True, True)):
    """Gradients of linear with respect to x, weight and bias.

    grad_out: (..., out_features); x, weight: linear's. Returns (grad_x, grad_weight, grad_bias)
    shaped like x, weight and (out_features,), None for each gradient ``needs`` turns off.
    """
    op = "linear_backward"
    where, (grad_out, x, weight) = place(op, grad_out=grad_out, x=x, weight=weight)
    _check_linear(op, x, weight)
    needs = check_needs(op, needs)
    check_grad_out(op, grad_out, (*x.shape[:-1], weight.shape[0]), x.dtype)
    go = _rows(grad_out)
    grad_x = grad_weight = grad_bias = None
    if where == CUDA:
        from ..kernels.cuda import linear as kernels

        return (kernels.grad_input(go, weight).reshape(*x.shape) if needs[0] else None,
                kernels.grad_weight(go, _rows(x)) if needs[1] else None,
                kernels.grad_bias(go) if needs[2] else None)
    small = small_gemm.is_small(go.shape[0], weight.shape[0], weight.shape[1])
    with _quiet():
        if needs[0]:
            grad_x = (small_gemm.grad_input(go, weight) if small else gemm.matmul(go, weight)).reshape(x.shape)
        if needs[1]:
            grad_weight = small_gemm.grad_weight(go, _rows(x)) if small else gemm.matmul(go.T, _rows(x))
        if needs[2]:
            grad_bias = go.sum(axis=0, dtype=x.dtype)
    return grad_x, grad_weight, grad_bias


# --------------------------------------------------------------------------- flatten


def flatten(x, start_dim=1, end_dim=-1):
    """Merge dimensions start_dim..end_dim (inclusive) into one.

    x: (d0, ..., dn); returns (d0, ..., d_start * ... * d_end, ..., dn). Like torch.flatten, a
    view of x when NumPy can express it as one (always for a C-contiguous x), else a copy; a 0-d
    x becomes shape (1,).
    """
    op = "flatten"
    _, (x,) = place(op, x=x)
    check_array(op, "x", x)
    start = check_dim(op, "start_dim", start_dim, x.ndim)
    end = check_dim(op, "end_dim", end_dim, x.ndim)
    if start > end:
        raise ValueError(f"{op}: start_dim must not come after end_dim, got start_dim={start_dim}, end_dim={end_dim}")
    shape = x.shape or (1,)
    return x.reshape(*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])


# --------------------------------------------------------------------------- dropout


def _check_p(op, p):
    p = check_real(op, "p", p)
    if not 0 <= p < 1:
        raise ValueError(f"{op}: p must be in [0, 1), got {p!r}")
    return p


def dropout(x, p=0.5, training=True, rng=None):
    """Zero each element with probability p and scale the others by 1 / (1 - p).

    x: any shape. Returns (output, mask): output x's shape and dtype, C-contiguous; mask a bool
    array of x's shape, True where an element was kept. rng: a numpy.random.Generator, an int
    seed (the same seed gives the same mask, for either dtype) or None (numbaconv's generator,
    reproducible after ``numbaconv.manual_seed``). With training=False or
    p=0, output is a copy of x and mask is all True, and no random number is drawn. For x on the
    GPU both are device arrays, and the mask is the one the host would draw from the same rng.
    """
    op = "dropout"
    where, (x,) = place(op, x=x)
    check_array(op, "x", x)
    p = _check_p(op, p)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{op}: training must be a bool, got {training!r}")
    rng = generator(op, rng)
    if not training or p == 0:
        if where == CUDA:
            out = empty(x.shape, x.dtype, CUDA)
            out.copy_to_device(contiguous(x))
            return out, _mask_to_device(np.ones(x.shape, dtype=bool))
        return np.array(x, order="C"), np.ones(x.shape, dtype=bool)
    # float32 uniforms whatever x's dtype: half the memory of float64, and one mask per seed
    mask = np.asarray(rng.random(x.shape, dtype=np.float32) >= p)  # an array even when x is 0-d
    if where == CUDA:
        # The GPU's mask is drawn on the host, by the same generator, and copied over (one byte
        # per element): GPU and CPU runs give the same masks, reproducible by one seed.
        mask = _mask_to_device(mask)
    out = empty(x.shape, x.dtype, where)
    kernels(where, "elementwise").masked_scale(flat(x), flat(mask), x.dtype.type(1 / (1 - p)), out.reshape(out.size))
    return out, mask


def _mask_to_device(mask):
    from numba import cuda  # numba's own copy: it keeps a 0-d mask 0-d
    return cuda.to_device(mask)


def dropout_backward(grad_out, mask, p=0.5):
    """grad_out * mask / (1 - p): the gradient of dropout for the mask it returned.

    grad_out: any shape; mask: bool, the same shape. Pass the p of the forward call (p=0 for a
    mask from training=False, whose output was x itself).
    """
    op = "dropout_backward"
    where, (grad_out, mask) = place(op, grad_out=grad_out, mask=mask)
    check_array(op, "grad_out", grad_out)
    p = _check_p(op, p)
    array = isinstance(mask, np.ndarray) or where == CUDA
    if not array or mask.dtype != np.bool_:
        raise TypeError(f"{op}: mask must be a bool numpy.ndarray (dropout's mask), got "
                        f"{type(mask).__name__ if not array else mask.dtype}")
    if mask.shape != grad_out.shape:
        raise ValueError(f"{op}: mask must have grad_out's shape {grad_out.shape}, got {mask.shape}")
    out = empty(grad_out.shape, grad_out.dtype, where)
    scale = grad_out.dtype.type(1 / (1 - p))
    kernels(where, "elementwise").masked_scale(flat(grad_out), flat(mask), scale, out.reshape(out.size))
    return out
