"""Shared test helpers: array makers and an honest tolerance.

Tolerance: a float32 result may differ from the float64 reference by 1e-4 of the sum of the
absolute values of the terms that make up each element (the textbook bound for a sum of
products is n * 2**-24 * sum|terms|, and n stays below a few hundred here); float64 by 1e-10 of
the same sum. The sums of absolute terms come from running the same naive reference on |x|,
|w|, |b| and |grad_out|, so each element is checked against its own scale, not the largest one.
"""

import numpy as np
import pytest

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


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)
