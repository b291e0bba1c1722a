"""Shared test helpers: array makers and an honest tolerance.

Tolerance: a float32 result may differ from the float64 reference by 1e-4 of the sum of the
absolute values of the terms that make up each element (the textbook bound for a sum of
products is n * 2**-24 * sum|terms|, and n stays below a few hundred here); float64 by 1e-10 of
the same sum. The sums of absolute terms come from running the same naive reference on |x|,
|w|, |b| and |grad_out|, so each element is checked against its own scale, not the largest one.
"""

import os
import re
import subprocess
import sys

# The CUDA kernels run on Numba's CUDA simulator unless NUMBA_ENABLE_CUDASIM=0 asks for the real
# GPU (tests marked "cuda"); it must be set before numba.cuda is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st

# Under the simulator, every kernel launch is recorded so that test_cuda_compile.py can compile
# each one for a real GPU (the simulator itself types nothing); see cuda_compile.py.
if os.environ["NUMBA_ENABLE_CUDASIM"] not in ("", "0"):
    try:
        import numba.cuda  # noqa: F401
    except ImportError:  # no numba-cuda: the CUDA tests skip, and there is nothing to record
        pass
    else:
        import cuda_compile
        cuda_compile.RECORDER.install()


def pytest_collection_modifyitems(items):
    """Tests marked "last" run after the others, whose launches they check."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)  # stable: the rest keep their order

# CI runs the same examples every time (a failure there reproduces anywhere); local runs explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

def has_tbb():
    """Whether the tbb package (numbaconv's ``tbb`` extra, in the test extras) is installed:
    numbaconv then runs on Numba's TBB layer, whatever was imported first."""
    from importlib import metadata
    try:
        metadata.version("tbb")
    except metadata.PackageNotFoundError:
        return False
    return True


def has_gomp():
    """Whether GNU OpenMP (what Numba's omp layer and PyTorch's CPU build load) is on this machine."""
    import ctypes
    try:
        ctypes.CDLL("libgomp.so.1")
    except OSError:
        return False
    return True


def skip_without_tbb():
    """Skip the calling test where the tbb package is not installed (CI installs it)."""
    if not has_tbb():
        pytest.skip("the tbb package (numbaconv's tbb extra) is not installed")


def skip_without_gomp():
    """Skip the calling test where GNU OpenMP is not on this machine."""
    if not has_gomp():
        pytest.skip("GNU OpenMP (libgomp.so.1) is not on this machine")


#: A line that makes a fresh interpreter act as if TBB were not installed: Numba's TBB layer
#: then fails to import, and the next layer in the order starts.
NO_TBB = 'import sys; sys.modules["numba.np.ufunc.tbbpool"] = None'


RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
DTYPES = (np.float32, np.float64)
LAYOUTS = ("contiguous", "sliced", "fortran", "reversed", "readonly")


def make_array(rng, shape, dtype, layout="contiguous"):
    """Random normal array of ``shape`` and ``dtype``, laid out as asked.

    "sliced": a view with step 2 along the last axis of a larger array (not contiguous at all);
    "fortran": column-major, so neither C-contiguous nor a simple slice;
    "reversed": negative strides along the last axis;
    "readonly": C-contiguous but not writeable.
    """
    shape = tuple(shape)
    if layout == "contiguous":
        return rng.standard_normal(shape).astype(dtype)
    if layout == "sliced":
        big = rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)
        return big[..., ::2]
    if layout == "fortran":
        return np.asfortranarray(rng.standard_normal(shape).astype(dtype))
    if layout == "reversed":
        return rng.standard_normal(shape).astype(dtype)[..., ::-1]
    if layout == "readonly":
        a = rng.standard_normal(shape).astype(dtype)
        a.setflags(write=False)
        return a
    raise ValueError(layout)


def assert_close(got, ref, scale=None, dtype=None, what="result"):
    """``got`` equals float64 ``ref`` within RTOL[dtype] * scale, element by element.

    ``scale`` is the sum of absolute terms of each element (same shape as ``ref``); without it,
    the scale is max(1, max|ref|) for every element. ``dtype`` (default: got's) picks the rtol
    and must be the dtype of ``got``.
    """
    assert isinstance(got, np.ndarray), f"{what}: expected ndarray, got {type(got).__name__}"
    dtype = np.dtype(got.dtype if dtype is None else dtype)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    if scale is None:
        scale = np.full(ref.shape, max(1.0, float(np.max(np.abs(ref), initial=0.0))))
    tol = RTOL[dtype] * np.asarray(scale, dtype=np.float64)
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= tol)  # NaN in got counts as bad
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements off; first at {idx}: "
            f"got {got[idx]!r}, expected {ref[idx]!r}, tolerance {tol[idx]:.3g}; "
            f"max error {np.nanmax(np.where(np.isnan(err), np.inf, err)):.3g}"
        )


def tile_scale(scale, tile=4):
    """The scale of Winograd's results: each element's sum of absolute terms replaced by the
    largest of its ``tile`` x ``tile`` tile of outputs (tiles from the first row and column of
    each plane). The transforms mix a tile's inputs before its outputs are separated again, so
    an output's rounding error follows the magnitudes of its whole tile, not its own terms: in
    float32 an output whose terms are small beside its neighbours' missed 1e-4 of its own sum."""
    scale = np.asarray(scale, dtype=np.float64)
    *lead, h, w = scale.shape
    th, tw = -(-h // tile), -(-w // tile)
    padded = np.zeros((*lead, th * tile, tw * tile))
    padded[..., :h, :w] = scale
    blocks = padded.reshape(*lead, th, tile, tw, tile).max(axis=(-3, -1), keepdims=True)
    return np.broadcast_to(blocks, padded.reshape(*lead, th, tile, tw, tile).shape).reshape(padded.shape)[..., :h, :w]


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def check(got, ref, scale, dtype, what):
    """assert_close, and the result is C-contiguous."""
    assert_close(got, ref, scale, dtype, what)
    assert got.flags.c_contiguous, f"{what} is not C-contiguous"


def snapshot(*arrays):
    """Copies of ``arrays`` (None stays None), for ``assert_unmodified``."""
    return [None if a is None else a.copy() for a in arrays]


def assert_unmodified(arrays, copies):
    for a, c in zip(arrays, copies):
        if a is not None:
            np.testing.assert_array_equal(a, c, err_msg="an input array was modified")


def unmodified(*arrays):
    """A check that ``arrays`` still hold what they hold now."""
    copies = snapshot(*arrays)
    return lambda: assert_unmodified(arrays, copies)


def int_or_tuple(draw, values):
    """For hypothesis: equal values as one int half of the time, to test both spellings."""
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return tuple(values)


# --------------------------------------------------------------------------- finite differences

FD_EPS = 1e-6


def numerical_grad(loss, a, eps=FD_EPS):
    """Central differences of the scalar ``loss()`` with respect to every element of ``a``
    (perturbed in place and restored)."""
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        orig = a[idx]
        a[idx] = orig + eps
        plus = loss()
        a[idx] = orig - eps
        minus = loss()
        a[idx] = orig
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


# --------------------------------------------------------------------------- bad-input batteries


def run_battery(cases):
    """Run every (name, call, exception, match) case; exit 1 unless each raised ValueError or
    TypeError. Runs in the subprocess of ``assert_battery_survives``."""
    failures = []
    for name, call, _, _ in cases:
        try:
            call()
        except (ValueError, TypeError):
            continue
        except Exception as e:  # noqa: BLE001 - anything else is a failure to report
            failures.append(f"{name}: {type(e).__name__}: {e}")
        else:
            failures.append(f"{name}: no exception")
    print(f"{len(cases) - len(failures)} of {len(cases)} cases raised ValueError/TypeError")
    for failure in failures:
        print(failure)
    sys.exit(1 if failures else 0)


def assert_battery_survives(module):
    """Run test module ``module``'s CASES in a fresh interpreter: a crash (segfault, abort) in
    compiled code on any bad input fails the test instead of taking pytest down with it."""
    tests = os.path.dirname(os.path.abspath(__file__))
    script = (f"import sys; sys.path.insert(0, {tests!r}); import conftest, {module}; "
              f"conftest.run_battery({module}.CASES)")
    done = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(tests),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"return code {done.returncode}\n{done.stdout}\n{done.stderr}"
    ran = re.search(r"(\d+) of (\d+) cases raised", done.stdout)
    assert ran and ran.group(1) == ran.group(2) and int(ran.group(1)) > 0, done.stdout
