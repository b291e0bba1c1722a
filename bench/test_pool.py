"""Pooling forward and backward, float32, next to PyTorch: memory-bound ops, reported in GB/s.

GB/s is (bytes read + bytes written) / median time: the input and output of a forward (plus the
int64 indices when max pooling returns them); grad_out, the indices, and grad_x of a backward.
``flops`` counts one operation per window element read (a comparison or an addition). The
numbaconv cases first check their result against PyTorch: no figure comes from a wrong answer.
"""

import functools
import math

import numpy as np
import pytest

import numbaconv

try:
    import torch as _torch
except ImportError:
    _torch = None

# name: (x shape, op, kwargs); torch's own names and arguments
CASES = {
    "maxpool-3x3s2-resnet": ((8, 64, 112, 112), "max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    "avgpool-2x2s2": ((8, 64, 112, 112), "avg_pool2d", dict(kernel_size=2, stride=2)),
    "global-avgpool-resnet": ((8, 512, 7, 7), "adaptive_avg_pool2d", dict(output_size=1)),
}
DIRECTIONS = ("forward", "backward")
IMPLEMENTATIONS = ("numbaconv", "torch")


@functools.lru_cache(maxsize=1)
def _inputs(name):
    shape, op, kw = CASES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    y = getattr(numbaconv, op)(x, **kw)
    grad_out = rng.standard_normal(y.shape, dtype=np.float32)
    indices = numbaconv.max_pool2d(x, return_indices=True, **kw)[1] if op == "max_pool2d" else None
    return x, grad_out, indices


def _traffic(name, direction):
    """(bytes read + written, window elements read) of one call."""
    x, grad_out, indices = _inputs(name)
    shape, op, kw = CASES[name]
    index_bytes = 0 if indices is None else indices.nbytes
    if op == "adaptive_avg_pool2d":
        taps = x.size
    else:
        taps = grad_out.size * math.prod((kw["kernel_size"],) * 2)
    if direction == "forward":
        return x.nbytes + grad_out.nbytes, taps
    return grad_out.nbytes + index_bytes + x.nbytes, taps


def _numbaconv_fn(name, direction):
    shape, op, kw = CASES[name]
    x, grad_out, indices = _inputs(name)
    if direction == "forward":
        return lambda: getattr(numbaconv, op)(x, **kw)
    backward = getattr(numbaconv, f"{op}_backward")
    if indices is not None:  # as an autograd engine would: route by the forward's indices
        return lambda: backward(grad_out, x, indices=indices, **kw)
    return lambda: backward(grad_out, x, **kw)


def _torch_fn(torch, name, direction):
    shape, op, kw = CASES[name]
    x, grad_out, indices = (None if a is None else torch.from_numpy(a) for a in _inputs(name))
    f = getattr(torch.nn.functional, op)
    if direction == "forward":

        def forward():
            with torch.inference_mode():
                return f(x, **kw)

        return forward
    aten = torch.ops.aten
    if op == "max_pool2d":
        k, s, p = ([kw[a]] * 2 for a in ("kernel_size", "stride", "padding"))
        return lambda: aten.max_pool2d_with_indices_backward(grad_out, x, k, s, p, [1, 1], False, indices)
    if op == "avg_pool2d":
        k, s = [kw["kernel_size"]] * 2, [kw["stride"]] * 2
        return lambda: aten.avg_pool2d_backward(grad_out, x, k, s, [0, 0], False, True, None)
    return lambda: aten._adaptive_avg_pool2d_backward(grad_out, x)


def _check_against_torch(name, direction, result):
    if _torch is None:
        return
    expected = _torch_fn(_torch, name, direction)().numpy()
    assert result.shape == expected.shape
    err = float(np.max(np.abs(result - expected)))
    assert err <= 1e-5 * max(1.0, float(np.max(np.abs(expected)))), f"max abs error {err:.3g}"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_pool(benchmark, measure, request, name, direction, impl):
    benchmark.group = f"{name} {direction}"
    nbytes, taps = _traffic(name, direction)
    benchmark.extra_info.update(shape=name, direction=direction, impl=impl, dtype="float32", bytes=nbytes)
    if impl == "torch":
        fn = _torch_fn(request.getfixturevalue("torch"), name, direction)
    else:
        fn = _numbaconv_fn(name, direction)
        _check_against_torch(name, direction, fn())
    measure(fn, taps)
    if not benchmark.disabled:
        benchmark.extra_info["gbps"] = nbytes / benchmark.stats.stats.median / 1e9
