"""The operators of an inference graph: ONNX's names, attributes and semantics, run by
numbaconv's functional ops and kernels.

Each entry of ``OPS`` is ``(function, attributes)``: the function takes the node's inputs in
order (``None`` for an omitted optional input) and its attributes as keyword arguments, and
returns one array; ``attributes`` maps every attribute the op accepts to its default
(``REQUIRED`` when the model must give it). The ONNX reader checks a node against this table,
so an attribute numbaconv does not know is refused by name rather than ignored. Values that an
op reads from a constant input in one opset and from an attribute in another (Squeeze's axes,
Softmax's axis rule) are normalized by the reader.

Shapes follow ONNX: ``pads`` lists the padding before every spatial dimension, then after it;
``auto_pad`` SAME_UPPER / SAME_LOWER pads so that ``out = ceil(in / stride)``. Where numbaconv's
functional op takes symmetric padding only, an asymmetric one is applied explicitly first.
"""

import functools
import math

import numpy as np

from .. import config
from .. import functional as F
from .._geometry import adaptive_pool_geometry, check_array, conv_geometry, pool_geometry
from ..functional import pool as FP
from ..functional.conv import RULES, choose_algorithm
from ..kernels.cpu import ALL_ALGORITHMS, conv_blocked
from ..kernels.cpu import elementwise
from ..kernels.cpu import gemm as gemms
from ..kernels.cpu._window import IDENTITY

REQUIRED = object()


class OpError(ValueError):
    """A node that cannot run: a bad attribute value, or inputs of the wrong shape."""


def _quiet():
    """NaN and inf propagate silently, as in ONNX Runtime and PyTorch."""
    return np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore")


# --------------------------------------------------------------------------- window geometry


def _spatial(op, x, lo=1, hi=3):
    check_array(op, "X", x)
    n = x.ndim - 2
    if not lo <= n <= hi:
        raise OpError(f"{op}: input must be (N, C, *spatial) with {lo} to {hi} spatial dimensions, got shape {x.shape}")
    return n


def _ints(op, name, value, n, default):
    if value is None:
        return (default,) * n
    if type(value) is tuple and len(value) == n:
        for v in value:  # a loop, not all() over a generator: this runs for every attribute of every call
            if type(v) is not int:
                break
        else:
            return value  # as the graph holds it: the common case
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise OpError(f"{op}: attribute {name} must have {n} values for a {n}-D input, got {list(value)}")
    return value


def _pads(op, auto_pad, pads, size, kernel, strides, dilations):
    """(before, after) per spatial dimension, from ``pads`` or ``auto_pad``."""
    n = len(size)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i, k, s, d in zip(size, kernel, strides, dilations):
            total = max(0, (-(-i // s) - 1) * s + (k - 1) * d + 1 - i)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return tuple(begin), tuple(end)
    if auto_pad == "VALID":
        return (0,) * n, (0,) * n
    if auto_pad != "NOTSET":
        raise OpError(f"{op}: attribute auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {auto_pad!r}")
    pads = _ints(op, "pads", pads, 2 * n, 0)
    if min(pads) < 0:
        raise OpError(f"{op}: attribute pads must be >= 0, got {list(pads)}")
    return pads[:n], pads[n:]


def _pad_explicitly(x, begin, end, value):
    return np.pad(x, [(0, 0), (0, 0), *zip(begin, end)], constant_values=value)


# --------------------------------------------------------------------------- convolution


def _activate(y, epilogue):
    """The kernels' epilogue (kernels/cpu/_window.activate) in NumPy, in place: maximum and
    minimum keep NaN as the kernels do, and cost a microsecond each where np.clip took ten."""
    slope, lo, hi = epilogue
    if slope != 1:
        np.multiply(y, slope, out=y, where=y < 0)
    if lo != -np.inf:
        np.maximum(y, lo, out=y)
    if hi != np.inf:
        np.minimum(y, hi, out=y)
    return y


#: Checked geometries and the forward pass for them (and whether it is the blocked loops, which
#: take a packed weight), by everything the checks read: a served model repeats the same few
#: shapes, and checking them again costs more than a small kernel.
_CONV_PLANS = {}


def _cached(table, key, make):
    """table[key], made by ``make()`` the first time (the table emptied past 4096 entries, a bound
    for processes that see ever new shapes); an unhashable key (an attribute given as a list,
    not as the graph holds it) is made each time, checked and not kept."""
    try:
        found = table.get(key)
    except TypeError:
        return make()
    if found is None:
        found = make()
        if len(table) > 4096:
            table.clear()
        table[key] = found
    return found


def _shape(a):
    """(shape, dtype) of an array, None for anything else (which the checks then refuse)."""
    return (getattr(a, "shape", None), getattr(a, "dtype", None))


def _conv_plan(op, x, w, b, attributes, packable):
    """(geometry, forward pass, whether it is the blocked loops, padding to apply first or
    None), from the cache when x, w, b and the attributes are as before."""
    def make():
        auto_pad, dilations, group, kernel_shape, pads, strides = attributes
        n, kernel, strides_, dilations_ = _conv_attributes(op, x, w, kernel_shape, strides, dilations)
        begin, end = _pads(op, auto_pad, pads, x.shape[2:], kernel, strides_, dilations_)
        explicit, padded = None, x
        if begin != end:  # padded here, then none in the kernels
            explicit, begin = (begin, end), (0,) * n
            padded = _pad_explicitly(x, *explicit, 0)
        geom = conv_geometry(op, padded, w, b, strides_, begin, dilations_, group, "zeros", n)
        blocked = packable and conv_blocked.pays(geom, x.dtype, RULES.blocked_max_positions, RULES.blocked_max_work,
                                                 RULES.blocked_strided_max_channel_taps, RULES.blocked_max_columns)
        return geom, ALL_ALGORITHMS[choose_algorithm(geom, "forward")].forward, blocked, explicit

    return _cached(_CONV_PLANS, (_shape(x), _shape(w), None if b is None else _shape(b), attributes, packable), make)


def _conv_attributes(op, x, w, kernel_shape, strides, dilations):
    """What Conv and ConvTranspose read alike: (spatial dims, kernel, strides, dilations), the
    weight checked against x and against the kernel_shape attribute when it is given."""
    n = _spatial(op, x)
    check_array(op, "W", w, dtype=x.dtype, ndim=n + 2)
    kernel = tuple(w.shape[2:])
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise OpError(f"{op}: attribute kernel_shape {list(kernel_shape)} disagrees with the weight's shape {w.shape}")
    return n, kernel, _ints(op, "strides", strides, n, 1), _ints(op, "dilations", dilations, n, 1)


class ConvWeight:
    """A Conv node's constant weight, in the layouts its calls have asked for: as given, (K, C,
    *kernel), which the algorithms read, and packed (``conv_blocked.pack``), which the blocked
    loops read. A weight that only its node reads (``owned``) is held one way while the calls ask
    for one: packing it lets the original go, so a model served at batch 1 holds ResNet-18's
    14x14 and 7x7 layers once (41 MB of its 45), and a later call that needs the original (a
    larger batch) unpacks it, both kept from then on. Threads that ask at once each make the same
    array; one is kept.

    ``like`` is a stand-in with the weight's shape and dtype and no memory, for the checks.
    ``np.asarray`` gives the original (unpacked if need be)."""

    def __init__(self, array, owned):
        self._array, self._packed, self._owned = array, None, owned
        self.like = np.broadcast_to(np.zeros((), array.dtype), array.shape)

    def array(self):
        a = self._array
        if a is None:
            self._owned = False  # wanted both ways: keep both
            a = self._array = conv_blocked.unpack(self._packed, self.like.shape)
        return a

    def packed(self):
        wp = self._packed
        if wp is None:
            wp = self._packed = conv_blocked.pack(self.array())
            if self._owned:  # set after the packed one, so a reader finds one or the other
                self._array = None
        return wp

    def __array__(self, dtype=None, copy=None):
        a = self.array()
        return a.astype(dtype or a.dtype, copy=bool(copy))

    @property
    def held(self):
        """The layouts held now: a tuple of "as given" and "packed"."""
        return tuple(name for name, a in (("as given", self._array), ("packed", self._packed)) if a is not None)

    def __repr__(self):
        return f"ConvWeight(shape={self.like.shape}, dtype={self.like.dtype}, held {' and '.join(self.held)})"


def conv(x, w, b=None, residual=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None, epilogue=IDENTITY, weight=None, pack=True):
    """Convolution. Set when the graph is optimized: ``residual``, an array added to the output
    (a residual block's shortcut) and ``epilogue`` = (slope, lo, hi), an activation applied after
    it, both inside the kernel's last pass (see kernels/cpu/conv_direct.py). Set when the model
    is planned, for a weight that is the graph's constant: ``weight``, its ``ConvWeight`` (``w``
    is then None where the node owns it), through which the calls that the blocked loops pay for
    read it packed; ``pack=False`` (the load-time check) keeps them to the other algorithms."""
    geom, forward, blocked, explicit = _conv_plan("Conv", x, w if weight is None else weight.like, b,
                                                  (auto_pad, dilations, group, kernel_shape, pads, strides),
                                                  weight is not None and pack)
    if explicit is not None:
        x = _pad_explicitly(x, *explicit, 0)
    out = np.empty((geom.batch, geom.out_channels, *geom.out_size), dtype=x.dtype)
    # the kernels see 5-D arrays: 1-D and 2-D convolutions gain singleton spatial dimensions
    x5 = np.ascontiguousarray(x).reshape(geom.batch, geom.in_channels, *geom.in_size)
    if blocked:
        forward, w5 = functools.partial(_blocked, weight.packed()), None
    else:
        w = w if weight is None else weight.array()
        w5 = np.ascontiguousarray(w).reshape(*w.shape[:2], *geom.kernel)
    shape = (out.shape[0], out.shape[1], *geom.spatial(geom.out_size))
    if residual is not None and residual.shape != shape:  # broadcasting: the Add as written, then the epilogue
        forward(x5, w5, b, out, geom, config.WORKSPACE_BYTES)
        with _quiet():
            return _activate(np.add(out.reshape(shape), residual), epilogue)
    forward(x5, w5, b, out, geom, config.WORKSPACE_BYTES, epilogue, residual)
    return out.reshape(shape)


def _blocked(wp, x5, w5, b, out, geom, workspace, epilogue=IDENTITY, residual=None):
    """The blocked loops with the packed weight, called as the algorithms' forward passes are."""
    conv_blocked.forward(x5, wp, b, out, geom, epilogue, residual)


def conv_transpose(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    """Transposed convolution: numbaconv's with no padding, then the padding cut off each side
    (which is what padding means for a transposed convolution, symmetric or not)."""
    op = "ConvTranspose"
    n, kernel, strides, dilations = _conv_attributes(op, x, w, kernel_shape, strides, dilations)
    extra = _ints(op, "output_padding", output_padding, n, 0)
    full = tuple((i - 1) * s + (k - 1) * d + 1 + e for i, s, k, d, e in zip(x.shape[2:], strides, kernel, dilations, extra))
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = (tuple(i * s for i, s in zip(x.shape[2:], strides)) if output_shape is None
                  else _ints(op, "output_shape", output_shape[-n:], n, 0))
        total = tuple(f - t for f, t in zip(full, target))
        if min(total) < 0:
            raise OpError(f"{op}: attribute output_shape {list(target)} is larger than the full output {list(full)}")
        # ONNX Runtime's split: the larger half first, except for SAME_UPPER
        begin = tuple(t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total)
        end = tuple(t - bg for t, bg in zip(total, begin))
    else:
        begin, end = _pads(op, auto_pad, pads, x.shape[2:], kernel, strides, dilations)
    y = getattr(F, f"conv_transpose{n}d")(x, w, b, strides, 0, extra, group, dilations)
    if any(begin) or any(end):
        if any(bg + e >= f for bg, e, f in zip(begin, end, full)):
            raise OpError(f"{op}: attribute pads {list(begin + end)} remove the whole output {list(full)}")
        y = np.ascontiguousarray(y[(..., *(slice(bg, f - e) for bg, e, f in zip(begin, end, full)))])
    return y


# --------------------------------------------------------------------------- pooling


#: ``_pool_args``' results by x's shape and dtype and the attributes, as ``_CONV_PLANS``.
_POOL_ARGS = {}


def _pool_args(op, x, auto_pad, kernel_shape, pads, strides, dilations=None):
    """(spatial dims, kernel, strides, dilations, padding before, padding after), checked."""
    def make():
        n = _spatial(op, x)
        kernel = _ints(op, "kernel_shape", kernel_shape, n, 1)
        strides_, dilations_ = _ints(op, "strides", strides, n, 1), _ints(op, "dilations", dilations, n, 1)
        return (n, kernel, strides_, dilations_, *_pads(op, auto_pad, pads, x.shape[2:], kernel, strides_, dilations_))

    return _cached(_POOL_ARGS, (op, _shape(x), auto_pad, kernel_shape, pads, strides, dilations), make)


#: Checked pooling geometries by x's shape and dtype and the attributes, as ``_CONV_PLANS``: the
#: functional pooling's checks and geometry took 6 of a 25-us max pooling over LeNet's (1, 6,
#: 28x28), whose kernel takes 10.
_POOL_GEOMETRIES = {}


def _geometry(op, x, make, *key):
    """The pooling geometry ``make()`` builds for x and the attributes ``key``, cached."""
    return _cached(_POOL_GEOMETRIES, (op, _shape(x), *key), make)


def _ceil_crop(y, size, kernel, strides, dilations, begin, end):
    """With ceil_mode, a window that starts in the padding after the input is dropped (ONNX
    Runtime's rule and PyTorch's); padding applied explicitly makes that padding input, so the
    windows past the true output size are cut off again."""
    out = []
    for i, k, s, d, b, e in zip(size, kernel, strides, dilations, begin, end):
        o = -(-(i + b + e - (k - 1) * d - 1) // s) + 1
        out.append(o - 1 if (o - 1) * s >= i + b else o)
    return np.ascontiguousarray(y[(..., *(slice(0, o) for o in out))])


def max_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=REQUIRED, pads=None,
             storage_order=0, strides=None):
    op = "MaxPool"
    n, kernel, strides, dilations, begin, end = _pool_args(op, x, auto_pad, kernel_shape, pads, strides, dilations)
    if begin == end and all(2 * p <= k for p, k in zip(begin, kernel)):
        geom = _geometry(op, x, lambda: pool_geometry(op, x, n, kernel, strides, begin, dilations, bool(ceil_mode)),
                         kernel, strides, begin, dilations, bool(ceil_mode))
        return FP._max(x, geom, False)
    y = getattr(F, f"max_pool{n}d")(_pad_explicitly(x, begin, end, -np.inf), kernel, strides, 0, dilations,
                                    bool(ceil_mode))
    return _ceil_crop(y, x.shape[2:], kernel, strides, dilations, begin, end) if ceil_mode else y


def average_pool(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=REQUIRED,
                 pads=None, strides=None):
    op = "AveragePool"
    n, kernel, strides, dilations, begin, end = _pool_args(op, x, auto_pad, kernel_shape, pads, strides, dilations)
    if dilations != (1,) * n:
        raise OpError(f"{op}: attribute dilations other than 1 is not supported, got {list(dilations)}")
    if begin != end or any(2 * p > k for p, k in zip(begin, kernel)):
        if not count_include_pad:
            raise OpError(f"{op}: asymmetric or large attribute pads {list(begin + end)} need count_include_pad=1")
        y = getattr(F, f"avg_pool{n}d")(_pad_explicitly(x, begin, end, 0), kernel, strides, 0, bool(ceil_mode), True)
        return _ceil_crop(y, x.shape[2:], kernel, strides, dilations, begin, end) if ceil_mode else y
    geom = _geometry(op, x, lambda: pool_geometry(op, x, n, kernel, strides, begin, 1, bool(ceil_mode)),
                     kernel, strides, begin, bool(ceil_mode))
    return FP._avg(x, geom, (bool(count_include_pad), None))


def lp_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=REQUIRED, p=2, pads=None,
            strides=None):
    op = "LpPool"
    n, kernel, strides, dilations, begin, end = _pool_args(op, x, auto_pad, kernel_shape, pads, strides, dilations)
    if dilations != (1,) * n:
        raise OpError(f"{op}: attribute dilations other than 1 is not supported, got {list(dilations)}")
    if any(begin) or any(end):  # zeros add nothing to a sum of |x| ** p
        x = _pad_explicitly(x, begin, end, 0)
    # ONNX sums |x| ** p; numbaconv's (PyTorch's) lp_pool sums x ** p, which differs for odd p
    return getattr(F, f"lp_pool{n}d")(np.abs(x), float(p), kernel, strides, bool(ceil_mode))


def adaptive_avg_pool(x, *, output_size):
    """numbaconv's adaptive average pooling (``compile`` of an AdaptiveAvgPool that is not global)."""
    return getattr(F, f"adaptive_avg_pool{_spatial('AdaptiveAvgPool', x)}d")(x, tuple(output_size))


def adaptive_max_pool(x, *, output_size):
    return getattr(F, f"adaptive_max_pool{_spatial('AdaptiveMaxPool', x)}d")(x, tuple(output_size))


def global_average_pool(x):
    op = "GlobalAveragePool"
    geom = _geometry(op, x, lambda: adaptive_pool_geometry(op, x, _spatial(op, x), 1))
    return FP._avg(x, geom, FP._WINDOW_SIZE)


def global_max_pool(x):
    op = "GlobalMaxPool"
    geom = _geometry(op, x, lambda: adaptive_pool_geometry(op, x, _spatial(op, x), 1))
    return FP._max(x, geom, False)


def _reduce(op, x, axes, keepdims, noop_with_empty_axes, reducer):
    check_array(op, "data", x)
    if axes is None or np.asarray(axes).size == 0:
        if noop_with_empty_axes:
            return x
        axes = range(x.ndim)
    axes = _axes(op, axes, x.ndim)
    if axes == list(range(2, x.ndim)) and keepdims and 1 <= x.ndim - 2 <= 3:  # global pooling: the pool kernels
        return (global_average_pool if reducer is np.mean else global_max_pool)(x)
    with _quiet():
        return np.ascontiguousarray(reducer(x, axis=tuple(axes), keepdims=bool(keepdims)))


def reduce_mean(x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    """Mean over ``axes`` (what PyTorch's dynamo exporter writes for a global average pool)."""
    return _reduce("ReduceMean", x, axes, keepdims, noop_with_empty_axes, np.mean)


def reduce_max(x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    return _reduce("ReduceMax", x, axes, keepdims, noop_with_empty_axes, np.max)


# --------------------------------------------------------------------------- normalization


def batch_normalization(x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    if training_mode:
        raise OpError("BatchNormalization: attribute training_mode=1 is not supported (inference only)")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)


def lrn(x, *, alpha=1e-4, beta=0.75, bias=1.0, size=REQUIRED):
    if size % 2 == 0:  # ONNX centres an even window one place later than PyTorch does
        raise OpError(f"LRN: attribute size must be odd, got {size}")
    return F.local_response_norm(x, size, alpha, beta, bias)


# --------------------------------------------------------------------------- activations


def _elementwise(op, code, x, a=0.0, out=None):
    check_array(op, "X", x)
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, dtype=x.dtype) if out is None else out
    elementwise.forward(code, x.reshape(-1), x.dtype.type(a), out.reshape(-1))
    return out


def relu(x, *, out=None):
    return _elementwise("Relu", elementwise.RELU, x, out=out)


def leaky_relu(x, *, alpha=0.01, out=None):
    return _elementwise("LeakyRelu", elementwise.LEAKY_RELU, x, alpha, out=out)


def elu(x, *, alpha=1.0, out=None):
    return _elementwise("Elu", elementwise.ELU, x, alpha, out=out)


def sigmoid(x, *, out=None):
    return _elementwise("Sigmoid", elementwise.SIGMOID, x, out=out)


def tanh(x, *, out=None):
    return _elementwise("Tanh", elementwise.TANH, x, out=out)


def clip(x, lo=None, hi=None, *, out=None):
    check_array("Clip", "input", x)
    out = np.empty(x.shape, dtype=x.dtype) if out is None else out
    np.copyto(out, x)
    if lo is not None:
        np.maximum(out, x.dtype.type(lo), out=out)
    if hi is not None:
        np.minimum(out, x.dtype.type(hi), out=out)
    return out


def _softmax(op, x, axis, coerce_2d, log):
    check_array(op, "input", x)
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < max(x.ndim, 1):
        raise OpError(f"{op}: attribute axis must be in [{-x.ndim}, {x.ndim - 1}], got {axis}")
    function = F.log_softmax if log else F.softmax
    if coerce_2d:  # opsets before 13: the input seen as (prod(shape[:axis]), prod(shape[axis:]))
        return function(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)
    return function(x, axis)


def softmax(x, *, axis=-1, coerce_2d=0):
    return _softmax("Softmax", x, axis, coerce_2d, False)


def log_softmax(x, *, axis=-1, coerce_2d=0):
    return _softmax("LogSoftmax", x, axis, coerce_2d, True)


# --------------------------------------------------------------------------- linear algebra


def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    """alpha * A' B' + beta * C. The optimizer rewrites a Gemm with constant B and C into a
    ``Linear`` (weight pre-scaled and laid out once)."""
    for name, m in (("A", a), ("B", b)):
        if m.ndim != 2:
            raise OpError(f"Gemm: input {name} must be a matrix, got shape {m.shape}")
    a, b = (a.T if transA else a), (b.T if transB else b)
    if a.shape[1] != b.shape[0]:
        raise OpError(f"Gemm: inner dimensions disagree: A' is {a.shape}, B' is {b.shape}")
    with _quiet():
        y = gemms.matmul(a, b)
        if alpha != 1:
            y *= y.dtype.type(alpha)
        if c is not None:
            y += (c * c.dtype.type(beta)) if beta != 1 else c
    return y


def linear(x, weight, bias=None, *, epilogue=IDENTITY):
    """epilogue(x @ weight.T + bias): numbaconv's linear, what an optimized Gemm runs, with an
    activation fused after it (applied in place: a node less, 5-7 us of a small model's call)."""
    y = F.linear(x, weight, bias)
    return y if epilogue == IDENTITY else _activate(y, epilogue)


def matmul(a, b):
    if a.ndim >= 2 and b.ndim >= 2:
        return gemms.matmul(a, b)
    with _quiet():  # a vector: no GEMM
        return np.matmul(a, b)


def _binary(ufunc):
    def run(a, b, *, out=None):
        with _quiet():
            return ufunc(a, b, out=out)
    run.__name__ = ufunc.__name__
    return run


add, sub, mul = (_binary(u) for u in (np.add, np.subtract, np.multiply))


def div(a, b, *, out=None):
    """a / b; for integers (shape arithmetic) rounded toward zero, as ONNX's Div."""
    a, b = np.asarray(a), np.asarray(b)
    if np.issubdtype(np.result_type(a, b), np.integer):
        q = np.floor_divide(a, b)
        return np.where((q < 0) & (q * b != a), q + 1, q)
    with _quiet():
        return np.true_divide(a, b, out=out)


# --------------------------------------------------------------------------- shapes


def concat(*xs, axis=REQUIRED):
    return np.concatenate(xs, axis=axis)


def flatten(x, *, axis=1):
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis <= x.ndim:
        raise OpError(f"Flatten: attribute axis must be in [{-x.ndim}, {x.ndim}], got {axis}")
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def reshape(x, shape, *, allowzero=0):
    shape = [int(s) for s in np.asarray(shape).reshape(-1)]
    if not allowzero:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    try:
        return x.reshape(shape)
    except ValueError:
        raise OpError(f"Reshape: cannot reshape an input of shape {x.shape} into {shape}") from None


def transpose(x, *, perm=None):
    perm = tuple(reversed(range(x.ndim))) if perm is None else tuple(perm)
    if sorted(perm) != list(range(x.ndim)):
        raise OpError(f"Transpose: attribute perm must be a permutation of the {x.ndim} axes, got {list(perm)}")
    return np.ascontiguousarray(x.transpose(perm))


def _axes(op, axes, ndim):
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    if any(not -ndim <= a < ndim for a in axes):
        raise OpError(f"{op}: axes must be in [{-ndim}, {ndim - 1}], got {axes}")
    return sorted(a % ndim for a in axes)


def squeeze(x, axes=None):
    if axes is None:
        return x.reshape([s for s in x.shape if s != 1])
    axes = _axes("Squeeze", axes, x.ndim)
    if any(x.shape[a] != 1 for a in axes):
        raise OpError(f"Squeeze: axes {axes} of an input of shape {x.shape} are not all of size 1")
    return x.reshape([s for i, s in enumerate(x.shape) if i not in axes])


def unsqueeze(x, axes):
    ndim = x.ndim + np.asarray(axes).size
    axes = _axes("Unsqueeze", axes, ndim)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return x.reshape(shape)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def pad(x, pads, value=None, axes=None, *, mode="constant"):
    if mode not in _PAD_MODES:
        raise OpError(f"Pad: attribute mode must be constant, reflect, edge or wrap, got {mode!r}")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(x.ndim)) if axes is None else _axes("Pad", axes, x.ndim)
    if len(pads) != 2 * len(axes) or min(pads, default=0) < 0:
        raise OpError(f"Pad: pads must be {2 * len(axes)} values >= 0 for {len(axes)} axes, got {pads}")
    widths = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        widths[a] = (pads[i], pads[i + len(axes)])
    if mode != "constant":
        return np.pad(x, widths, mode=_PAD_MODES[mode])
    fill = 0 if value is None or np.asarray(value).size == 0 else np.asarray(value).reshape(-1)[0]
    return np.pad(x, widths, constant_values=fill)


def shape(x, *, start=0, end=None):
    """The input's shape as an int64 vector (``x.view(x.size(0), -1)`` in an exported graph)."""
    return np.array(x.shape[start:end], dtype=np.int64)


def gather(x, indices, *, axis=0):
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < max(x.ndim, 1):
        raise OpError(f"Gather: attribute axis must be in [{-x.ndim}, {x.ndim - 1}], got {axis}")
    indices = np.asarray(indices)
    if not np.issubdtype(indices.dtype, np.integer):
        raise OpError(f"Gather: indices must be integers, got {indices.dtype}")
    try:
        return np.take(x, indices, axis=axis)
    except IndexError as e:
        raise OpError(f"Gather: {e}") from None


#: Cast's ``to``: TensorProto data types numbaconv computes with.
CAST_TYPES = {1: np.float32, 11: np.float64, 7: np.int64, 6: np.int32, 9: np.bool_}


def cast(x, *, to=REQUIRED, saturate=1):
    if to not in CAST_TYPES:
        raise OpError(f"Cast: attribute to={to} is not a data type numbaconv computes with "
                      "(FLOAT, DOUBLE, INT64, INT32, BOOL)")
    return np.asarray(x).astype(CAST_TYPES[to])


def identity(x, *rest):
    """Identity, and Dropout at inference (its ratio and training_mode inputs ignored)."""
    return x


def dropout(x, ratio=None, training_mode=None, *, seed=0):
    if training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0]):
        raise OpError("Dropout: input training_mode=True is not supported (inference only)")
    return x


_POOL = dict(auto_pad="NOTSET", kernel_shape=REQUIRED, pads=None, strides=None)

#: op type: (function, {attribute: default}). Defaults taken from the ONNX operator docs.
OPS = {
    "Conv": (conv, dict(auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None)),
    "ConvTranspose": (conv_transpose, dict(auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                                           output_padding=None, output_shape=None, pads=None, strides=None)),
    "MaxPool": (max_pool, dict(_POOL, ceil_mode=0, dilations=None, storage_order=0)),
    "AveragePool": (average_pool, dict(_POOL, ceil_mode=0, count_include_pad=0, dilations=None)),
    "LpPool": (lp_pool, dict(_POOL, ceil_mode=0, dilations=None, p=2)),
    "GlobalAveragePool": (global_average_pool, {}),
    "GlobalMaxPool": (global_max_pool, {}),
    "ReduceMean": (reduce_mean, dict(keepdims=1, noop_with_empty_axes=0)),
    "ReduceMax": (reduce_max, dict(keepdims=1, noop_with_empty_axes=0)),
    "BatchNormalization": (batch_normalization, dict(epsilon=1e-5, momentum=0.9, training_mode=0)),
    "LRN": (lrn, dict(alpha=1e-4, beta=0.75, bias=1.0, size=REQUIRED)),
    "Relu": (relu, {}),
    "LeakyRelu": (leaky_relu, dict(alpha=0.01)),
    "Elu": (elu, dict(alpha=1.0)),
    "Sigmoid": (sigmoid, {}),
    "Tanh": (tanh, {}),
    "Clip": (clip, {}),
    "Softmax": (softmax, dict(axis=-1)),
    "LogSoftmax": (log_softmax, dict(axis=-1)),
    "Gemm": (gemm, dict(alpha=1.0, beta=1.0, transA=0, transB=0)),
    "MatMul": (matmul, {}),
    "Add": (add, {}),
    "Sub": (sub, {}),
    "Mul": (mul, {}),
    "Div": (div, {}),
    "Concat": (concat, dict(axis=REQUIRED)),
    "Flatten": (flatten, dict(axis=1)),
    "Reshape": (reshape, dict(allowzero=0)),
    "Transpose": (transpose, dict(perm=None)),
    "Squeeze": (squeeze, {}),
    "Unsqueeze": (unsqueeze, {}),
    "Pad": (pad, dict(mode="constant")),
    "Dropout": (dropout, dict(seed=0)),
    "Shape": (shape, dict(start=0, end=None)),
    "Gather": (gather, dict(axis=0)),
    "Cast": (cast, dict(to=REQUIRED, saturate=1)),
    "Identity": (identity, {}),
}

#: Ops the optimizer introduces (not read from files): their attributes are set by numbaconv.
INTERNAL = {
    "Linear": (linear, {}),
    "AdaptiveAvgPool": (adaptive_avg_pool, dict(output_size=REQUIRED)),
    "AdaptiveMaxPool": (adaptive_max_pool, dict(output_size=REQUIRED)),
}

#: Ops that may write their result over their first input when nothing else reads it.
IN_PLACE = {"Relu", "LeakyRelu", "Elu", "Sigmoid", "Tanh", "Clip", "Add", "Sub", "Mul", "Div"}

#: How many inputs each op takes: (least, most); None: any number. (A Conv's fourth, the
#: residual, is the optimizer's; the ONNX reader allows three.)
ARITY = {
    "Conv": (2, 4), "ConvTranspose": (2, 3), "BatchNormalization": (5, 5), "Clip": (1, 3), "Gemm": (2, 3),
    "MatMul": (2, 2), "Add": (2, 2), "Sub": (2, 2), "Mul": (2, 2), "Div": (2, 2), "Concat": (1, None),
    "Reshape": (2, 2), "Squeeze": (1, 2), "Unsqueeze": (2, 2), "Pad": (2, 4), "Dropout": (1, 3), "Linear": (2, 3),
    "ReduceMean": (1, 2), "ReduceMax": (1, 2), "Gather": (2, 2),
}
