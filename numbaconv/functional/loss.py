"""Losses, forward and backward, with ``torch.nn.functional``'s names and semantics.

reduction: "mean" (the default) or "sum" give a 0-d array, "none" one loss per element (per
sample and position for the class losses); results keep the input's dtype. A backward takes
``grad_out``, the gradient of the loss output: a real number or a 0-d array for "mean" and
"sum", an array of the loss's shape for "none". The class losses take integer targets in
[0, C), no ignore_index and no class weights. cross_entropy is log_softmax along dim 1
(``kernels.cpu.softmax``) followed by nll_loss; gathers and reductions are NumPy's
(``take_along_axis``, ``sum``), already a single pass over the data.
"""

from numbers import Real

import numpy as np

from .._geometry import check_array, check_choice, check_grad_out
from . import activation

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
    with a class axis inserted, ready for take_along_axis."""
    check_array(op, name, scores)
    if scores.ndim < 2:
        raise ValueError(f"{op}: {name} must have shape (N, C) or (N, C, d1, ...), got {scores.shape}")
    if not isinstance(target, np.ndarray):
        raise TypeError(f"{op}: target must be a numpy.ndarray of class indices, got {type(target).__name__}")
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(f"{op}: target must have an integer dtype (class indices), got {target.dtype}")
    shape = (scores.shape[0], *scores.shape[2:])
    if target.shape != shape:
        raise ValueError(f"{op}: target must have shape {shape} for {name} of shape {scores.shape}, got {target.shape}")
    classes = scores.shape[1]
    if target.size and (target.min() < 0 or target.max() >= classes):
        raise ValueError(
            f"{op}: target must hold class indices in [0, {classes}), got values in [{target.min()}, {target.max()}]"
        )
    return np.expand_dims(target.astype(np.intp, copy=False), 1)


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
    index = _check_classes(op, "log_probs", log_probs, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    with _quiet():
        return _reduce(_nll(log_probs, index), reduction)


def nll_loss_backward(grad_out, log_probs, target, reduction="mean"):
    """Gradient of nll_loss with respect to log_probs: -scale at each target class, 0 elsewhere.

    grad_out: a scalar for "mean" and "sum", (N, d1, ...) for "none". Returns log_probs' shape.
    """
    op = "nll_loss_backward"
    index = _check_classes(op, "log_probs", log_probs, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
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
    index = _check_classes(op, "logits", logits, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    with _quiet():
        return _reduce(_nll(activation.log_softmax(logits, 1), index), reduction)


def cross_entropy_backward(grad_out, logits, target, reduction="mean"):
    """(softmax(logits, dim=1) - one_hot(target)) * scale: the gradient with respect to logits.

    grad_out: a scalar for "mean" and "sum", (N, d1, ...) for "none". Returns logits' shape.
    """
    op = "cross_entropy_backward"
    index = _check_classes(op, "logits", logits, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
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
    _check_mse(op, input, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    with _quiet():
        diff = np.asarray(np.subtract(input, target, order="C"))  # an array even when 0-d
        return _reduce(np.multiply(diff, diff, out=diff), reduction)


def mse_loss_backward(grad_out, input, target, reduction="mean"):
    """2 * (input - target) * scale: the gradient with respect to input (that of target is its
    negative). grad_out: a scalar for "mean" and "sum", input's shape for "none"."""
    op = "mse_loss_backward"
    _check_mse(op, input, target)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    scale = _scale(op, grad_out, reduction, input.shape, input.size, input.dtype)
    with _quiet():
        grad = np.asarray(np.subtract(input, target, order="C"))
        grad *= input.dtype.type(2)
        grad *= scale
    return grad
