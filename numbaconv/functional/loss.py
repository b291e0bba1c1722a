"""Losses, forward and backward, with ``torch.nn.functional``'s names and semantics.

reduction: "mean" (the default) or "sum" give a 0-d array, "none" one loss per element (per
sample and position for the class losses); results keep the input's dtype. A backward takes
``grad_out``, the gradient of the loss output: a real number or a 0-d array for "mean" and
"sum", an array of the loss's shape for "none". The class losses take integer targets in
[0, C), no ignore_index and no class weights. cross_entropy is log_softmax along dim 1
(``kernels.cpu.softmax``) followed by nll_loss; gathers and reductions are NumPy's
(``take_along_axis``, ``sum``), already a single pass over the data.

On GPU arrays (scores and target both there) the gathers, sums and gradients are the kernels of
``kernels.cuda.loss``, and a "mean" or "sum" loss is a 0-d device array, as the host's is a 0-d
array. The target's range is checked on the host: its N * d1 * ... integers are copied there
(the scores stay on the GPU). A real-number grad_out is taken for any device.
"""

import math
from numbers import Real

import numpy as np

from .._device import CUDA, is_device_array, to_host
from .._geometry import check_array, check_choice, check_grad_out
from . import activation
from .._device import place
from .activation import contiguous, empty, flat, kernels

__all__ = [
    "cross_entropy", "cross_entropy_backward", "nll_loss", "nll_loss_backward", "mse_loss", "mse_loss_backward",
]

REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- checks


def _quiet():
    """NaN and inf propagate silently, as in PyTorch, and the mean of nothing is NaN."""
    return np.errstate(invalid="ignore", over="ignore", divide="ignore")


def _check_classes(op, name, scores, target):
    """scores (N, C, d1, ...) float; target (N, d1, ...) integers in [0, C). Returns target as intp
    with a class axis inserted, ready for take_along_axis (None for a target on the GPU)."""
    check_array(op, name, scores)
    if scores.ndim < 2:
        raise ValueError(f"{op}: {name} must have shape (N, C) or (N, C, d1, ...), got {scores.shape}")
    on_gpu = is_device_array(target)
    if not (isinstance(target, np.ndarray) or on_gpu):
        raise TypeError(f"{op}: target must be a numpy.ndarray of class indices, got {type(target).__name__}")
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(f"{op}: target must have an integer dtype (class indices), got {target.dtype}")
    shape = (scores.shape[0], *scores.shape[2:])
    if target.shape != shape:
        raise ValueError(f"{op}: target must have shape {shape} for {name} of shape {scores.shape}, got {target.shape}")
    classes = scores.shape[1]
    values = to_host(target)
    if values.size and (values.min() < 0 or values.max() >= classes):
        raise ValueError(
            f"{op}: target must hold class indices in [0, {classes}), got values in [{values.min()}, {values.max()}]"
        )
    return None if on_gpu else np.expand_dims(target.astype(np.intp, copy=False), 1)


def _place(op, grad_out=None, **arrays):
    """(where, grad_out, arrays) as ``place`` gives them; a real-number grad_out lives nowhere
    and goes with either device."""
    real = isinstance(grad_out, Real) and not isinstance(grad_out, (bool, np.bool_))
    where, (g, *taken) = place(op, grad_out=None if real else grad_out, **arrays)
    return where, grad_out if real else g, taken


def _scale(op, grad_out, reduction, shape, count, dtype):
    """The factor d(reduced loss)/d(loss element) times grad_out: a scalar of ``dtype`` for "mean"
    and "sum", an array of ``shape`` for "none"."""
    if reduction == "none":
        check_grad_out(op, grad_out, shape, dtype)
        return grad_out
    if isinstance(grad_out, Real) and not isinstance(grad_out, (bool, np.bool_)):
        grad_out = np.array(grad_out, dtype=dtype)
    else:
        check_grad_out(op, grad_out, (), dtype)
    with _quiet():  # the mean over no element scales by 1 / 0
        return grad_out / dtype.type(count) if reduction == "mean" else grad_out.astype(dtype, copy=True)


def _gpu_scale(op, grad_out, reduction, shape, count, dtype):
    """``_scale`` for the GPU kernels: (g flat, per_element, divisor); g / divisor is the factor."""
    if reduction == "none":
        check_grad_out(op, grad_out, shape, dtype)
        return flat(grad_out), True, 1
    if isinstance(grad_out, Real) and not isinstance(grad_out, (bool, np.bool_)):
        from numba import cuda
        g = cuda.to_device(np.array([grad_out], dtype=dtype))
    else:
        check_grad_out(op, grad_out, (), dtype)
        g = flat(grad_out)
    return g, False, count if reduction == "mean" else 1


def _gpu_reduce(loss, reduction):
    """``_reduce`` of a GPU loss array: a 0-d device array for "mean" and "sum"."""
    if reduction == "none":
        return loss
    out = empty((1,), loss.dtype, CUDA)
    kernels(CUDA, "loss").total(loss.reshape(loss.size), loss.size if reduction == "mean" else 1, out)
    return out.reshape(())


def _classes3(scores, target):
    """scores as (N, C, I) and target as (N, I), C-contiguous on the GPU, I = prod(d1, ...)."""
    N, C = scores.shape[:2]
    I = math.prod(scores.shape[2:])
    return contiguous(scores).reshape(N, C, I), contiguous(target).reshape(N, I)


def _gpu_nll(log_probs, target, reduction):
    s3, t2 = _classes3(log_probs, target)
    loss = empty(t2.shape, log_probs.dtype, CUDA)
    kernels(CUDA, "loss").nll(s3, t2, loss)
    return _gpu_reduce(loss.reshape(target.shape), reduction)


def _gpu_class_grad(op, grad_out, scores, target, reduction, base):
    """The gradient of nll_loss (base None) or cross entropy (base: the softmax of scores)."""
    g, per_element, divisor = _gpu_scale(op, grad_out, reduction, target.shape, target.size, scores.dtype)
    _, t2 = _classes3(scores, target)
    grad = empty(scores.shape, scores.dtype, CUDA) if base is None else base
    g3 = grad.reshape(t2.shape[0], scores.shape[1], t2.shape[1])
    kernels(CUDA, "loss").class_grad(None if base is None else g3, t2, g, per_element, divisor, g3)
    return grad


def _reduce(loss, reduction):
    """loss (any shape) reduced as asked: a 0-d array for "mean" and "sum", C-contiguous for "none"."""
    if reduction == "none":
        return np.asarray(loss, order="C")  # not ascontiguousarray: that makes a 0-d array 1-d
    total = loss.sum(dtype=loss.dtype)
    return np.array(total / loss.dtype.type(loss.size) if reduction == "mean" else total, dtype=loss.dtype)


# --------------------------------------------------------------------------- negative log-likelihood


def _nll(log_probs, index):
    return -np.take_along_axis(log_probs, index, axis=1)[:, 0]


def nll_loss(log_probs, target, reduction="mean"):
    """-log_probs[n, target[n, ...], ...], reduced.

    log_probs: (N, C) or (N, C, d1, ...); target: (N,) or (N, d1, ...), integers in [0, C).
    Returns a 0-d array ("mean", "sum") or (N, d1, ...) ("none"), log_probs' dtype.
    """
    op = "nll_loss"
    where, _, (log_probs, target) = _place(op, log_probs=log_probs, target=target)
    index = _check_classes(op, "log_probs", log_probs, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    if where == CUDA:
        return _gpu_nll(log_probs, target, reduction)
    with _quiet():
        return _reduce(_nll(log_probs, index), reduction)


def nll_loss_backward(grad_out, log_probs, target, reduction="mean"):
    """Gradient of nll_loss with respect to log_probs: -scale at each target class, 0 elsewhere.

    grad_out: a scalar for "mean" and "sum", (N, d1, ...) for "none". Returns log_probs' shape.
    """
    op = "nll_loss_backward"
    where, grad_out, (log_probs, target) = _place(op, grad_out, log_probs=log_probs, target=target)
    index = _check_classes(op, "log_probs", log_probs, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    if where == CUDA:
        return _gpu_class_grad(op, grad_out, log_probs, target, reduction, None)
    scale = _scale(op, grad_out, reduction, target.shape, target.size, log_probs.dtype)
    grad = np.zeros(log_probs.shape, dtype=log_probs.dtype)
    with _quiet():
        np.put_along_axis(grad, index, -np.expand_dims(scale, 1) if scale.ndim else -scale, axis=1)
    return grad


# --------------------------------------------------------------------------- cross entropy


def cross_entropy(logits, target, reduction="mean"):
    """nll_loss(log_softmax(logits, dim=1), target): log-sum-exp stable.

    logits: (N, C) or (N, C, d1, ...) unnormalized scores; target: (N,) or (N, d1, ...),
    integers in [0, C). Returns a 0-d array ("mean", "sum") or (N, d1, ...) ("none").
    """
    op = "cross_entropy"
    where, _, (logits, target) = _place(op, logits=logits, target=target)
    index = _check_classes(op, "logits", logits, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    if where == CUDA:
        return _gpu_nll(activation.log_softmax(logits, 1), target, reduction)
    with _quiet():
        return _reduce(_nll(activation.log_softmax(logits, 1), index), reduction)


def cross_entropy_backward(grad_out, logits, target, reduction="mean"):
    """(softmax(logits, dim=1) - one_hot(target)) * scale: the gradient with respect to logits.

    grad_out: a scalar for "mean" and "sum", (N, d1, ...) for "none". Returns logits' shape.
    """
    op = "cross_entropy_backward"
    where, grad_out, (logits, target) = _place(op, grad_out, logits=logits, target=target)
    index = _check_classes(op, "logits", logits, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    if where == CUDA:
        return _gpu_class_grad(op, grad_out, logits, target, reduction, activation.softmax(logits, 1))
    scale = _scale(op, grad_out, reduction, target.shape, target.size, logits.dtype)
    grad = activation.softmax(logits, 1)
    with _quiet():
        np.put_along_axis(grad, index, np.take_along_axis(grad, index, axis=1) - 1, axis=1)
        grad *= np.expand_dims(scale, 1) if scale.ndim else scale
    return grad


# --------------------------------------------------------------------------- mean squared error


def _check_mse(op, input, target):
    check_array(op, "input", input)
    check_array(op, "target", target, dtype=input.dtype)
    if target.shape != input.shape:
        raise ValueError(f"{op}: target must have input's shape {input.shape}, got {target.shape}")


def mse_loss(input, target, reduction="mean"):
    """(input - target)**2, reduced. input, target: the same shape and dtype.

    Returns a 0-d array ("mean", "sum") or input's shape ("none"), input's dtype.
    """
    op = "mse_loss"
    where, _, (input, target) = _place(op, input=input, target=target)
    _check_mse(op, input, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    if where == CUDA:
        loss = empty(input.shape, input.dtype, CUDA)
        kernels(CUDA, "loss").squared_error(flat(input), flat(target), loss.reshape(loss.size))
        return _gpu_reduce(loss, reduction)
    with _quiet():
        diff = np.asarray(np.subtract(input, target, order="C"))  # an array even when 0-d
        return _reduce(np.multiply(diff, diff, out=diff), reduction)


def mse_loss_backward(grad_out, input, target, reduction="mean"):
    """2 * (input - target) * scale: the gradient with respect to input (that of target is its
    negative). grad_out: a scalar for "mean" and "sum", input's shape for "none"."""
    op = "mse_loss_backward"
    where, grad_out, (input, target) = _place(op, grad_out, input=input, target=target)
    _check_mse(op, input, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    if where == CUDA:
        g, per_element, divisor = _gpu_scale(op, grad_out, reduction, input.shape, input.size, input.dtype)
        grad = empty(input.shape, input.dtype, CUDA)
        kernels(CUDA, "loss").mse_grad(flat(input), flat(target), g, per_element, divisor, grad.reshape(grad.size))
        return grad
    scale = _scale(op, grad_out, reduction, input.shape, input.size, input.dtype)
    with _quiet():
        grad = np.asarray(np.subtract(input, target, order="C"))
        grad *= input.dtype.type(2)
        grad *= scale
    return grad
