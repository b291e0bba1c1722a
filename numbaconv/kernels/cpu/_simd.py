"""Explicit SIMD vectors for kernels whose sums must stay in registers.

LLVM vectorizes a loop only along its innermost index, and a sum it cannot keep in a register
across an outer loop goes through memory: the stride-1 direct loops (``conv_direct``) loaded
and stored their rows of sums once per six taps, and ran at 58-76 GFLOP/s on LeNet's c2 at
batch 64 and 138-175 on 64-channel layers, on two cores whose GEMM peak is about 205; with
their sums in registers, 111-118 and 152-204. With a vector type whose values are SSA values, a kernel names its
accumulators (twelve vectors: four output channels by three vectors of positions) and LLVM
keeps them in registers while every tap is added to them, one load of the input per vector and
per tap for four fused multiply-adds.

``Vec`` is a Numba type whose data model is an LLVM vector (``<16 x float>`` with AVX-512).
Kernels use it through these operations, each typed on its arguments when the caller is
compiled:

- ``vload(a, i)``: the vector a[i : i + lanes(a)] of a 1-D C-contiguous array (unaligned);
- ``vload_first(a, i, n)``: a[i : i + n] in the first n lanes (0 <= n <= lanes), zeros in the
  others, reading no element past a[i + n - 1] (a masked load);
- ``vstore(a, i, v)``: a[i : i + lanes] = v;
- ``vsplat(x)``: a float32 or float64 scalar in every lane;
- ``vfma(a, b, c)``: a * b + c per lane, fused where the CPU has FMA (``llvm.fmuladd``);
- ``vsum(v)``: the sum of v's lanes, as a scalar (pairwise: lane halves added until one is left);
- ``vcast(v, like)``: v's lanes converted to the float type of ``like`` (a float scalar, or
  an array of floats), the lanes kept: float32 to float64 is exact, float64 to float32 rounds
  to nearest, as a scalar conversion does;
- ``vactivate(v, slope, lo, hi)``: ``_window.activate`` per lane (a kernel's epilogue);
- ``vstream(a, i, v)``: ``vstore`` past the caches (a non-temporal store), a[i] aligned to the
  vector's size (``stream_start(a, min_bytes)`` gives the first such index, from
  ``data_address(a)``), the stores ordered by ``store_fence()``;
- ``+``, ``-``, ``*``, ``<=``, ``>`` and ``where(mask, x, y)`` per lane, a scalar operand
  broadcast, so that one formula serves a scalar and a vector;

and ``lanes(a)``, the lanes of a vector of a's dtype, a compile-time constant. As with any
array access in Numba, nothing checks bounds: callers keep i + lanes within the array.

The width is the host's widest vector register (``VECTOR_BYTES``): 64 bytes with AVX-512, 32
with AVX, else 16. Numba's cache keys compiled code on the CPU's name and features, so code
cached for one width never runs on a machine of another.
"""

import operator
import platform

from llvmlite import binding, ir
from numba import config, types
from numba.extending import intrinsic, models, overload, register_model


def _vector_bytes():
    """The widest vector register Numba compiles for: the host's, or ``NUMBA_CPU_FEATURES``', or
    16 bytes where ``NUMBA_CPU_NAME`` names another CPU without its features (a portable cache)."""
    if config.CPU_FEATURES:
        flags = {f[1:] for f in config.CPU_FEATURES.split(",") if f.startswith("+")}
    elif config.CPU_NAME and config.CPU_NAME != "host":
        flags = set()
    else:
        flags = {name for name, on in binding.get_host_cpu_features().items() if on}
    return 64 if "avx512f" in flags else 32 if "avx" in flags else 16


#: Bytes a vector: 16 float32 lanes (8 float64) with AVX-512, 8 (4) with AVX, else 4 (2).
VECTOR_BYTES = _vector_bytes()


class Vec(types.Type):
    """A SIMD vector of ``lanes`` elements of the float type ``dtype``: a register's worth unless
    given (``vcast`` of a float32 vector to float64 keeps its lanes, two registers' worth)."""

    def __init__(self, dtype, lanes=None):
        self.dtype, self.lanes = dtype, lanes or VECTOR_BYTES * 8 // dtype.bitwidth
        super().__init__(name=f"Vec({dtype} x {self.lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _is_float_array(a):
    return isinstance(a, types.Array) and a.ndim == 1 and isinstance(a.dtype, types.Float)


def _address(context, builder, array_type, array, index, vector):
    """A pointer to ``vector``-typed data at array[index]."""
    data = context.make_array(array_type)(context, builder, array).data
    element = builder.gep(data, [context.cast(builder, index, types.intp, types.intp)])
    return builder.bitcast(element, vector.as_pointer())


@intrinsic
def vload(typingctx, a, i):
    if not (_is_float_array(a) and isinstance(i, types.Integer)):
        return None
    vec = Vec(a.dtype)

    def codegen(context, builder, sig, args):
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        pointer = _address(context, builder, sig.args[0], args[0], index, context.get_value_type(vec))
        return builder.load(pointer, align=a.dtype.bitwidth // 8)
    return vec(a, i), codegen


@intrinsic
def vload_first(typingctx, a, i, n):
    if not (_is_float_array(a) and isinstance(i, types.Integer) and isinstance(n, types.Integer)):
        return None
    vec = Vec(a.dtype)

    def codegen(context, builder, sig, args):
        vector = context.get_value_type(vec)
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        pointer = _address(context, builder, sig.args[0], args[0], index, vector)
        count = context.cast(builder, args[2], sig.args[2], types.int32)
        lane = ir.VectorType(ir.IntType(32), vec.lanes)
        counts = builder.shuffle_vector(builder.insert_element(ir.Constant(lane, ir.Undefined), count, ir.Constant(ir.IntType(32), 0)),
                                        ir.Constant(lane, ir.Undefined), ir.Constant(lane, [0] * vec.lanes))
        mask = builder.icmp_signed("<", ir.Constant(lane, list(range(vec.lanes))), counts)
        fnty = ir.FunctionType(vector, [pointer.type, ir.IntType(32), mask.type, vector])
        name = f"llvm.masked.load.v{vec.lanes}{vector.element.intrinsic_name}.p0"
        fn = builder.module.globals.get(name) or ir.Function(builder.module, fnty, name)
        return builder.call(fn, [pointer, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8), mask, ir.Constant(vector, None)])
    return vec(a, i, n), codegen


def _vector_store(streaming):
    """``vstore``, or with ``streaming`` ``vstream``: the same store, aligned to the vector's
    size and marked non-temporal."""
    @intrinsic
    def store(typingctx, a, i, v):
        if not (_is_float_array(a) and isinstance(i, types.Integer) and v == Vec(a.dtype)):
            return None

        def codegen(context, builder, sig, args):
            index = context.cast(builder, args[1], sig.args[1], types.intp)
            pointer = _address(context, builder, sig.args[0], args[0], index, context.get_value_type(v))
            instruction = builder.store(args[2], pointer, align=VECTOR_BYTES if streaming else a.dtype.bitwidth // 8)
            if streaming:
                instruction.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
            return context.get_dummy_value()
        return types.none(a, i, v), codegen
    return store


vstore, vstream = _vector_store(False), _vector_store(True)


#: x86 orders non-temporal stores by its store fence (SFENCE) alone.
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def store_fence(typingctx):
    """Orders the ``vstream`` stores before it ahead of every store after it (SFENCE on x86,
    elsewhere a full fence)."""
    def codegen(context, builder, sig, args):
        if _X86:
            name = "llvm.x86.sse.sfence"
            fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                                 name)
            builder.call(fn, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def data_address(typingctx, a):
    """The address of a 1-D float array's first element, an integer (to align ``vstream``)."""
    if not _is_float_array(a):
        return None

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(context.make_array(sig.args[0])(context, builder, args[0]).data, ir.IntType(64))
    return types.int64(a), codegen


#: The outputs of at least this many bytes, more than a 2-core host's share of the last-level
#: cache, that kernels write past the caches (``vstream``): a cached store first reads the line it
#: writes from memory, a stream of traffic beside those read and the one written. Measured,
#: relu's backward over (8, 64, 112x112) float32 (25.7 MB an array), 2-core AVX2, medians taking
#: turns: 2.37 and 2.01 ms against 3.29 and 2.31 with cached stores; PyTorch 3.43 and 2.61.
#: Smaller outputs stay in the cache, where the next op reads them.
STREAM_MIN_BYTES = 1 << 23


def stream_start(out):
    """The first index of the 1-D float array ``out`` aligned for ``vstream`` (modulo its lanes),
    or -1 where it is not to be streamed: under ``STREAM_MIN_BYTES``, or its data not aligned
    to its item size. Implemented by the overload below (inside kernels only)."""
    raise NotImplementedError


@overload(stream_start, inline="always")
def _stream_start_overload(out):
    if not _is_float_array(out):
        return None
    size, n = out.dtype.bitwidth // 8, Vec(out.dtype).lanes

    def start(out):
        address = data_address(out)
        if out.size * size < STREAM_MIN_BYTES or address % size != 0:
            return -1
        return (-(address // size)) % n
    return start


@intrinsic
def vcast(typingctx, v, like):
    if not isinstance(v, Vec):
        return None
    dtype = like.dtype if isinstance(like, types.Array) else like
    if not isinstance(dtype, types.Float):
        return None
    to = Vec(dtype, v.lanes)

    def codegen(context, builder, sig, args):
        target = context.get_value_type(to)
        if dtype.bitwidth > v.dtype.bitwidth:
            return builder.fpext(args[0], target)
        if dtype.bitwidth < v.dtype.bitwidth:
            return builder.fptrunc(args[0], target)
        return args[0]
    return to(v, like), codegen


@intrinsic
def vsplat(typingctx, x):
    if not isinstance(x, types.Float):
        return None
    vec = Vec(x)

    def codegen(context, builder, sig, args):
        vector = context.get_value_type(vec)
        first = builder.insert_element(ir.Constant(vector, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), vec.lanes), [0] * vec.lanes)
        return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined), zeros)
    return vec(x), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    if not (isinstance(a, Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        vector = args[0].type
        name = f"llvm.fmuladd.v{vector.count}{vector.element.intrinsic_name}"
        return builder.call(_declare(builder.module, name, vector), args)
    return a(a, b, c), codegen


@intrinsic
def vactivate(typingctx, v, slope, lo, hi):
    """``_window.activate`` per lane: clip(leaky(v), lo, hi) with compares and selects, NaN kept
    (an ordered comparison with NaN is false) as in the scalar one."""
    if not (isinstance(v, Vec) and slope == lo == hi == v.dtype):
        return None

    def codegen(context, builder, sig, args):
        vector = context.get_value_type(v)
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), v.lanes), [0] * v.lanes)

        def splat(x):
            first = builder.insert_element(ir.Constant(vector, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined), zeros)

        x, slope_, lo_, hi_ = args[0], splat(args[1]), splat(args[2]), splat(args[3])
        x = builder.select(builder.fcmp_ordered("<", x, ir.Constant(vector, None)), builder.fmul(x, slope_), x)
        x = builder.select(builder.fcmp_ordered("<", x, lo_), lo_, x)
        return builder.select(builder.fcmp_ordered(">", x, hi_), hi_, x)
    return v(v, slope, lo, hi), codegen


@intrinsic
def vsum(typingctx, v):
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        vector, n = args[0], v.lanes
        while n > 1:  # the upper half of the lanes onto the lower: log2(lanes) vector adds
            n //= 2
            lower = builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n))))
            upper = builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n, 2 * n))))
            vector = builder.fadd(lower, upper)
        return builder.extract_element(vector, ir.Constant(ir.IntType(32), 0))
    return v.dtype(v), codegen


# --------------------------------------------------------------------------- arithmetic
# ``+``, ``-``, ``*``, ``<=``, ``>`` and ``where`` on vectors, a scalar of the vectors' dtype
# broadcast, so that a formula written once serves single elements and whole vectors alike
# (kernels/cpu/elementwise.py). The products and differences may contract into fused
# multiply-adds, as the kernels' scalar code (``_window.FASTMATH``) does.


class Mask(types.Type):
    """A vector of ``lanes`` booleans: a comparison of vectors, for ``where``."""

    def __init__(self, lanes):
        self.lanes = lanes
        super().__init__(name=f"Mask({lanes})")


@register_model(Mask)
class _MaskModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.IntType(1), fe_type.lanes))


def where(c, a, b):
    """a where c, else b: for a bool, ``a if c else b``; lane by lane for a ``Mask`` (a scalar
    a or b broadcast)."""
    return a if c else b


def _vector_operands(a, b):
    """The vector type of an operation on a and b (two vectors of one type, or a vector and a
    scalar of its dtype), else None."""
    vec = a if isinstance(a, Vec) else b if isinstance(b, Vec) else None
    if vec is not None and all(x == vec or x == vec.dtype for x in (a, b)):
        return vec
    return None


def _vector_binary(make):
    """An intrinsic of two vectors, or of a vector and a scalar broadcast, ``make(builder, x, y)``."""
    @intrinsic
    def op(typingctx, a, b):
        vec = _vector_operands(a, b)
        if vec is None:
            return None

        def codegen(context, builder, sig, args):
            x, y = (_splat(builder, v, vec.lanes) if t != vec else v for t, v in zip(sig.args, args))
            return make(builder, x, y)
        return (Mask(vec.lanes) if make in _COMPARISONS else vec)(a, b), codegen
    return op


def _splat(builder, x, lanes):
    vector = ir.VectorType(x.type, lanes)
    first = builder.insert_element(ir.Constant(vector, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def _contracting(instruction):
    instruction.flags.append("contract")
    return instruction


def _add(builder, x, y): return _contracting(builder.fadd(x, y))  # noqa: E704
def _sub(builder, x, y): return _contracting(builder.fsub(x, y))  # noqa: E704
def _mul(builder, x, y): return _contracting(builder.fmul(x, y))  # noqa: E704
def _le(builder, x, y): return builder.fcmp_ordered("<=", x, y)  # noqa: E704  (false for NaN)
def _gt(builder, x, y): return builder.fcmp_ordered(">", x, y)  # noqa: E704


_COMPARISONS = (_le, _gt)

for _operator, _make in ((operator.add, _add), (operator.sub, _sub), (operator.mul, _mul), (operator.le, _le),
                         (operator.gt, _gt)):
    def _register(fn=_vector_binary(_make), op=_operator):
        @overload(op)
        def _vector_operator(a, b):
            if _vector_operands(a, b) is not None:
                return lambda a, b: fn(a, b)
            return None
    _register()


@intrinsic
def _select(typingctx, c, a, b):
    vec = _vector_operands(a, b)
    if not (isinstance(c, Mask) and vec is not None and c.lanes == vec.lanes):
        return None

    def codegen(context, builder, sig, args):
        x, y = (_splat(builder, v, vec.lanes) if t != vec else v for t, v in zip(sig.args[1:], args[1:]))
        return builder.select(args[0], x, y)
    return vec(c, a, b), codegen


@overload(where)
def _where_overload(c, a, b):
    if isinstance(c, types.Boolean):
        return lambda c, a, b: a if c else b
    if isinstance(c, Mask):
        return lambda c, a, b: _select(c, a, b)
    return None


def _declare(module, name, vector):
    """The LLVM intrinsic ``name`` of three vectors to one, declared once per module."""
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, ir.FunctionType(vector, [vector] * 3), name)


def lanes(a):
    """The lanes of a vector of ``a``'s dtype (a compile-time constant inside kernels)."""
    return VECTOR_BYTES // a.dtype.itemsize


@overload(lanes, inline="always")
def _lanes_overload(a):
    if isinstance(a, types.Array) and isinstance(a.dtype, types.Float):
        n = Vec(a.dtype).lanes
        return lambda a: n
    return None
