"""batch_norm, float32, next to PyTorch: a memory-bound op, reported in GB/s.

Cases: training forward (batch statistics, running-statistics update, normalization), training
backward (grad_x, grad_weight, grad_bias through the batch statistics) and eval forward, on a
ResNet stem activation (8, 64, 112, 112).

GB/s is the least traffic a call needs, (bytes read + bytes written) / median time: x and the
output of a forward; grad_out, x and grad_x of a backward (the per-channel vectors are
negligible). ``flops`` counts the arithmetic per element: 5 for a training forward (sum; deviation
and its square for the variance; subtract and multiply-add to normalize), 2 for eval, 7 for the
backward (sum of grad_out, multiply-add of grad_out * (x - mean); then 4 for grad_x).
numbaconv's backward computes the batch statistics again from x (its API takes no saved
statistics), one more read of x than PyTorch's, which reuses those its forward saved.
The numbaconv cases first check their result against PyTorch: no figure comes from a wrong answer.
"""

import functools

import numpy as np
import pytest

import numbaconv

try:
    import torch as _torch
except ImportError:
    _torch = None

SHAPE = (8, 64, 112, 112)
EPS, MOMENTUM = 1e-5, 0.1
# direction: (arrays of x's size moved, flops per element)
DIRECTIONS = {"train-forward": (2, 5), "train-backward": (3, 7), "eval-forward": (2, 2)}
IMPLEMENTATIONS = ("numbaconv", "torch")


@functools.lru_cache(maxsize=1)
def _inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32) * 2 + 1
    grad_out = rng.standard_normal(SHAPE, dtype=np.float32)
    C = SHAPE[1]
    weight = rng.standard_normal(C, dtype=np.float32)
    bias = rng.standard_normal(C, dtype=np.float32)
    running_var = rng.random(C, dtype=np.float32) + 0.5
    return x, grad_out, weight, bias, rng.standard_normal(C, dtype=np.float32), running_var


def _numbaconv_fn(direction):
    x, grad_out, weight, bias, running_mean, running_var = _inputs()
    rm, rv = running_mean.copy(), running_var.copy()  # updated in place by every training call
    if direction == "train-forward":
        return lambda: (numbaconv.batch_norm(x, rm, rv, weight, bias, True, MOMENTUM, EPS),)
    if direction == "eval-forward":
        return lambda: (numbaconv.batch_norm(x, running_mean, running_var, weight, bias, False, MOMENTUM, EPS),)
    return lambda: numbaconv.batch_norm_backward(grad_out, x, None, None, weight, bias, True, EPS)


def _torch_fn(torch, direction):
    x, grad_out, weight, bias, running_mean, running_var = (torch.from_numpy(a) for a in _inputs())
    rm, rv = running_mean.clone(), running_var.clone()
    aten = torch.ops.aten
    if direction == "train-forward":

        def forward():
            with torch.inference_mode():
                return (torch.nn.functional.batch_norm(x, rm, rv, weight, bias, True, MOMENTUM, EPS),)

        return forward
    if direction == "eval-forward":

        def evaluate():
            with torch.inference_mode():
                return (torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, False, MOMENTUM,
                                                       EPS),)

        return evaluate
    # as autograd runs it: the backward reuses the mean and invstd the forward saved
    _, save_mean, save_invstd = aten.native_batch_norm(x, weight, bias, None, None, True, MOMENTUM, EPS)
    return lambda: aten.native_batch_norm_backward(grad_out, x, weight, None, None, save_mean, save_invstd,
                                                   True, EPS, [True, True, True])


def _check_against_torch(direction, results):
    if _torch is None:
        return
    expected = [t.numpy() for t in _torch_fn(_torch, direction)()]
    for got, want in zip(results, expected):
        assert got.shape == want.shape
        err = float(np.max(np.abs(got - want)))
        # grad_weight and grad_bias sum 10**5 float32 terms per channel in PyTorch
        assert err <= 1e-4 * max(1.0, float(np.max(np.abs(want)))), f"max abs error {err:.3g}"


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_batch_norm(benchmark, measure, request, direction, impl):
    name = "batchnorm-" + "x".join(map(str, SHAPE))
    benchmark.group = f"{name} {direction}"
    arrays, per_element = DIRECTIONS[direction]
    nbytes = arrays * np.prod(SHAPE) * np.dtype(np.float32).itemsize
    benchmark.extra_info.update(shape=name, direction=direction, impl=impl, dtype="float32", bytes=int(nbytes))
    if impl == "torch":
        fn = _torch_fn(request.getfixturevalue("torch"), direction)
    else:
        fn = _numbaconv_fn(direction)
        _check_against_torch(direction, fn())
    measure(fn, int(per_element * np.prod(SHAPE)))
    if not benchmark.disabled:
        benchmark.extra_info["gbps"] = nbytes / benchmark.stats.stats.median / 1e9
