"""Small real datasets for examples and notebooks, from packages already on disk (no downloads).

``digits`` wraps scikit-learn's bundled handwritten digits (the ``examples`` extra brings
scikit-learn): 1,797 real 8x8 greyscale images of the digits 0-9, scanned from 43 writers.
"""

import numpy as np


def _sklearn_datasets(what):
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError(f"{what} needs scikit-learn: pip install 'numbaconv[examples]'") from None
    return datasets


def digits(size=32, test_fraction=0.2, seed=0, dtype=np.float32):
    """scikit-learn's handwritten digits as (N, 1, size, size) images in [0, 1], split in two.

    size: a multiple of 8; each 8x8 pixel becomes a (size/8)^2 block, so LeNet-5 gets the 32x32
    input it was designed for. The split is stratified (each digit in both parts in the same
    proportion) and fixed by ``seed``. Returns (X_train, y_train, X_test, y_test), labels int64.
    """
    if not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"digits: size must be a multiple of 8, got {size!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"digits: test_fraction must be in (0, 1), got {test_fraction!r}")
    data = _sklearn_datasets("digits").load_digits()
    images = (data.images / 16.0).astype(dtype)  # pixel values are counts 0..16
    scale = size // 8
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)[:, None]
    labels = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        test[members[: round(test_fraction * len(members))]] = True
    return images[~test], labels[~test], images[test], labels[test]


def with_shifts(X, y, pixels):
    """X, y plus four copies of X moved up, down, left and right by ``pixels`` (zero-filled).

    The simplest augmentation: a digit written a little off-centre is the same digit, and
    showing the network so makes it generalize (on ``digits``, held-out accuracy goes from about
    97% to about 99%). X: (N, C, H, W). Returns (5N, C, H, W) and (5N,), new arrays.
    """
    if not isinstance(pixels, int) or not 0 < pixels < min(X.shape[-2:]):
        raise ValueError(f"with_shifts: pixels must be an int in [1, {min(X.shape[-2:]) - 1}], got {pixels!r}")
    copies = [X]
    for axis, step in ((2, pixels), (2, -pixels), (3, pixels), (3, -pixels)):
        moved = np.zeros_like(X)
        source = [slice(None)] * 4
        target = [slice(None)] * 4
        source[axis] = slice(0, -step) if step > 0 else slice(-step, None)
        target[axis] = slice(step, None) if step > 0 else slice(0, step)
        moved[tuple(target)] = X[tuple(source)]
        copies.append(moved)
    return np.concatenate(copies), np.tile(y, 5)
