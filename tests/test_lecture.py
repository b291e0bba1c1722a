"""The lecture's worked examples of convolution, as exact checks."""

import numpy as np
import pytest

import naive
import numbaconv
from conftest import DTYPES, assert_close

ALGORITHMS = ("direct", "im2col", "auto")

IMAGE = [[1, 1, 1, 0, 0],
         [0, 1, 1, 1, 0],
         [0, 0, 1, 1, 1],
         [0, 0, 1, 1, 0],
         [0, 1, 1, 0, 0]]
FILTER = [[1, 0, 1],
          [0, 1, 0],
          [1, 0, 1]]
FEATURE_MAP = [[4, 3, 4],
               [2, 4, 3],
               [2, 3, 4]]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_image_feature_map(dtype, algorithm):
    x = np.array(IMAGE, dtype)[None, None]
    w = np.array(FILTER, dtype)[None, None]
    y = numbaconv.conv2d(x, w, algorithm=algorithm)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.array(FEATURE_MAP, dtype)[None, None])  # small integers: exact


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("stride, size", [(1, 5), (2, 3), (3, 2)])
def test_output_size_is_input_minus_filter_over_stride_plus_one(stride, size, algorithm):
    # (N - F) / stride + 1 with N = 7, F = 3: 5 at stride 1, 3 at stride 2; stride 3 does not
    # fit evenly and, as in PyTorch, the last partial window is dropped: floor(4 / 3) + 1 = 2
    x = np.random.default_rng(0).standard_normal((1, 1, 7, 7))
    w = np.random.default_rng(1).standard_normal((1, 1, 3, 3))
    y = numbaconv.conv2d(x, w, stride=stride, algorithm=algorithm)
    assert y.shape == (1, 1, size, size)
    assert_close(y, naive.conv(x, w, stride=stride))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("f", [3, 5, 7])
def test_zero_padding_of_half_the_filter_preserves_size(f, algorithm):
    x = np.random.default_rng(f).standard_normal((2, 3, 9, 8))
    w = np.random.default_rng(f + 1).standard_normal((4, 3, f, f))
    y = numbaconv.conv2d(x, w, padding=(f - 1) // 2, algorithm=algorithm)
    assert y.shape == (2, 4, 9, 8)
    assert_close(y, naive.conv(x, w, padding=(f - 1) // 2))
    # for an odd filter, "same" is exactly this padding
    assert_close(numbaconv.conv2d(x, w, padding="same", algorithm=algorithm), naive.conv(x, w, padding=(f - 1) // 2))
