"""Normalization, with ``torch.nn.functional``'s names and semantics.

Batch norm and group norm are one computation: x is seen as planes (N, C, S), S = prod(spatial),
and the planes that share a statistic are a set of axes of the (N, C) grid of planes, laid out as
a ``view``:

* batch norm: view (N, C, 1), statistics over axes (0, 2): one channel across the batch;
* group norm: view (N, G, C / G), statistics over axis 2: one group of channels of one sample.
  Layer norm over (C, *spatial) is num_groups=1, instance norm is num_groups=C.

The kernels (``kernels.cpu.norm``) reduce each plane and apply per-plane coefficients; what lies
between, a few numbers per plane, is combined here with NumPy. Forward and backward of each op
sit side by side. Local response normalization runs on the same (N, C, S) planes, along C.

GPU arrays run the twins in ``kernels.cuda.norm``: the data stays on the GPU and so do the
results, while the per-plane numbers (N * C of them) and the (C,) parameters and running
statistics come to the host for the NumPy steps in between, written once for both devices; the
running statistics are updated in place where they live.
"""

import math
from numbers import Integral, Real

import numpy as np

from .._device import CUDA, as_device, to_device, to_host
from .._geometry import check_array, check_grad_out, check_needs
from .._device import place, side
from .activation import contiguous, empty
from .activation import kernels as _kernels


def _norm(a):
    """The normalization kernels of ``a``'s device."""
    return _kernels(side(a), "norm")


def _like(x, a):
    """Host array ``a`` where x lives (a copy to the GPU for GPU arrays)."""
    return to_device(a) if side(x) == CUDA else a


def _assign(a, values):
    """a[...] = values, in place, where ``a`` lives."""
    if side(a) == CUDA:
        as_device(a).copy_to_device(np.asarray(values, dtype=a.dtype))
    else:
        a[...] = values

# --------------------------------------------------------------------------- argument checks


def _check_x(op, x, min_ndim, max_ndim=None):
    check_array(op, "x", x)
    if x.ndim < min_ndim or (max_ndim is not None and x.ndim > max_ndim):
        want = f"{min_ndim} to {max_ndim}" if max_ndim is not None else f"at least {min_ndim}"
        raise ValueError(f"{op}: x must have {want} dimensions (N, C, *spatial), got {x.ndim} (shape {x.shape})")


def _check_channels(op, name, a, x):
    """None, or a (C,) array of x's dtype: one value per channel of x."""
    if a is not None:
        check_array(op, name, a, dtype=x.dtype, ndim=1)
        if a.shape != x.shape[1:2]:
            raise ValueError(f"{op}: {name} must have shape ({x.shape[1]},), one value per channel of x, got {a.shape}")
    return a


def _check_number(op, name, value, minimum=None, strict=False):
    """A finite real number (not a bool), > ``minimum`` when ``strict`` else >= it, as a float."""
    if not isinstance(value, Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{op}: {name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return value


def _check_int(op, name, value, minimum):
    if not isinstance(value, Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_bool(op, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")
    return bool(value)


def _check_more_than_one_value(op, count, what, x):
    """PyTorch's rule: a statistic of a single value is refused (``count`` is PyTorch's product of sizes)."""
    if count == 1:
        raise ValueError(f"{op}: x must have more than 1 value per {what}, got shape {x.shape}")


def _batch_norm_args(op, x, running_mean, running_var, weight, bias, training, eps):
    """Check batch norm's arguments; return (training, eps, view, axes)."""
    _check_x(op, x, 2, 5)
    training = _check_bool(op, "training", training)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be arrays or both be None, "
                         f"got {type(running_mean).__name__} and {type(running_var).__name__}")
    if running_mean is None and not training:
        raise ValueError(f"{op}: running_mean and running_var must be arrays when training=False, got None")
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        _check_channels(op, name, a, x)
    # as PyTorch: batch statistics need eps > 0 (a constant channel has variance 0); running ones may take 0
    eps = _check_number(op, "eps", eps, minimum=0.0, strict=training)
    if training:
        _check_more_than_one_value(op, x.shape[0] * math.prod(x.shape[2:]), "channel when training", x)
    N, C = x.shape[:2]
    return training, eps, (N, C, 1), (0, 2)


def _group_norm_args(op, x, num_groups, weight, bias, eps):
    """Check group norm's arguments; return (eps, view, axes)."""
    _check_x(op, x, 2)
    N, C = x.shape[:2]
    G = _check_int(op, "num_groups", num_groups, 1)
    if C % G:
        raise ValueError(f"{op}: num_groups={G} must divide the number of channels of x, got {C} (shape {x.shape})")
    for name, a in (("weight", weight), ("bias", bias)):
        _check_channels(op, name, a, x)
    eps = _check_number(op, "eps", eps, minimum=0.0, strict=True)
    _check_more_than_one_value(op, N * (C // G) * math.prod(x.shape[2:]), "group across the batch", x)
    return eps, (N, G, C // G), (2,)


def _lrn_args(op, x, size, alpha, beta, k):
    """Check local response norm's arguments; return the kernel's scalars, in x's dtype."""
    _check_x(op, x, 3)
    size = _check_int(op, "size", size, 1)
    alpha, beta, k = (_check_number(op, name, v) for name, v in (("alpha", alpha), ("beta", beta), ("k", k)))
    # the window of channel c is [c - size // 2, c + (size - 1) // 2], zeros outside, and its sum of
    # squares is averaged over all size places (PyTorch's avg_pool with count_include_pad)
    real = x.dtype.type
    return size // 2, (size - 1) // 2, real(alpha / size), real(beta), real(k)


# --------------------------------------------------------------------------- planes and statistics


def _planes(a):
    """``a`` (N, C, *spatial) as a C-contiguous (N, C, S) array; a copy only when not contiguous."""
    return contiguous(a).reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:]))


def _per_plane(a, view):
    """A value per channel or per group (broadcastable to ``view``) as the kernels' float64 (N, C)
    array, or (1, C) where it is the same for every sample (the kernels take either)."""
    a = np.asarray(a, dtype=np.float64)
    rows = view[0] if a.ndim == len(view) and a.shape[0] == view[0] else 1
    if a.shape != (rows, *view[1:]):  # per group, or one value: spelled out per channel
        a = np.ascontiguousarray(np.broadcast_to(a, (rows, *view[1:])))
    return a.reshape(rows, -1)


def _per_channel(a, view, default):
    """weight or bias as float64 (1, *view[1:]), broadcastable against the statistics; ``default`` for None."""
    return default if a is None else a.astype(np.float64).reshape(1, *view[1:])


def _combine(plane_mean, plane_m2, S, view, axes):
    """(mean, m2, count) of each set of planes sharing a statistic, kept-dims shaped like ``view``,
    from the (N, C) moments of planes of S values each.

    m2 is the sum of squared deviations from the mean. Equal-sized planes combine exactly (Chan et
    al.): the sum of their m2 plus S times the squared deviations of their means, so no large sum
    of squares is ever differenced.
    """
    plane_mean, plane_m2 = plane_mean.reshape(view), plane_m2.reshape(view)
    mean = plane_mean.mean(axis=axes, keepdims=True)
    m2 = plane_m2.sum(axis=axes, keepdims=True) + S * np.square(plane_mean - mean).sum(axis=axes, keepdims=True)
    return mean, m2, S * math.prod(view[a] for a in axes)


def _moments(x3, view, axes):
    """(mean, m2, count) of each set of planes sharing a statistic (``_combine``), from x."""
    N, C, S = x3.shape
    plane_mean, plane_m2 = np.empty((N, C)), np.empty((N, C))
    _norm(x3).plane_moments(x3, plane_mean, plane_m2)
    return _combine(plane_mean, plane_m2, S, view, axes)


def _backward_sums(go3, x3, view, axes):
    """The backward's reductions with the statistics of x, from one read of x and grad_out.

    Returns ((mean, m2, count) as ``_moments``, and per plane (N, C): its mean, sum(go) and
    sum(go * (x - its mean))).
    """
    N, C, S = x3.shape
    plane_mean, plane_m2, sum_go, dot = (np.empty((N, C)) for _ in range(4))
    _norm(x3).plane_sums(go3, x3, plane_mean, plane_m2, sum_go, dot)
    return _combine(plane_mean, plane_m2, S, view, axes), (plane_mean, sum_go, dot)


def _normalize(x3, mean, invstd, weight, bias, view):
    """(x - mean) * invstd * weight + bias, per plane."""
    out = empty(x3.shape, x3.dtype, side(x3))
    scale = invstd * _per_channel(weight, view, 1.0)
    _norm(x3).plane_affine(x3, _per_plane(mean, view), _per_plane(scale, view),
                         _per_plane(_per_channel(bias, view, 0.0), view), out)
    return out


def _normalize_backward(go3, x3, sums, mean, invstd, weight, view, axes, count, batch_statistics, needs):
    """(grad_x (N, C, S), grad_weight (C,) float64, grad_bias (C,) float64) of ``_normalize``.

    ``sums``: the per-plane (mean, sum(go), sum(go * (x - mean))) of ``_backward_sums``, or None
    when only an input gradient with constant statistics is asked for. With ``batch_statistics``
    the mean and invstd are functions of x (count values each): grad_x = invstd * (g - mean(g)
    - xhat * mean(g * xhat)), g = grad_out * weight, xhat the normalized x; otherwise they are
    constants and grad_x = grad_out * weight * invstd.
    """
    N, C, S = x3.shape
    w = _per_channel(weight, view, 1.0)
    grad_x = grad_weight = grad_bias = None
    if sums is not None:
        plane_mean, sum_go, dot = (a.reshape(view) for a in sums)
        # sum(go * (x - mean)) about the normalization's mean, from the sum about each plane's own
        dot = dot + (plane_mean - mean) * sum_go
        # sums over the batch of N values per channel: NumPy's reduction is already optimal
        grad_weight = (dot * invstd).sum(axis=0).reshape(C)
        grad_bias = sum_go.sum(axis=0).reshape(C)
    if needs[0]:
        grad_x = empty(x3.shape, x3.dtype, side(x3))
        if batch_statistics:
            mean_g = (w * sum_go).sum(axis=axes, keepdims=True) / count
            mean_g_xhat = invstd * (w * dot).sum(axis=axes, keepdims=True) / count
            _norm(x3).plane_grad_input(go3, x3, _per_plane(mean, view), _per_plane(invstd * w, view),
                                     _per_plane(-invstd * invstd * mean_g_xhat, view),
                                     _per_plane(-invstd * mean_g, view), grad_x)
        else:
            zero = np.zeros((N, C))
            _norm(x3).plane_affine(go3, zero, _per_plane(invstd * w, view), zero, grad_x)
    return grad_x, grad_weight, grad_bias


#: Channels from which training-mode batch norm's backward runs as one task per channel
#: (``kernels.cpu.norm.channel_backward``: its second pass reads each channel from the cache, not
#: from memory) rather than a task per plane: fewer channels leave a thread idle.
CHANNEL_TASKS_MIN_CHANNELS = 16


def _channel_backward(go3, x3, weight, eps):
    """Training-mode batch norm's (grad_x, grad_weight, grad_bias) from the per-channel kernel."""
    C = x3.shape[1]
    mean, m2, sum_go, dot = (np.empty(C) for _ in range(4))
    grad_x = np.empty(x3.shape, x3.dtype)
    scale = np.ones(C) if weight is None else weight.astype(np.float64)
    _norm(x3).channel_backward(go3, x3, scale, float(eps), grad_x, mean, m2, sum_go, dot)
    count = x3.shape[0] * x3.shape[2]
    return grad_x, dot / np.sqrt(m2 / count + eps), sum_go


def _gradients(x, grads, weight, bias, needs):
    """The public (grad_x, grad_weight, grad_bias): x's shape, dtype and device, None where not
    asked or no parameter."""
    grad_x, grad_weight, grad_bias = grads
    return (
        grad_x.reshape(x.shape) if needs[0] else None,
        _like(x, grad_weight.astype(x.dtype)) if needs[1] and weight is not None else None,
        _like(x, grad_bias.astype(x.dtype)) if needs[2] and bias is not None else None,
    )


def _empty_gradients(x, weight, bias, needs):
    """Gradients of an op on an empty x: an empty grad_x, zero parameter gradients."""
    zeros = np.zeros(x.shape[1], x.dtype)
    return _gradients(x, (empty(x.shape, x.dtype, side(x)), zeros, zeros), weight, bias, needs)


# --------------------------------------------------------------------------- batch norm


def _batch_statistics(x3, running_mean, running_var, training, eps, view, axes):
    """(mean, invstd, m2, count) that batch norm normalizes with, kept-dims shaped like ``view``."""
    if training:
        mean, m2, count = _moments(x3, view, axes)
        return mean, 1.0 / np.sqrt(m2 / count + eps), m2, count
    C = view[1]
    mean = running_mean.astype(np.float64).reshape(1, C, 1)
    return mean, 1.0 / np.sqrt(running_var.astype(np.float64).reshape(1, C, 1) + eps), None, None


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalization: each channel normalized over the batch and the spatial positions.

    x: (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W). running_mean, running_var, weight,
    bias: (C,) or None. Returns (x - mean) / sqrt(var + eps) * weight + bias, shaped like x, in
    x's dtype (float32 or float64), C-contiguous.

    training=True: mean and var are the batch's (biased variance, over N and the spatial
    positions; more than one value per channel is required), and running_mean / running_var, when
    given, are updated in place as in PyTorch: running = (1 - momentum) * running + momentum *
    batch statistic, with the unbiased batch variance for running_var. training=False: the
    running statistics are used (they must be given) and nothing is modified.
    """
    op = "batch_norm"
    where, (x, running_mean, running_var, weight, bias) = place(
        op, x=x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    training, eps, view, axes = _batch_norm_args(op, x, running_mean, running_var, weight, bias, training, eps)
    momentum = _check_number(op, "momentum", momentum)
    if training and running_mean is not None and where != CUDA:  # GPU arrays are always writeable
        for name, a in (("running_mean", running_mean), ("running_var", running_var)):
            if not a.flags.writeable:
                raise ValueError(f"{op}: {name} must be writeable when training (it is updated in place), "
                                 "got a read-only array")
    if x.size == 0:  # as PyTorch: no statistics, no update
        return empty(x.shape, x.dtype, where)
    x3 = _planes(x)
    stats, weight, bias = (to_host(running_mean), to_host(running_var)), to_host(weight), to_host(bias)
    mean, invstd, m2, count = _batch_statistics(x3, *stats, training, eps, view, axes)
    if training and running_mean is not None:
        C = x.shape[1]
        _assign(running_mean, (1 - momentum) * stats[0].astype(np.float64) + momentum * mean.reshape(C))
        _assign(running_var, (1 - momentum) * stats[1].astype(np.float64) + momentum * (m2 / (count - 1)).reshape(C))
    return _normalize(x3, mean, invstd, weight, bias, view).reshape(x.shape)


def batch_norm_backward(grad_out, x, running_mean, running_var, weight=None, bias=None, training=False, eps=1e-5,
                        needs=(True, True, True)):
    """Gradients of batch_norm with respect to x, weight and bias.

    grad_out: shaped like x; the other arguments are batch_norm's (momentum plays no part).
    Returns (grad_x, grad_weight, grad_bias), shaped like x, (C,) and (C,), with None for each
    gradient that ``needs`` turns off or whose parameter is None. training=True differentiates
    through the batch statistics, which are computed again from x here; training=False treats
    the running statistics as constants. The running statistics are never modified.
    """
    op = "batch_norm_backward"
    _, (grad_out, x, running_mean, running_var, weight, bias) = place(
        op, grad_out=grad_out, x=x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    training, eps, view, axes = _batch_norm_args(op, x, running_mean, running_var, weight, bias, training, eps)
    needs = check_needs(op, needs)
    check_grad_out(op, grad_out, x.shape, x.dtype)
    if x.size == 0:
        return _empty_gradients(x, weight, bias, needs)
    x3, go3 = _planes(x), _planes(grad_out)
    weight = to_host(weight)
    if training and needs[0] and side(x3) != CUDA and x3.shape[1] >= CHANNEL_TASKS_MIN_CHANNELS:
        return _gradients(x, _channel_backward(go3, x3, weight, eps), weight, bias, needs)
    sums = None
    if training or needs[1] or needs[2]:
        # the batch statistics come from the same read of x as the backward's reductions
        moments, sums = _backward_sums(go3, x3, view, axes)
    if training:
        mean, m2, count = moments
        invstd = 1.0 / np.sqrt(m2 / count + eps)
    else:
        mean, invstd, _, count = _batch_statistics(x3, to_host(running_mean), to_host(running_var), training, eps,
                                                   view, axes)
    grads = _normalize_backward(go3, x3, sums, mean, invstd, weight, view, axes, count, training, needs)
    return _gradients(x, grads, weight, bias, needs)


# --------------------------------------------------------------------------- group norm


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalization: each sample's channels split into num_groups groups, each normalized.

    x: (N, C, *spatial), C divisible by num_groups; weight, bias: (C,) or None, one per channel.
    Returns (x - mean) / sqrt(var + eps) * weight + bias with mean and (biased) var over the
    C / num_groups channels and all spatial positions of a group of one sample; shaped like x,
    in x's dtype, C-contiguous.

    num_groups=1 is layer normalization over (C, *spatial) (torch.nn.LayerNorm's statistics; its
    affine is per element, this one per channel) and num_groups=C is instance normalization
    (torch.nn.functional.instance_norm without running statistics).
    """
    op = "group_norm"
    where, (x, weight, bias) = place(op, x=x, weight=weight, bias=bias)
    eps, view, axes = _group_norm_args(op, x, num_groups, weight, bias, eps)
    if x.size == 0:
        return empty(x.shape, x.dtype, where)
    x3 = _planes(x)
    mean, m2, count = _moments(x3, view, axes)
    return _normalize(x3, mean, 1.0 / np.sqrt(m2 / count + eps), to_host(weight), to_host(bias), view).reshape(x.shape)


def group_norm_backward(grad_out, x, num_groups, weight=None, bias=None, eps=1e-5, needs=(True, True, True)):
    """Gradients of group_norm with respect to x, weight and bias.

    grad_out: shaped like x; the other arguments are group_norm's. Returns (grad_x, grad_weight,
    grad_bias), shaped like x, (C,) and (C,), None for each gradient that ``needs`` turns off or
    whose parameter is None. The group statistics are computed again from x.
    """
    op = "group_norm_backward"
    _, (grad_out, x, weight, bias) = place(op, grad_out=grad_out, x=x, weight=weight, bias=bias)
    eps, view, axes = _group_norm_args(op, x, num_groups, weight, bias, eps)
    needs = check_needs(op, needs)
    check_grad_out(op, grad_out, x.shape, x.dtype)
    if x.size == 0:
        return _empty_gradients(x, weight, bias, needs)
    x3, go3 = _planes(x), _planes(grad_out)
    weight = to_host(weight)
    (mean, m2, count), sums = _backward_sums(go3, x3, view, axes)
    invstd = 1.0 / np.sqrt(m2 / count + eps)
    grads = _normalize_backward(go3, x3, sums, mean, invstd, weight, view, axes, count, True, needs)
    return _gradients(x, grads, weight, bias, needs)


# --------------------------------------------------------------------------- local response norm


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalization across channels, as torch.nn.functional.local_response_norm.

    x: (N, C, *spatial), at least one spatial dimension. Returns x / d ** beta with
    d[c] = k + alpha / size * sum(x[c'] ** 2 for c' in [c - size // 2, c + (size - 1) // 2]),
    channels outside [0, C) counting as zeros; shaped like x, in x's dtype, C-contiguous.
    """
    op = "local_response_norm"
    where, (x,) = place(op, x=x)
    scalars = _lrn_args(op, x, size, alpha, beta, k)
    out = empty(x.shape, x.dtype, where)
    if x.size:
        x3 = _planes(x)
        _norm(x3).lrn_forward(x3, *scalars, out.reshape(x3.shape))
    return out


def local_response_norm_backward(grad_out, x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Gradient of local_response_norm with respect to x.

    grad_out: shaped like x; the other arguments are local_response_norm's. Returns grad_x,
    shaped like x, in x's dtype, C-contiguous.
    """
    op = "local_response_norm_backward"
    where, (grad_out, x) = place(op, grad_out=grad_out, x=x)
    scalars = _lrn_args(op, x, size, alpha, beta, k)
    check_grad_out(op, grad_out, x.shape, x.dtype)
    grad_x = empty(x.shape, x.dtype, where)
    if x.size:
        x3 = _planes(x)
        _norm(x3).lrn_backward(_planes(grad_out), x3, *scalars, empty(x3.shape, x.dtype, where),
                               grad_x.reshape(x3.shape))
    return grad_x


__all__ = [
    "batch_norm", "batch_norm_backward", "group_norm", "group_norm_backward",
    "local_response_norm", "local_response_norm_backward",
]
