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


def pool_output_size(n, k, s, p, d, ceil_mode):
    """PyTorch's rule; with ceil_mode a last window starting in the right padding is dropped."""
    if ceil_mode:
        out = -(-(n + 2 * p - d * (k - 1) - 1) // s) + 1
        if (out - 1) * s >= n + p:
            out -= 1
        return out
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _pool_args(x, kernel_size, stride, padding, dilation):
    nd = x.ndim - 2
    kernel = as_tuple(kernel_size, nd)
    stride = kernel if stride is None else as_tuple(stride, nd)
    return kernel, stride, as_tuple(padding, nd), as_tuple(dilation, nd)


def _max_windows(size, kernel, stride, padding, dilation, ceil_mode):
    """{output position: (input positions its window reads, in scan order; the flat index
    reported when it reads none: the first position past the left padding)}."""
    out_shape = tuple(pool_output_size(*a, ceil_mode) for a in zip(size, kernel, stride, padding, dilation))
    windows = {}
    for position in itertools.product(*map(range, out_shape)):
        taps, first = [], []
        for o, n, k, s, p, d in zip(position, size, kernel, stride, padding, dilation):
            taps.append([o * s - p + t * d for t in range(k) if 0 <= o * s - p + t * d < n])
            f = o * s - p
            while f < 0:
                f += d
            first.append(f)
        flat = 0
        for f, n in zip(first, size):
            flat = flat * n + f
        windows[position] = (list(itertools.product(*taps)), flat)
    return out_shape, windows


def _max_scan(x, out_shape, windows):
    """Each window scanned in order; a value replaces the running maximum (which starts at -inf)
    when it is larger or NaN. Indices are flat positions in the input's spatial plane."""
    size = x.shape[2:]
    y = np.zeros(x.shape[:2] + out_shape)
    idx = np.zeros(x.shape[:2] + out_shape, dtype=np.int64)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for position, (taps, at) in windows.items():
            best = -np.inf
            for tap in taps:
                v = x[(n, c) + tap]
                if v > best or np.isnan(v):
                    best, at = v, int(np.ravel_multi_index(tap, size))
            y[(n, c) + position], idx[(n, c) + position] = best, at
    return y, idx


def _scatter_by_indices(grad_out, x, windows, indices):
    """grad_out added at each window's index; a window that reads no input routes nothing."""
    grad = np.zeros(x.shape[:2] + (int(np.prod(x.shape[2:])),))
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for position, (taps, _) in windows.items():
            if taps:
                grad[n, c, indices[(n, c) + position]] += grad_out[(n, c) + position]
    return grad.reshape(x.shape)


def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(y, indices) of torch.nn.functional.max_pool{n}d(..., return_indices=True)."""
    x = np.asarray(x, dtype=np.float64)
    kernel, stride, padding, dilation = _pool_args(x, kernel_size, stride, padding, dilation)
    return _max_scan(x, *_max_windows(x.shape[2:], kernel, stride, padding, dilation, ceil_mode))


def max_pool_backward(grad_out, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, indices=None):
    x = np.asarray(x, dtype=np.float64)
    kernel, stride, padding, dilation = _pool_args(x, kernel_size, stride, padding, dilation)
    out_shape, windows = _max_windows(x.shape[2:], kernel, stride, padding, dilation, ceil_mode)
    if indices is None:
        indices = _max_scan(x, out_shape, windows)[1]
    return _scatter_by_indices(np.asarray(grad_out, dtype=np.float64), x, windows, indices)


def _avg_windows(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """[(window slices into the zero-padded input, divisor)] per output position, and the padding.

    The divisor is divisor_override, else the window's size inside the padded input
    (count_include_pad) or inside the input; a ceil_mode window running past the padding is cut.
    """
    kernel, stride, padding, _ = _pool_args(x, kernel_size, stride, padding, 1)
    size = x.shape[2:]
    out_shape = tuple(pool_output_size(n, k, s, p, 1, ceil_mode) for n, k, s, p in zip(size, kernel, stride, padding))
    pairs = [(p, p) for p in padding]
    real = pad(np.ones((1, 1) + size), pairs)[0, 0]  # 1 on the input, 0 on the padding
    windows = []
    for position in itertools.product(*map(range, out_shape)):
        window = tuple(slice(o * s, o * s + k) for o, s, k in zip(position, stride, kernel))
        if divisor_override is not None:
            divisor = divisor_override
        elif count_include_pad:
            divisor = real[window].size
        else:
            divisor = real[window].sum()
        windows.append((position, window, divisor))
    return out_shape, pairs, windows


def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """torch.nn.functional.avg_pool{n}d: window sums of the zero-padded input over a divisor."""
    x = np.asarray(x, dtype=np.float64)
    out_shape, pairs, windows = _avg_windows(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                             divisor_override)
    xp = pad(x, pairs)
    y = np.zeros(x.shape[:2] + out_shape)
    for position, window, divisor in windows:
        total = xp[(slice(None), slice(None)) + window].sum(axis=tuple(range(2, x.ndim)))
        y[(slice(None), slice(None)) + position] = total / divisor
    return y


def avg_pool_backward(grad_out, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                      divisor_override=None):
    """grad_out / divisor spread over each window of the padded input, the padding then cut away."""
    x = np.asarray(x, dtype=np.float64)
    grad_out = np.asarray(grad_out, dtype=np.float64)
    out_shape, pairs, windows = _avg_windows(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                             divisor_override)
    grad = np.zeros(pad(x, pairs).shape)
    for position, window, divisor in windows:
        g = grad_out[(slice(None), slice(None)) + position] / divisor
        grad[(slice(None), slice(None)) + window] += g.reshape(g.shape + (1,) * len(out_shape))
    return pad_adjoint(grad, pairs)


def lp_pool(x, norm_type, kernel_size, stride=None, ceil_mode=False):
    """torch.nn.functional.lp_pool{n}d: (avg_pool(x ** p) * prod(kernel)) ** (1 / p); max of |x| for p = inf."""
    x = np.asarray(x, dtype=np.float64)
    if norm_type == np.inf:
        return max_pool(np.abs(x), kernel_size, stride, 0, 1, ceil_mode)[0]
    kernel = as_tuple(kernel_size, x.ndim - 2)
    with np.errstate(invalid="ignore"):
        return (avg_pool(x ** norm_type, kernel, stride, 0, ceil_mode) * np.prod(kernel)) ** (1 / norm_type)


def lp_pool_backward(grad_out, x, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Chain rule for ``lp_pool``: y = (k * a) ** (1 / p), a = avg_pool(x ** p), k = prod(kernel), so
    dy/da = y ** (1 - p) * k / p (taken as zero where a = 0, as PyTorch does) and da/dx is
    avg_pool's adjoint times p * x ** (p - 1); for p = inf, max pooling's gradient of |x| times sign(x)."""
    x = np.asarray(x, dtype=np.float64)
    if norm_type == np.inf:
        return max_pool_backward(grad_out, np.abs(x), kernel_size, stride, 0, 1, ceil_mode) * np.sign(x)
    p = norm_type
    kernel = as_tuple(kernel_size, x.ndim - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = avg_pool(x ** p, kernel, stride, 0, ceil_mode)
        y = (a * np.prod(kernel)) ** (1 / p)
        g = np.where(a == 0, 0.0, grad_out * y ** (1 - p) * np.prod(kernel) / p)  # grad_out * dy/da
        return avg_pool_backward(g, x, kernel, stride, 0, ceil_mode) * p * x ** (p - 1)


def adaptive_windows(n, out):
    """Input ranges [floor(i * n / out), ceil((i + 1) * n / out)) of the ``out`` adaptive windows."""
    return [slice((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]


def _adaptive_size(x, output_size):
    nd = x.ndim - 2
    items = (output_size,) * nd if output_size is None or isinstance(output_size, (int, np.integer)) else output_size
    return tuple(n if o is None else int(o) for n, o in zip(x.shape[2:], items))


def adaptive_avg_pool(x, output_size):
    """torch.nn.functional.adaptive_avg_pool{n}d: the mean of each adaptive window."""
    x = np.asarray(x, dtype=np.float64)
    out_shape = _adaptive_size(x, output_size)
    windows = [adaptive_windows(n, o) for n, o in zip(x.shape[2:], out_shape)]
    y = np.zeros(x.shape[:2] + out_shape)
    for position in itertools.product(*map(range, out_shape)):
        w = tuple(ws[o] for ws, o in zip(windows, position))
        y[(slice(None), slice(None)) + position] = x[(slice(None), slice(None)) + w].mean(axis=tuple(range(2, x.ndim)))
    return y


def adaptive_avg_pool_backward(grad_out, x, output_size):
    """grad_out / window size spread over each adaptive window."""
    x = np.asarray(x, dtype=np.float64)
    out_shape = _adaptive_size(x, output_size)
    windows = [adaptive_windows(n, o) for n, o in zip(x.shape[2:], out_shape)]
    grad = np.zeros_like(x)
    for position in itertools.product(*map(range, out_shape)):
        w = (slice(None), slice(None)) + tuple(ws[o] for ws, o in zip(windows, position))
        g = grad_out[(slice(None), slice(None)) + position]
        grad[w] += g.reshape(g.shape + (1,) * len(out_shape)) / grad[w][0, 0].size
    return grad


def adaptive_max_pool(x, output_size):
    """(y, indices) of torch.nn.functional.adaptive_max_pool{n}d(..., return_indices=True),
    windows scanned as in ``max_pool``."""
    x = np.asarray(x, dtype=np.float64)
    size = x.shape[2:]
    out_shape = _adaptive_size(x, output_size)
    windows = [adaptive_windows(n, o) for n, o in zip(size, out_shape)]
    y = np.zeros(x.shape[:2] + out_shape)
    idx = np.zeros(x.shape[:2] + out_shape, dtype=np.int64)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for position in itertools.product(*map(range, out_shape)):
            ranges = [range(ws[o].start, ws[o].stop) for ws, o in zip(windows, position)]
            best, at = -np.inf, int(np.ravel_multi_index([r[0] for r in ranges], size))
            for window_pos in itertools.product(*ranges):
                v = x[(n, c) + window_pos]
                if v > best or np.isnan(v):
                    best, at = v, int(np.ravel_multi_index(window_pos, size))
            y[(n, c) + position], idx[(n, c) + position] = best, at
    return y, idx


def adaptive_max_pool_backward(grad_out, x, output_size, indices=None):
    x = np.asarray(x, dtype=np.float64)
    indices = adaptive_max_pool(x, output_size)[1] if indices is None else indices
    grad = np.zeros(x.shape[:2] + (int(np.prod(x.shape[2:])),))
    for pos in itertools.product(*map(range, indices.shape)):
        grad[pos[:2] + (indices[pos],)] += grad_out[pos]
    return grad.reshape(x.shape)


# --- activations, linear, dropout and losses: references for numbaconv.functional.activation / loss ---


def _as_float64(a):
    return np.asarray(a, dtype=np.float64)


def _elementwise(f, *arrays):
    """f applied to every element (Python floats), the result a float64 array of the same shape."""
    arrays = [_as_float64(a) for a in arrays]
    out = np.empty(arrays[0].shape)
    for idx in np.ndindex(out.shape):
        out[idx] = f(*(float(a[idx]) for a in arrays))
    return out


def relu(x):
    return _elementwise(lambda v: v if v > 0 else 0.0, x)


def relu_backward(grad_out, x):
    return _elementwise(lambda g, v: g if v > 0 else 0.0, grad_out, x)


def leaky_relu(x, negative_slope=0.01):
    return _elementwise(lambda v: v if v > 0 else negative_slope * v, x)


def leaky_relu_backward(grad_out, x, negative_slope=0.01):
    return _elementwise(lambda g, v: g if v > 0 else negative_slope * g, grad_out, x)


def elu(x, alpha=1.0):
    return _elementwise(lambda v: v if v > 0 else alpha * np.expm1(v), x)


def elu_backward(grad_out, x, alpha=1.0):
    return _elementwise(lambda g, v: g if v > 0 else g * alpha * np.exp(v), grad_out, x)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v)) if v >= 0 else np.exp(v) / (1.0 + np.exp(v))


def sigmoid(x):
    return _elementwise(_sigmoid, x)


def sigmoid_backward(grad_out, x):
    """The gradient with respect to x (the numbaconv op takes y = sigmoid(x) instead)."""
    return _elementwise(lambda g, v: g * _sigmoid(v) * (1.0 - _sigmoid(v)), grad_out, x)


def tanh(x):
    return _elementwise(np.tanh, x)


def tanh_backward(grad_out, x):
    """The gradient with respect to x (the numbaconv op takes y = tanh(x) instead)."""
    return _elementwise(lambda g, v: g / np.cosh(v) ** 2, grad_out, x)


def _slices_along(x, dim):
    """Every 1-D slice of x along ``dim``, as (index, row) with index a tuple selecting the slice."""
    x = _as_float64(x)
    shape = x.shape
    if x.size == 0:
        return
    other = [range(n) for i, n in enumerate(shape) if i != dim]
    for rest in itertools.product(*other):
        index = list(rest)
        index.insert(dim, slice(None))
        yield tuple(index), x[tuple(index)]


def softmax(x, dim):
    """exp(row) / sum(exp(row)) for every row along ``dim``, shifted by the row's max."""
    x = _as_float64(x)
    if x.ndim == 0:
        return np.ones(())
    out = np.empty(x.shape)
    for index, row in _slices_along(x, dim % x.ndim):
        e = np.exp(row - row.max())
        out[index] = e / e.sum()
    return out


def log_softmax(x, dim):
    x = _as_float64(x)
    if x.ndim == 0:
        return np.zeros(())
    out = np.empty(x.shape)
    for index, row in _slices_along(x, dim % x.ndim):
        m = row.max()
        out[index] = row - m - np.log(np.exp(row - m).sum())
    return out


def softmax_backward(grad_out, x, dim):
    """J^T grad_out per row, J[i, j] = d softmax_i / d x_j = s_i (delta_ij - s_j); w.r.t. x."""
    x, g = _as_float64(x), _as_float64(grad_out)
    if x.ndim == 0:
        return np.zeros(())
    out = np.empty(x.shape)
    for index, row in _slices_along(x, dim % x.ndim):
        s = softmax(row, 0)
        jacobian = np.diag(s) - np.outer(s, s)
        out[index] = jacobian.T @ g[index]
    return out


def log_softmax_backward(grad_out, x, dim):
    """J^T grad_out per row, J[i, j] = d log_softmax_i / d x_j = delta_ij - s_j; w.r.t. x."""
    x, g = _as_float64(x), _as_float64(grad_out)
    if x.ndim == 0:
        return np.zeros(())
    out = np.empty(x.shape)
    for index, row in _slices_along(x, dim % x.ndim):
        s = softmax(row, 0)
        jacobian = np.eye(len(s)) - s[None, :]
        out[index] = jacobian.T @ g[index]
    return out


def linear(x, w, b=None):
    """y[..., o] = sum_i x[..., i] * w[o, i] + b[o], one output at a time."""
    x, w = _as_float64(x), _as_float64(w)
    y = np.zeros(x.shape[:-1] + (w.shape[0],))
    for idx in np.ndindex(x.shape[:-1]):
        for o in range(w.shape[0]):
            y[idx + (o,)] = sum(x[idx + (i,)] * w[o, i] for i in range(w.shape[1]))
    if b is not None:
        y += _as_float64(b)
    return y


def linear_backward(grad_out, x, w):
    """(grad_x, grad_weight, grad_bias) of ``linear``, by the chain rule one term at a time."""
    g, x, w = _as_float64(grad_out), _as_float64(x), _as_float64(w)
    grad_x, grad_w, grad_b = np.zeros(x.shape), np.zeros(w.shape), np.zeros(w.shape[0])
    for idx in np.ndindex(x.shape[:-1]):
        for o in range(w.shape[0]):
            grad_b[o] += g[idx + (o,)]
            for i in range(w.shape[1]):
                grad_x[idx + (i,)] += g[idx + (o,)] * w[o, i]
                grad_w[o, i] += g[idx + (o,)] * x[idx + (i,)]
    return grad_x, grad_w, grad_b


def dropout(x, mask, p):
    """x / (1 - p) where the mask keeps it, 0 elsewhere."""
    return np.where(mask, _as_float64(x) / (1.0 - p), 0.0)


def _loss_reduce(losses, reduction):
    if reduction == "none":
        return losses
    total = float(losses.sum())
    return np.array(total / losses.size if reduction == "mean" else total)


def _loss_scale(grad_out, reduction, shape):
    """d(reduced loss) / d(each loss element), times grad_out, as an array of ``shape``."""
    if reduction == "none":
        return _as_float64(grad_out)
    g = float(np.asarray(grad_out))
    return np.full(shape, g / np.prod(shape) if reduction == "mean" else g)


def nll_loss(log_probs, target, reduction="mean"):
    lp = _as_float64(log_probs)
    losses = np.empty(target.shape)
    for idx in np.ndindex(target.shape):
        losses[idx] = -lp[(idx[0], int(target[idx])) + idx[1:]]
    return _loss_reduce(losses, reduction)


def nll_loss_backward(grad_out, log_probs, target, reduction="mean"):
    scale = _loss_scale(grad_out, reduction, target.shape)
    grad = np.zeros(np.shape(log_probs))
    for idx in np.ndindex(target.shape):
        grad[(idx[0], int(target[idx])) + idx[1:]] = -scale[idx]
    return grad


def cross_entropy(logits, target, reduction="mean"):
    return nll_loss(log_softmax(logits, 1), target, reduction)


def cross_entropy_backward(grad_out, logits, target, reduction="mean"):
    """d/dlogits of nll(log_softmax(logits)): the chain rule through both references."""
    g = nll_loss_backward(grad_out, log_softmax(logits, 1), target, reduction)
    return log_softmax_backward(g, logits, 1)


def mse_loss(input, target, reduction="mean"):
    return _loss_reduce((_as_float64(input) - _as_float64(target)) ** 2, reduction)


def mse_loss_backward(grad_out, input, target, reduction="mean"):
    return 2.0 * (_as_float64(input) - _as_float64(target)) * _loss_scale(grad_out, reduction, np.shape(input))


# --- normalization: references for numbaconv.functional.norm ---


def _normalize_block(v, eps):
    """(v - mean(v)) / sqrt(var(v) + eps) over every element of ``v`` (biased variance)."""
    return (v - v.mean()) / np.sqrt(v.var() + eps)


def _normalize_block_backward(v, g, eps):
    """The gradient with respect to ``v`` of ``_normalize_block(v)`` for upstream gradient ``g``.

    With s = 1 / sqrt(var + eps) and xhat = (v - mean) * s, differentiating the definition gives
    the Jacobian d xhat_i / d v_j = s * ([i == j] - 1 / M - xhat_i * xhat_j / M), built in full.
    """
    flat = v.ravel()
    m = flat.size
    s = 1.0 / np.sqrt(flat.var() + eps)
    xhat = (flat - flat.mean()) * s
    jacobian = s * (np.eye(m) - 1.0 / m - np.outer(xhat, xhat) / m)
    return (g.ravel() @ jacobian).reshape(v.shape)


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _affine(xhat, weight, bias):
    """xhat * weight + bias, per channel (None as 1 and 0)."""
    shape = _channel_shape(xhat)
    w = 1.0 if weight is None else np.asarray(weight, dtype=np.float64).reshape(shape)
    b = 0.0 if bias is None else np.asarray(bias, dtype=np.float64).reshape(shape)
    return xhat * w + b


def _channel_blocks(x):
    """Index of each channel's block for batch norm: the channel across the batch and all positions."""
    return [(slice(None), c) for c in range(x.shape[1])]


def _group_blocks(x, num_groups):
    """Index of each group's block for group norm: C / num_groups channels of one sample."""
    per = x.shape[1] // num_groups
    return [(n, slice(g * per, (g + 1) * per)) for n in range(x.shape[0]) for g in range(num_groups)]


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm without side effects: (y, new_running_mean, new_running_var).

    training: each channel is normalized with its batch mean and biased variance, and the running
    statistics move towards the batch mean and the unbiased variance by ``momentum`` (None stays
    None). Otherwise the running statistics normalize and are returned unchanged.
    """
    x = np.asarray(x, dtype=np.float64)
    if not training:
        shape = _channel_shape(x)
        mean = np.asarray(running_mean, dtype=np.float64).reshape(shape)
        var = np.asarray(running_var, dtype=np.float64).reshape(shape)
        return _affine((x - mean) / np.sqrt(var + eps), weight, bias), running_mean, running_var
    xhat = np.empty_like(x)
    new_mean, new_var = [], []
    for block in _channel_blocks(x):
        v = x[block]
        xhat[block] = _normalize_block(v, eps)
        new_mean.append(v.mean())
        new_var.append(v.var() * v.size / (v.size - 1))
    if running_mean is not None:
        running_mean = (1 - momentum) * np.asarray(running_mean, dtype=np.float64) + momentum * np.array(new_mean)
        running_var = (1 - momentum) * np.asarray(running_var, dtype=np.float64) + momentum * np.array(new_var)
    return _affine(xhat, weight, bias), running_mean, running_var


def _normalization_backward(grad_out, x, weight, blocks, eps, constant=None):
    """(grad_x, grad_weight, grad_bias) of affine(normalize each block), every gradient computed.

    ``constant``: (mean, var) per channel when the statistics are constants (batch norm in eval).
    """
    grad_out = np.asarray(grad_out, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    shape = _channel_shape(x)
    w = np.ones(shape) if weight is None else np.asarray(weight, dtype=np.float64).reshape(shape)
    g = grad_out * w  # the gradient with respect to xhat
    if constant is None:
        xhat = np.empty_like(x)
        grad_x = np.empty_like(x)
        for block in blocks:
            xhat[block] = _normalize_block(x[block], eps)
            grad_x[block] = _normalize_block_backward(x[block], g[block], eps)
    else:
        mean, var = (np.asarray(a, dtype=np.float64).reshape(shape) for a in constant)
        xhat = (x - mean) / np.sqrt(var + eps)
        grad_x = g / np.sqrt(var + eps)
    axes = (0,) + tuple(range(2, x.ndim))
    return grad_x, (grad_out * xhat).sum(axis=axes), grad_out.sum(axis=axes)


def batch_norm_backward(grad_out, x, running_mean, running_var, weight=None, training=False, eps=1e-5):
    """(grad_x, grad_weight, grad_bias) of ``batch_norm``; in training through the batch statistics."""
    x = np.asarray(x, dtype=np.float64)
    constant = None if training else (running_mean, running_var)
    return _normalization_backward(grad_out, x, weight, _channel_blocks(x), eps, constant)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.group_norm: each group of C / num_groups channels of each sample normalized."""
    x = np.asarray(x, dtype=np.float64)
    xhat = np.empty_like(x)
    for block in _group_blocks(x, num_groups):
        xhat[block] = _normalize_block(x[block], eps)
    return _affine(xhat, weight, bias)


def group_norm_backward(grad_out, x, num_groups, weight=None, eps=1e-5):
    """(grad_x, grad_weight, grad_bias) of ``group_norm``."""
    x = np.asarray(x, dtype=np.float64)
    return _normalization_backward(grad_out, x, weight, _group_blocks(x, num_groups), eps)


def _lrn_window(c, channels, size):
    """The channels whose squares divide channel c: size // 2 before it, (size - 1) // 2 after."""
    return range(max(0, c - size // 2), min(channels, c + (size - 1) // 2 + 1))


def _lrn_divisor(x, size, alpha, k):
    """d[c] = k + alpha / size * sum of x[j] ** 2 over c's window (missing channels count as 0)."""
    d = np.empty_like(x)
    for c in range(x.shape[1]):
        d[:, c] = k + alpha / size * sum(x[:, j] ** 2 for j in _lrn_window(c, x.shape[1], size))
    return d


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """torch.nn.functional.local_response_norm: x / d ** beta."""
    x = np.asarray(x, dtype=np.float64)
    return x / _lrn_divisor(x, size, alpha, k) ** beta


def local_response_norm_backward(grad_out, x, size, alpha=1e-4, beta=0.75, k=1.0):
    """grad_x of ``local_response_norm``: y[c] = x[c] * d[c] ** -beta differentiated term by term."""
    grad_out = np.asarray(grad_out, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    d = _lrn_divisor(x, size, alpha, k)
    grad_x = np.zeros_like(x)
    for c in range(x.shape[1]):
        grad_x[:, c] += grad_out[:, c] * d[:, c] ** -beta  # through x[c] itself
        for j in _lrn_window(c, x.shape[1], size):  # through d[c], which holds x[j] ** 2
            dd_dxj = alpha / size * 2 * x[:, j]
            grad_x[:, j] += grad_out[:, c] * x[:, c] * -beta * d[:, c] ** (-beta - 1) * dd_dxj
    return grad_x
