"""Slow, obviously correct float64 references for every public op of numbaconv.

Nothing here uses numbaconv or torch. Each function is written from the definition:

* the input is padded explicitly (``pad``), each padded position copying one source position
  or holding zero;
* convolution visits every output position and contracts the window under the kernel with the
  weight of each group;
* the backward pass visits the same positions and scatters ``grad_out * weight`` back into the
  window (grad of x) and accumulates ``grad_out * window`` (grad of weight); the gradient of the
  padded input is folded back onto the input by ``pad_adjoint``, the transpose of ``pad``;
* transposed convolution scatters ``x * weight`` from every input position into the output
  window, and its backward gathers from the same windows.

Arguments follow torch.nn.functional: layout (N, C, *spatial), ints or tuples for stride,
padding and dilation, and "valid" / "same" padding strings for convolution.
"""

import itertools

import numpy as np

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# --------------------------------------------------------------------------- arguments


def as_tuple(value, nd):
    """An int or an nd-tuple of ints, as an nd-tuple."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * nd
    value = tuple(int(v) for v in value)
    assert len(value) == nd, value
    return value


def padding_pairs(padding, kernel, stride, dilation):
    """Padding as one (before, after) pair per spatial dim.

    "same" pads dilation * (k - 1) in total, the odd element at the end, like PyTorch.
    """
    nd = len(kernel)
    if padding == "valid":
        return ((0, 0),) * nd
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError("padding='same' needs stride 1")
        pairs = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            pairs.append((total // 2, total - total // 2))
        return tuple(pairs)
    return tuple((p, p) for p in as_tuple(padding, nd))


def _group_slices(groups, per_group):
    return [slice(g * per_group, (g + 1) * per_group) for g in range(groups)]


def _window(position, stride, kernel, dilation):
    """The strided slices, one per spatial dim, of the window read by output ``position``."""
    return tuple(
        slice(o * s, o * s + d * (k - 1) + 1, d)
        for o, s, k, d in zip(position, stride, kernel, dilation)
    )


# --------------------------------------------------------------------------- padding


def source_index(j, length, mode):
    """The input index that padded position ``j`` (in input coordinates) copies, or None for 0."""
    if 0 <= j < length:
        return j
    if mode == "zeros":
        return None
    if mode == "replicate":
        return 0 if j < 0 else length - 1
    if mode == "circular":
        return j % length
    if mode == "reflect":
        return -j if j < 0 else 2 * (length - 1) - j
    raise ValueError(f"unknown padding mode {mode!r}")


def _check_pad(length, before, after, mode):
    if mode == "reflect":
        assert before < length and after < length, "reflect padding must be < input size"
    if mode == "circular":
        assert before <= length and after <= length, "circular padding must be <= input size"


def pad(x, pairs, mode="zeros"):
    """x (N, C, *spatial) padded by ``pairs`` [(before, after), ...] with ``mode``."""
    out = np.asarray(x, dtype=np.float64)
    for axis, (before, after) in enumerate(pairs, start=2):
        length = out.shape[axis]
        _check_pad(length, before, after, mode)
        pieces = []
        for j in range(-before, length + after):
            src = source_index(j, length, mode)
            if src is None:
                pieces.append(np.zeros_like(np.take(out, [0], axis=axis)))
            else:
                pieces.append(np.take(out, [src], axis=axis))
        out = np.concatenate(pieces, axis=axis)
    return out


def pad_adjoint(g, pairs, mode="zeros"):
    """The transpose of ``pad``: each padded position's gradient added to the position it copies."""
    out = np.asarray(g, dtype=np.float64)
    for axis, (before, after) in enumerate(pairs, start=2):
        length = out.shape[axis] - before - after
        shape = list(out.shape)
        shape[axis] = length
        folded = np.zeros(shape)
        for j in range(-before, length + after):
            src = source_index(j, length, mode)
            if src is None:
                continue
            index = [slice(None)] * out.ndim
            index[axis] = src
            source = [slice(None)] * out.ndim
            source[axis] = j + before
            folded[tuple(index)] += out[tuple(source)]
        out = folded
    return out


# --------------------------------------------------------------------------- convolution


def conv_output_shape(padded_shape, kernel, stride, dilation):
    return tuple(
        (p - d * (k - 1) - 1) // s + 1 for p, k, s, d in zip(padded_shape, kernel, stride, dilation)
    )


def _conv_geometry(x, w, stride, padding, dilation, padding_mode):
    nd = x.ndim - 2
    kernel = w.shape[2:]
    stride = as_tuple(stride, nd)
    dilation = as_tuple(dilation, nd)
    pairs = padding_pairs(padding, kernel, stride, dilation)
    xp = pad(x, pairs, padding_mode)
    out_shape = conv_output_shape(xp.shape[2:], kernel, stride, dilation)
    assert all(o >= 1 for o in out_shape), "kernel larger than padded input"
    return kernel, stride, dilation, pairs, xp, out_shape


def conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """torch.nn.Conv{n}d forward: pad with ``padding_mode``, then a valid cross-correlation."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    kernel, stride, dilation, _, xp, out_shape = _conv_geometry(
        x, w, stride, padding, dilation, padding_mode
    )
    n, c_in = x.shape[:2]
    c_out = w.shape[0]
    assert c_in == w.shape[1] * groups and c_out % groups == 0
    ins = _group_slices(groups, c_in // groups)
    outs = _group_slices(groups, c_out // groups)
    reduce_axes = list(range(1, x.ndim))  # channel and kernel axes of window and weight

    y = np.zeros((n, c_out) + out_shape)
    for position in itertools.product(*map(range, out_shape)):
        window = xp[(slice(None), slice(None)) + _window(position, stride, kernel, dilation)]
        for gi, go in zip(ins, outs):
            # (N, C_in/g, *K) . (C_out/g, C_in/g, *K) -> (N, C_out/g)
            y[(slice(None), go) + position] = np.tensordot(window[:, gi], w[go], (reduce_axes, reduce_axes))
    if b is not None:
        y += np.asarray(b, dtype=np.float64).reshape((1, c_out) + (1,) * len(kernel))
    return y


def conv_backward(grad_out, x, w, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """(grad_x, grad_weight, grad_bias) of ``conv`` for the upstream gradient ``grad_out``."""
    grad_out = np.asarray(grad_out, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    kernel, stride, dilation, pairs, xp, out_shape = _conv_geometry(
        x, w, stride, padding, dilation, padding_mode
    )
    assert grad_out.shape == (x.shape[0], w.shape[0]) + out_shape
    c_in, c_out = x.shape[1], w.shape[0]
    ins = _group_slices(groups, c_in // groups)
    outs = _group_slices(groups, c_out // groups)

    grad_xp = np.zeros_like(xp)
    grad_w = np.zeros_like(w)
    for position in itertools.product(*map(range, out_shape)):
        window = _window(position, stride, kernel, dilation)
        for gi, go in zip(ins, outs):
            g = grad_out[(slice(None), go) + position]  # (N, C_out/g)
            # scatter g * w into the window: (N, C_out/g) . (C_out/g, C_in/g, *K) -> (N, C_in/g, *K)
            grad_xp[(slice(None), gi) + window] += np.tensordot(g, w[go], (1, 0))
            # accumulate g * window: (N, C_out/g) . (N, C_in/g, *K) -> (C_out/g, C_in/g, *K)
            grad_w[go] += np.tensordot(g, xp[(slice(None), gi) + window], (0, 0))
    grad_x = pad_adjoint(grad_xp, pairs, padding_mode)
    grad_b = grad_out.sum(axis=(0,) + tuple(range(2, grad_out.ndim)))
    return grad_x, grad_w, grad_b


# --------------------------------------------------------------------------- transposed convolution


def _transpose_geometry(x, w, stride, padding, output_padding, groups, dilation):
    nd = x.ndim - 2
    kernel = w.shape[2:]
    stride = as_tuple(stride, nd)
    padding = as_tuple(padding, nd)
    output_padding = as_tuple(output_padding, nd)
    dilation = as_tuple(dilation, nd)
    # every input position i writes to i * s + k * d; output_padding adds positions at the end
    full = tuple(
        (i - 1) * s + d * (k - 1) + 1 + op
        for i, s, k, d, op in zip(x.shape[2:], stride, kernel, dilation, output_padding)
    )
    crop = tuple(slice(p, f - p) for p, f in zip(padding, full))
    assert all(f - 2 * p >= 1 for p, f in zip(padding, full)), "empty output"
    c_in, c_out = x.shape[1], w.shape[1] * groups
    assert w.shape[0] == c_in and c_in % groups == 0
    ins = _group_slices(groups, c_in // groups)
    outs = _group_slices(groups, c_out // groups)
    return kernel, stride, dilation, full, crop, c_out, ins, outs


def conv_transpose(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """torch.nn.functional.conv_transpose{n}d: each input element scatters x * w into the output."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    kernel, stride, dilation, full, crop, c_out, ins, outs = _transpose_geometry(
        x, w, stride, padding, output_padding, groups, dilation
    )
    y_full = np.zeros((x.shape[0], c_out) + full)
    for position in itertools.product(*map(range, x.shape[2:])):
        window = _window(position, stride, kernel, dilation)
        for gi, go in zip(ins, outs):
            v = x[(slice(None), gi) + position]  # (N, C_in/g)
            # (N, C_in/g) . (C_in/g, C_out/g, *K) -> (N, C_out/g, *K)
            y_full[(slice(None), go) + window] += np.tensordot(v, w[gi], (1, 0))
    y = y_full[(slice(None), slice(None)) + crop]
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64).reshape((1, c_out) + (1,) * len(kernel))
    return np.ascontiguousarray(y)


def conv_transpose_backward(grad_out, x, w, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """(grad_x, grad_weight, grad_bias) of ``conv_transpose`` for the upstream gradient ``grad_out``."""
    grad_out = np.asarray(grad_out, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    kernel, stride, dilation, full, crop, c_out, ins, outs = _transpose_geometry(
        x, w, stride, padding, output_padding, groups, dilation
    )
    grad_full = np.zeros((x.shape[0], c_out) + full)  # cropped positions get no gradient
    grad_full[(slice(None), slice(None)) + crop] = grad_out
    reduce_axes = list(range(1, x.ndim))

    grad_x = np.zeros_like(x)
    grad_w = np.zeros_like(w)
    for position in itertools.product(*map(range, x.shape[2:])):
        window = _window(position, stride, kernel, dilation)
        for gi, go in zip(ins, outs):
            g = grad_full[(slice(None), go) + window]  # (N, C_out/g, *K)
            # (N, C_out/g, *K) . (C_in/g, C_out/g, *K) -> (N, C_in/g)
            grad_x[(slice(None), gi) + position] += np.tensordot(g, w[gi], (reduce_axes, reduce_axes))
            # (N, C_in/g) . (N, C_out/g, *K) -> (C_in/g, C_out/g, *K)
            grad_w[gi] += np.tensordot(x[(slice(None), gi) + position], g, (0, 0))
    grad_b = grad_out.sum(axis=(0,) + tuple(range(2, grad_out.ndim)))
    return grad_x, grad_w, grad_b


# --- pooling: references for numbaconv.functional.pool ---


# --- activations, linear, dropout and losses: references for numbaconv.functional.activation / loss ---


# --- normalization: references for numbaconv.functional.norm ---
