"""The kernels' vectorizable ``exp``, ``expm1`` and ``tanh`` (numbaconv.kernels.cpu._math):
accuracy over the whole float32 and float64 range against NumPy, special values as ``math``'s,
the argument's type kept, and (on x86-64) a loop of each compiled to packed vector instructions.

Bounds: relative error <= 2 ulp (2.4e-7) for float32 and 4e-16 for float64 wherever the result
is a normal number; within one smallest subnormal where it is subnormal; inf exactly where the
result overflows and 0 where it rounds to 0. Every check runs twice: compiled plainly and with
the kernels' fastmath flags (reassociation and contraction must not cost accuracy).
``expm1`` and ``tanh``: relative error <= 3 ulp wherever the result is not 0, against long
double where it has more bits than float64.
"""

import math
import platform
import re

import numpy as np
import pytest
from numba import njit

from numbaconv.kernels.cpu._math import exp, expm1, tanh
from numbaconv.kernels.cpu._window import FASTMATH, U

RTOL = {np.dtype(np.float32): 2.4e-7, np.dtype(np.float64): 4e-16}
SWEEP = {np.dtype(np.float32): (-110.0, 90.0), np.dtype(np.float64): (-750.0, 710.0)}
FLAGS = {"plain": False, "fastmath": FASTMATH}


def make_apply(fastmath, f=exp):
    # NumPy's error model, as the kernels have (``_window.parallel_kernel``): with Python's,
    # tanh's division checks for zero, and that branch keeps the loop scalar
    @njit(fastmath=fastmath, error_model="numpy")
    def apply(x, out):
        for i in range(x.size):
            out[U(i)] = f(x[U(i)])
    return apply


APPLY = {name: make_apply(flags) for name, flags in FLAGS.items()}


def run(flags, x):
    out = np.empty_like(x)
    APPLY[flags](x, out)
    return out


def special_values(dtype):
    info = np.finfo(dtype)
    top = math.log(float(info.max))
    bottom = math.log(float(info.smallest_subnormal))
    near = [np.nextafter(dtype(v), dtype(d)) for v in (top, bottom) for d in (-np.inf, np.inf)]
    return np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, info.tiny, -info.tiny,
                     info.smallest_subnormal, info.eps, -info.eps, info.max, -info.max, top, bottom,
                     math.log(float(info.tiny)), *near, 0.5 * math.log(2), -0.5 * math.log(2)], dtype)


def reference(x):
    """exp of x in float64 (float32 x) or long double (float64 x, where it has more bits)."""
    wide = np.longdouble if np.finfo(np.longdouble).nmant > 52 and x.dtype == np.float64 else np.float64
    with np.errstate(over="ignore", under="ignore"):
        return np.exp(x.astype(wide))


def check_exp(got, x):
    dtype = x.dtype
    info = np.finfo(dtype)
    ref = reference(x)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        rounded = ref.astype(dtype)
    assert got.dtype == dtype
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all(), "exp(NaN) must be NaN"
    got, ref, rounded, x = got[~nan], ref[~nan], rounded[~nan], x[~nan]
    over = np.isinf(rounded)
    assert (got[over] == np.inf).all(), f"no overflow to inf at x = {x[over & (got != np.inf)][:5]}"
    zero = rounded == 0
    assert (got[zero] == 0).all(), f"no underflow to 0 at x = {x[zero & (got != 0)][:5]}"
    normal = ~over & (rounded >= info.tiny)
    rel = np.abs((got[normal] - ref[normal]) / ref[normal])
    worst = int(np.argmax(rel))
    assert rel[worst] <= RTOL[dtype], f"relative error {float(rel[worst]):.3g} at x = {x[normal][worst]!r}"
    sub = ~over & ~zero & ~normal
    err = np.abs(got[sub] - ref[sub])
    assert (err <= info.smallest_subnormal).all(), f"subnormal error {err.max() / info.smallest_subnormal} units"
    return float(rel.max())


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_sweep_and_random_points(flags, dtype):
    lo, hi = SWEEP[np.dtype(dtype)]
    rng = np.random.default_rng(7)
    x = np.concatenate([np.linspace(lo, hi, 1_000_001), rng.uniform(lo, hi, 500_000),
                        rng.uniform(-1, 1, 200_000), rng.standard_normal(200_000) * 1e-4]).astype(dtype)
    check_exp(run(flags, x), x)


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values_as_math_exp(flags, dtype):
    x = special_values(dtype)
    got = run(flags, x)
    check_exp(got, x)
    for v, g in zip(x, got):
        if np.isnan(v):
            assert np.isnan(g), f"exp({v!r}) = {g!r}, expected NaN"
        elif v == np.inf or v > 800:
            assert g == np.inf, f"exp({v!r}) = {g!r}, expected inf"
        elif v == -np.inf or v < -800:
            assert g == 0, f"exp({v!r}) = {g!r}, expected 0"
        elif v == 0:
            assert g == 1, f"exp({v!r}) = {g!r}, expected 1"


def test_keeps_the_argument_type():
    scalar = njit(lambda v: exp(v))
    scalar(np.float32(1.0))
    scalar(1.0)
    kinds = {str(sig.args[0]): str(sig.return_type) for sig in scalar.nopython_signatures}
    assert kinds == {"float32": "float32", "float64": "float64"}


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 instruction names")
@pytest.mark.parametrize("f", [exp, expm1, tanh], ids=["exp", "expm1", "tanh"])
@pytest.mark.parametrize("dtype, packed", [(np.float32, "ps"), (np.float64, "pd")])
def test_a_loop_of_it_is_vectorized(dtype, packed, f):
    apply = make_apply(FASTMATH, f)
    x = np.zeros(4, dtype)
    apply(x, np.empty_like(x))
    asm = next(iter(apply.inspect_asm().values()))
    assert not re.search(r"call\w*\s+\S*(exp|tanh)", asm), "a library call in the loop"
    assert re.search(rf"^\s+v?mul{packed}\s", asm, re.M), "no packed multiplication in the loop"


# --------------------------------------------------------------------------- expm1 and tanh

ULPS = 3
RELATED = {"expm1": (expm1, np.expm1, math.expm1), "tanh": (tanh, np.tanh, math.tanh)}
APPLY_RELATED = {(name, flags): make_apply(FASTMATH if flags == "fastmath" else False, f)
                 for name, (f, _, _) in RELATED.items() for flags in FLAGS}


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("name", RELATED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_expm1_and_tanh_within_a_few_ulp(flags, name, dtype):
    """Dense over the ranges where the result moves, random points, and tiny arguments, where
    both are about x and a formula through exp(x) - 1 would lose every digit."""
    rng = np.random.default_rng(11)
    lo, hi = (-20.0, 20.0) if name == "tanh" else (-30.0, SWEEP[np.dtype(dtype)][1] - 1)
    x = np.concatenate([np.linspace(lo, hi, 1_000_001), rng.uniform(-1, 1, 300_000),
                        rng.standard_normal(100_000) * 1e-6, np.geomspace(1e-30, 1.0, 10_000),
                        -np.geomspace(1e-30, 1.0, 10_000)]).astype(dtype)
    got = np.empty_like(x)
    APPLY_RELATED[name, flags](x, got)
    _, numpy_f, _ = RELATED[name]
    wide = np.longdouble if np.finfo(np.longdouble).nmant > 52 and x.dtype == np.float64 else np.float64
    with np.errstate(over="ignore"):
        ref = numpy_f(x.astype(wide))
        finite = np.isfinite(ref.astype(dtype)) & (ref != 0)
    rel = np.abs((got[finite] - ref[finite]) / ref[finite])
    worst = int(np.argmax(rel))
    assert rel[worst] <= ULPS * np.finfo(dtype).eps, f"{name}: {rel[worst] / np.finfo(dtype).eps:.2f} ulp at x = {x[finite][worst]!r}"


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("name", RELATED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_expm1_and_tanh_special_values_as_math(flags, name, dtype):
    """NaN, the infinities, signed zeros and the ends of the range as ``math``'s, sign of zero
    included (tanh and expm1 keep -0)."""
    x = special_values(dtype)
    got = np.empty_like(x)
    APPLY_RELATED[name, flags](x, got)
    _, _, math_f = RELATED[name]
    for v, g in zip(x, got):
        try:
            want = math_f(float(v))
        except OverflowError:
            want = math.inf
        if math.isnan(want):
            assert np.isnan(g), f"{name}({v!r}) = {g!r}, expected NaN"
        elif math.isinf(want) or abs(want) > float(np.finfo(dtype).max):
            assert np.isinf(g) and np.sign(g) == np.sign(want), f"{name}({v!r}) = {g!r}, expected {want}"
        else:
            assert g == pytest.approx(want, rel=float(ULPS * np.finfo(dtype).eps),
                                      abs=float(np.finfo(dtype).smallest_subnormal)), \
                f"{name}({v!r}) = {g!r}, expected {want!r}"
            if want == 0:
                assert np.signbit(g) == np.signbit(v), f"{name}({v!r}) = {g!r}: the sign of zero"
