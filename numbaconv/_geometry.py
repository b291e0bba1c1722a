"""Argument checks and convolution geometry: every rule about shapes is written here, once.

A call is described by one immutable :class:`ConvGeometry`, in 3-D: a 1-D or 2-D call is a 3-D
call with leading singleton spatial dimensions, so the kernels exist once. Every error message
names the operation, the argument, what was expected and what was given.
"""

import functools
import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from ._device import is_device_array

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class ConvGeometry:
    """One convolution, seen by the kernels.

    ``in_size`` is the spatial size the kernel reads (after any non-zero ``padding_mode`` padding
    has been applied explicitly), ``padding`` the implicit zero padding before each dimension
    (the padding after is implied by ``out_size``). For a transposed convolution this describes
    the equivalent forward convolution, whose input is the transposed convolution's output.
    """

    ndim: int
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple
    kernel: tuple
    stride: tuple
    dilation: tuple
    padding: tuple
    out_size: tuple
    mode_padding: tuple = ((0, 0),) * 3  # explicit (before, after) per dim for padding_mode
    padding_mode: str = "zeros"

    def spatial(self, size):
        """The last ``ndim`` entries of a 3-D size: what the user sees."""
        return tuple(size[3 - self.ndim:])

    @property
    def flops(self):
        """Multiply-adds x 2 of the forward convolution."""
        taps = math.prod(self.kernel)
        return 2 * self.batch * self.out_channels * (self.in_channels // self.groups) * taps * math.prod(self.out_size)


def check_array(op, name, a, dtype=None, ndim=None):
    """A float32/float64 ndarray or GPU array (of ``dtype`` and ``ndim`` when given), else
    TypeError/ValueError. Which device runs the op is ``_device.placement``'s to say."""
    if not (isinstance(a, np.ndarray) or is_device_array(a)):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray (or a GPU array), got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must have dtype float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{op}: {name} has dtype {a.dtype} but x has dtype {dtype}; all arrays must share one dtype")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got {a.ndim} (shape {a.shape})")
    return a


def int_tuple(op, name, value, ndim, minimum):
    """An int or a length-``ndim`` sequence of ints, each >= ``minimum``, as a tuple."""
    items = (value,) * ndim if isinstance(value, Integral) else value
    if not isinstance(items, (tuple, list)) or len(items) != ndim or not all(
        isinstance(v, Integral) and not isinstance(v, bool) for v in items
    ) or isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int or a tuple of {ndim} ints, got {value!r}")
    items = tuple(int(v) for v in items)
    if min(items) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum} in every dimension, got {value!r}")
    return items


def check_choice(op, name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _as3(values, ndim, fill):
    return (fill,) * (3 - ndim) + tuple(values)


def _check_operands(op, x, weight, bias, ndim):
    check_array(op, "x", x, ndim=ndim + 2)
    check_array(op, "weight", weight, dtype=x.dtype, ndim=ndim + 2)
    if bias is not None:
        check_array(op, "bias", bias, dtype=x.dtype)
    if min(weight.shape) < 1:
        raise ValueError(f"{op}: weight must have no empty dimension, got shape {weight.shape}")
    if min(x.shape[1:]) < 1:
        raise ValueError(f"{op}: x must have at least one channel and non-empty spatial dimensions, got shape {x.shape}")


def _check_groups(op, groups, **counts):
    if not isinstance(groups, Integral) or isinstance(groups, bool):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    for what, count in counts.items():
        if count % groups:
            raise ValueError(f"{op}: groups={groups} must divide the number of {what.replace('_', ' ')}, got {count}")
    return int(groups)


def _check_bias(op, bias_shape, channels):
    if bias_shape is not None and tuple(bias_shape) != (channels,):
        raise ValueError(f"{op}: bias must have shape ({channels},), got {tuple(bias_shape)}")


def _memoized(compute, *args):
    """``compute(*args)``, from its cache (``functools.lru_cache(typed=True)``) when every
    argument is plain: None, an int, a str or a bool, or a tuple of ints, Nones and such tuples.
    Every call of a layer has the same geometry, and building it (checking each argument,
    working out the sizes) took about 13 us of a 45-us LeNet conv2d at batch 1. ``typed`` keeps
    a bool argument apart from the int it equals; inside tuples only exact ints are taken, for
    the same reason. Anything else (lists, NumPy integers) is computed afresh, so the checks and
    their errors are the same either way; errors are never cached."""
    for a in args:
        if not _plain(a, True):
            return compute.__wrapped__(*args)
    return compute(*args)


_PLAIN_TOP = (int, str, bool)


def _plain(v, top):
    """What ``_memoized`` takes from its cache: None, an int, a str or a bool (``top``), or a
    tuple of ints, Nones and such tuples. Plain loops: this runs on every call of every op."""
    t = type(v)
    if t is tuple:
        for e in v:
            if type(e) is not int and e is not None and not (type(e) is tuple and _plain(e, False)):
                return False
        return True
    return v is None or (t in _PLAIN_TOP if top else t is int)


def conv_geometry(op, x, weight, bias, stride, padding, dilation, groups, padding_mode, ndim):
    """Check a forward convolution's arguments and return its geometry."""
    _check_operands(op, x, weight, bias, ndim)
    return _memoized(_conv_geometry, op, x.shape, weight.shape, None if bias is None else bias.shape, stride,
                     padding, dilation, groups, padding_mode, ndim)


@functools.lru_cache(maxsize=1024, typed=True)
def _conv_geometry(op, x_shape, weight_shape, bias_shape, stride, padding, dilation, groups, padding_mode, ndim):
    N, C = x_shape[:2]
    K = weight_shape[0]
    groups = _check_groups(op, groups, input_channels=C, output_channels=K)
    if weight_shape[1] * groups != C:
        raise ValueError(
            f"{op}: x has {C} channels but weight expects weight.shape[1] * groups = "
            f"{weight_shape[1]} * {groups} = {weight_shape[1] * groups}"
        )
    _check_bias(op, bias_shape, K)
    stride = int_tuple(op, "stride", stride, ndim, 1)
    dilation = int_tuple(op, "dilation", dilation, ndim, 1)
    padding_mode = check_choice(op, "padding_mode", padding_mode, PADDING_MODES)
    kernel = tuple(weight_shape[2:])
    size = tuple(x_shape[2:])
    span = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))  # extent of the dilated kernel
    if isinstance(padding, str):
        check_choice(op, "padding", padding, ("valid", "same"))
        if padding == "same" and max(stride) > 1:
            raise ValueError(f"{op}: padding='same' requires stride 1, got stride={stride}")
        # PyTorch puts the odd extra pad of an even-sized kernel after the data
        pads = tuple(((s - 1) // 2, s - 1 - (s - 1) // 2) if padding == "same" else (0, 0) for s in span)
    else:
        pads = tuple((p, p) for p in int_tuple(op, "padding", padding, ndim, 0))
    for dim, (n, (before, after), s) in enumerate(zip(size, pads, span)):
        if n + before + after < s:
            raise ValueError(
                f"{op}: the dilated kernel (size {s} in spatial dim {dim}) is larger than the padded input "
                f"(size {n} + {before + after} padding); weight shape {weight_shape}, x shape {x_shape}"
            )
        if padding_mode == "reflect" and max(before, after) >= n:
            raise ValueError(f"{op}: padding_mode='reflect' needs padding < input size, got padding {max(before, after)} for size {n} in spatial dim {dim}")
        if padding_mode == "circular" and max(before, after) > n:
            raise ValueError(f"{op}: padding_mode='circular' needs padding <= input size, got padding {max(before, after)} for size {n} in spatial dim {dim}")
    out = tuple((n + b + a - s) // st + 1 for n, (b, a), s, st in zip(size, pads, span, stride))
    explicit = padding_mode != "zeros"
    return ConvGeometry(
        ndim=ndim, batch=N, in_channels=C, out_channels=K, groups=groups,
        in_size=_as3((n + b + a for n, (b, a) in zip(size, pads)) if explicit else size, ndim, 1),
        kernel=_as3(kernel, ndim, 1), stride=_as3(stride, ndim, 1), dilation=_as3(dilation, ndim, 1),
        padding=_as3((0 if explicit else b for b, _ in pads), ndim, 0), out_size=_as3(out, ndim, 1),
        mode_padding=_as3(pads if explicit else ((0, 0),) * ndim, ndim, (0, 0)), padding_mode=padding_mode,
    )


def conv_transpose_geometry(op, x, weight, bias, stride, padding, output_padding, groups, dilation, ndim):
    """Check a transposed convolution's arguments; return the geometry of the equivalent conv.

    ``conv_transpose(x, w)`` is the input gradient of ``conv(y, w)`` where y has the transposed
    convolution's output size, so its geometry is that convolution's with x as the output.
    """
    _check_operands(op, x, weight, bias, ndim)
    return _memoized(_conv_transpose_geometry, op, x.shape, weight.shape, None if bias is None else bias.shape,
                     stride, padding, output_padding, groups, dilation, ndim)


@functools.lru_cache(maxsize=1024, typed=True)
def _conv_transpose_geometry(op, x_shape, weight_shape, bias_shape, stride, padding, output_padding, groups, dilation,
                             ndim):
    N, C = x_shape[:2]
    groups = _check_groups(op, groups, input_channels=C)
    if weight_shape[0] != C:
        raise ValueError(f"{op}: x has {C} channels but weight.shape[0] is {weight_shape[0]}; they must match")
    K = weight_shape[1] * groups
    _check_bias(op, bias_shape, K)
    stride = int_tuple(op, "stride", stride, ndim, 1)
    dilation = int_tuple(op, "dilation", dilation, ndim, 1)
    padding = int_tuple(op, "padding", padding, ndim, 0)
    output_padding = int_tuple(op, "output_padding", output_padding, ndim, 0)
    for op_, s, d in zip(output_padding, stride, dilation):
        if op_ >= max(s, d):
            raise ValueError(f"{op}: output_padding must be smaller than stride or dilation, got output_padding={output_padding}, stride={stride}, dilation={dilation}")
    kernel = tuple(weight_shape[2:])
    size = tuple(x_shape[2:])
    out = tuple((n - 1) * s - 2 * p + d * (k - 1) + o + 1
                for n, s, p, d, k, o in zip(size, stride, padding, dilation, kernel, output_padding))
    if min(out) < 1:
        raise ValueError(f"{op}: the output size {out} would be empty; reduce padding {padding} or check x shape {x_shape}")
    return ConvGeometry(
        ndim=ndim, batch=N, in_channels=K, out_channels=C, groups=groups, in_size=_as3(out, ndim, 1),
        kernel=_as3(kernel, ndim, 1), stride=_as3(stride, ndim, 1), dilation=_as3(dilation, ndim, 1),
        padding=_as3(padding, ndim, 0), out_size=_as3(size, ndim, 1),
    )


def check_grad_out(op, grad_out, shape, dtype):
    check_array(op, "grad_out", grad_out, dtype=dtype)
    if grad_out.shape != shape:
        raise ValueError(f"{op}: grad_out must have the output's shape {shape}, got {grad_out.shape}")


def check_needs(op, needs):
    if not (isinstance(needs, (tuple, list)) and len(needs) == 3 and all(isinstance(v, (bool, np.bool_)) for v in needs)):
        raise TypeError(f"{op}: needs must be a tuple of 3 bools (grad_x, grad_weight, grad_bias), got {needs!r}")
    return tuple(bool(v) for v in needs)


# --------------------------------------------------------------------------- pooling


@dataclass(frozen=True)
class PoolGeometry:
    """One pooling call, seen by the kernels: a window per output position, separable per dimension.

    Every pooling op (max, average, adaptive) reads, along each of the three (padded to 3-D)
    spatial dimensions, ``count[dim][o]`` input positions starting at ``first[dim][o]``,
    ``step[dim]`` apart, for output position ``o``: the window with the padding already cut
    away. ``span[dim][o]`` is the window's length counting padding (average pooling's
    ``count_include_pad`` divisor); ``kernel`` is the kernel size (None for adaptive pooling).
    """

    ndim: int
    batch: int
    channels: int
    in_size: tuple
    out_size: tuple
    first: tuple
    count: tuple
    step: tuple
    span: tuple
    kernel: tuple = None

    def spatial(self, size):
        """The last ``ndim`` entries of a 3-D size: what the user sees."""
        return tuple(size[3 - self.ndim:])

    @property
    def out_shape(self):
        return (self.batch, self.channels, *self.spatial(self.out_size))

    def _memo(self, key, make):
        """``make()``, computed once per geometry (geometries are cached and shared by the calls
        with the same sizes); kept in the instance's ``__dict__`` (as ``functools.cached_property``
        does), outside the frozen fields, so equality and hashing are untouched."""
        memo = self.__dict__.setdefault("_memoized", {})
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def windows(self):
        """(first, count) as (3, max(out_size)) int64 tables, row ``dim`` for that dimension.

        Built once per geometry and read-only: calls with the same sizes share them.
        """
        return self._memo("windows", lambda: (_table(self.first, np.int64), _table(self.count, np.int64)))

    def divisors(self, count_include_pad=False, divisor_override=None):
        """(3, max(out_size)) float64 factors: an output's divisor is the product of its three
        (built once, read-only, as ``windows``)."""
        def make():
            if divisor_override is not None:
                return _table(((1,) * self.out_size[0], (1,) * self.out_size[1], (divisor_override,) * self.out_size[2]))
            return _table(self.span if count_include_pad else self.count)

        return self._memo(("divisors", count_include_pad, divisor_override), make)

    def coalesced(self):
        """The same pooling, for the kernels, with fully read trailing dimensions merged.

        When every window reads a whole row of the last dimension (one output along it, stride 1),
        the last two dimensions are one contiguous dimension: (D, H, W) becomes (1, D, H * W),
        and again (1, 1, D * H * W) if H is then read whole too. Global pooling then reads one
        contiguous run per plane instead of short rows. Flat positions in the plane, the order
        windows are scanned in (max pooling's ties) and each output's divisor (the product of
        its factors, exact integers) are unchanged, so the result is the same.
        """
        return self._memo("coalesced", lambda: _coalesce(self))

    def nonempty(self):
        """(OD, OH, OW) bool: the windows that read at least one input position."""
        c = [np.asarray(row) > 0 for row in self.count]
        return c[0][:, None, None] & c[1][None, :, None] & c[2][None, None, :]


def _table(rows, dtype=np.float64):
    """Per-dimension rows as one read-only (3, longest row) table, zero-filled."""
    table = np.zeros((3, max(map(len, rows))), dtype=dtype)
    for dim, row in enumerate(rows):
        table[dim, :len(row)] = row
    table.flags.writeable = False
    return table


def _mergeable(geom):
    """Whether the last dimension is read whole by every window, and joins the one before it
    into a single run of positions ``step`` apart (see ``PoolGeometry.coalesced``)."""
    W = geom.in_size[2]
    return (geom.in_size[:2] != (1, 1) and geom.out_size[2] == 1 and geom.first[2] == (0,)
            and geom.count[2] == (W,) and (W == 1 or (geom.step[2] == 1
                                                      and (geom.step[1] == 1 or max(geom.count[1]) <= 1))))


def _coalesce(geom):
    for _ in range(2):
        if not _mergeable(geom):
            break
        W = geom.in_size[2]
        geom = PoolGeometry(
            ndim=3, batch=geom.batch, channels=geom.channels,
            in_size=(1, geom.in_size[0], geom.in_size[1] * W), out_size=(1, geom.out_size[0], geom.out_size[1]),
            first=((0,), geom.first[0], tuple(f * W for f in geom.first[1])),
            count=((1,), geom.count[0], tuple(c * W for c in geom.count[1])),
            step=(1, geom.step[0], geom.step[1] if W == 1 else 1),
            span=((1,), geom.span[0], tuple(s * geom.span[2][0] for s in geom.span[1])),
        )
    return geom


def check_bool(op, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")
    return bool(value)


def check_pool_input(op, x, ndim):
    """x is a batched (N, C, *spatial) float array with channels and non-empty spatial dims."""
    check_array(op, "x", x)
    if x.ndim != ndim + 2:
        names = ("L", "H, W", "D, H, W")[ndim - 1]
        raise ValueError(
            f"{op}: x must have {ndim + 2} dimensions (N, C, {names}); unbatched (C, {names}) input is not "
            f"accepted (add a batch axis: x[None]), got {x.ndim} dimensions (shape {x.shape})"
        )
    if min(x.shape[1:]) < 1:
        raise ValueError(f"{op}: x must have at least one channel and non-empty spatial dimensions, got shape {x.shape}")
    return x


def pool_output_size(n, k, s, p, d, ceil_mode):
    """PyTorch's pooling output length: with ceil_mode the last window must start inside the
    input or the left padding."""
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _sliding_windows(n, k, s, p, d, o):
    """(first, count, span) of the ``o`` windows along one dimension of length ``n`` (kernel
    ``k``, stride ``s``, padding ``p``, dilation ``d``)."""
    starts = [i * s - p for i in range(o)]
    skip = [-(-max(0, -a) // d) for a in starts]  # taps in the left padding
    first = tuple(a + t * d for a, t in zip(starts, skip))
    count = tuple(max(0, min(k - 1, (n - 1 - a) // d) - t + 1) for a, t in zip(starts, skip))
    span = tuple(min(a + k, n + p) - a for a in starts)  # PyTorch's avg divisor with padding
    return first, count, span


def _adaptive_windows(n, o):
    """(first, count) of the ``o`` adaptive windows along one dimension of length ``n``."""
    first = tuple(i * n // o for i in range(o))
    return first, tuple(-(-(i + 1) * n // o) - f for i, f in enumerate(first))


def pool_geometry(op, x, ndim, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Check a sliding-window pooling's arguments (max, avg, lp) and return its geometry.

    stride None means kernel_size; padding may be at most half the kernel size (as in PyTorch,
    the undilated kernel size, also for dilated max pooling).
    """
    check_pool_input(op, x, ndim)
    return _memoized(_pool_geometry, op, x.shape, ndim, kernel_size, stride, padding, dilation, ceil_mode)


@functools.lru_cache(maxsize=1024, typed=True)
def _pool_geometry(op, x_shape, ndim, kernel_size, stride, padding, dilation, ceil_mode):
    kernel = int_tuple(op, "kernel_size", kernel_size, ndim, 1)
    stride = kernel if stride is None else int_tuple(op, "stride", stride, ndim, 1)
    padding = int_tuple(op, "padding", padding, ndim, 0)
    dilation = int_tuple(op, "dilation", dilation, ndim, 1)
    ceil_mode = check_bool(op, "ceil_mode", ceil_mode)
    size = tuple(x_shape[2:])
    for dim, (k, p) in enumerate(zip(kernel, padding)):
        if p > k // 2:
            raise ValueError(
                f"{op}: padding must be at most half the kernel size, got padding {padding} for kernel_size {kernel} "
                f"(spatial dim {dim})"
            )
    out = tuple(pool_output_size(n, k, s, p, d, ceil_mode) for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))
    for dim, (n, k, p, d, o) in enumerate(zip(size, kernel, padding, dilation, out)):
        if o < 1:
            raise ValueError(
                f"{op}: kernel_size {kernel} (dilated extent {d * (k - 1) + 1} in spatial dim {dim}) is larger than the "
                f"padded input (size {n} + {2 * p} padding); x shape {x_shape}"
            )
    return _sliding_geometry(ndim, x_shape[0], x_shape[1], size, kernel, stride, padding, dilation, out)


@functools.lru_cache(maxsize=256)
def _sliding_geometry(ndim, batch, channels, size, kernel, stride, padding, dilation, out):
    """The geometry of checked sliding-window arguments: a pure function of the sizes, cached
    (a training loop pools the same shapes at every step)."""
    first, count, span = zip(*map(_sliding_windows, size, kernel, stride, padding, dilation, out))
    return PoolGeometry(
        ndim=ndim, batch=batch, channels=channels, in_size=_as3(size, ndim, 1), out_size=_as3(out, ndim, 1),
        first=_as3(first, ndim, (0,)), count=_as3(count, ndim, (1,)), step=_as3(dilation, ndim, 1),
        span=_as3(span, ndim, (1,)), kernel=_as3(kernel, ndim, 1),
    )


def adaptive_pool_geometry(op, x, ndim, output_size):
    """Check an adaptive pooling's arguments and return its geometry: output position i of a
    length-L dimension reads [floor(i * L / out), ceil((i + 1) * L / out)); None keeps L."""
    check_pool_input(op, x, ndim)
    return _memoized(_adaptive_pool_geometry, op, x.shape, ndim, output_size)


@functools.lru_cache(maxsize=1024, typed=True)
def _adaptive_pool_geometry(op, x_shape, ndim, output_size):
    size = tuple(x_shape[2:])
    single = output_size is None or type(output_size) is int or isinstance(output_size, Integral)
    items = (output_size,) * ndim if single else output_size
    if not isinstance(items, (tuple, list)) or len(items) != ndim or isinstance(output_size, bool) or not all(
        v is None or type(v) is int or (isinstance(v, Integral) and not isinstance(v, bool)) for v in items
    ):
        raise TypeError(f"{op}: output_size must be an int or a tuple of {ndim} ints or None, got {output_size!r}")
    out = tuple(n if v is None else int(v) for n, v in zip(size, items))
    if min(out) < 1:
        raise ValueError(f"{op}: output_size must be >= 1 in every dimension, got {output_size!r}")
    return _adaptive_geometry(ndim, x_shape[0], x_shape[1], size, out)


@functools.lru_cache(maxsize=256)
def _adaptive_geometry(ndim, batch, channels, size, out):
    """The geometry of checked adaptive pooling arguments, cached as ``_sliding_geometry``."""
    first, count = zip(*map(_adaptive_windows, size, out))
    return PoolGeometry(
        ndim=ndim, batch=batch, channels=channels, in_size=_as3(size, ndim, 1), out_size=_as3(out, ndim, 1),
        first=_as3(first, ndim, (0,)), count=_as3(count, ndim, (1,)), step=(1, 1, 1), span=_as3(count, ndim, (1,)),
    )


def check_divisor_override(op, divisor_override):
    if divisor_override is None:
        return None
    if not isinstance(divisor_override, Integral) or isinstance(divisor_override, bool):
        raise TypeError(f"{op}: divisor_override must be an int or None, got {divisor_override!r}")
    if divisor_override == 0:
        raise ValueError(f"{op}: divisor_override must be non-zero, got 0")
    return int(divisor_override)


def check_norm_type(op, norm_type):
    if not isinstance(norm_type, (Integral, float, np.floating)) or isinstance(norm_type, bool):
        raise TypeError(f"{op}: norm_type must be a number, got {norm_type!r}")
    if not norm_type > 0:
        raise ValueError(f"{op}: norm_type must be > 0 (inf for max pooling of |x|), got {norm_type!r}")
    return float(norm_type)
