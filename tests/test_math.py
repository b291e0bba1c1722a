"""The kernels' vectorizable ``exp`` (numbaconv.kernels.cpu._math): accuracy over the whole
float32 and float64 range against NumPy, special values as ``math.exp``, the argument's type
kept, and (on x86-64) a loop of it compiled to packed vector instructions.

Bounds: relative error <= 2 ulp (2.4e-7) for float32 and 4e-16 for float64 wherever the result
is a normal number; within one smallest subnormal where it is subnormal; inf exactly where the
result overflows and 0 where it rounds to 0. Every check runs twice: compiled plainly and with
the kernels' fastmath flags (reassociation and contraction must not cost accuracy).
"""

import math
import platform
import re

import numpy as np
import pytest
from numba import njit

from numbaconv.kernels.cpu._math import exp
from numbaconv.kernels.cpu._window import FASTMATH, U

RTOL = {np.dtype(np.float32): 2.4e-7, np.dtype(np.float64): 4e-16}
SWEEP = {np.dtype(np.float32): (-110.0, 90.0), np.dtype(np.float64): (-750.0, 710.0)}
FLAGS = {"plain": False, "fastmath": FASTMATH}


def make_apply(fastmath):
    @njit(fastmath=fastmath)
    def apply(x, out):
        for i in range(x.size):
            out[U(i)] = exp(x[U(i)])
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
@pytest.mark.parametrize("dtype, packed", [(np.float32, "ps"), (np.float64, "pd")])
def test_a_loop_of_exp_is_vectorized(dtype, packed):
    apply = make_apply(FASTMATH)
    x = np.zeros(4, dtype)
    apply(x, np.empty_like(x))
    asm = next(iter(apply.inspect_asm().values()))
    assert not re.search(r"call\w*\s+\S*exp", asm), "exp is a library call"
    assert re.search(rf"^\s+v?mul{packed}\s", asm, re.M), "no packed multiplication in the loop"
