"""conv2d forward and backward (grad input + grad weight), float32, on the shapes of shapes.py.

Each shape x direction is timed for numbaconv's two algorithms and, when installed, PyTorch.
The numbaconv cases first check their result against PyTorch: no figure comes from a wrong answer.
"""

import functools

import numpy as np
import pytest
from shapes import DIRECTIONS, SHAPES, flops

import numbaconv

try:
    import torch as _torch
except ImportError:
    _torch = None

IMPLEMENTATIONS = ("direct", "im2col", "torch")
SLOW_FLOPS = 1e9  # direct backward past this takes seconds a call


def _cases():
    for name, shape in SHAPES.items():
        for direction in DIRECTIONS:
            for impl in IMPLEMENTATIONS:
                slow = impl == "direct" and direction == "backward" and flops(shape) > SLOW_FLOPS
                marks = [pytest.mark.slow] if slow else []
                yield pytest.param(
                    name, direction, impl, id=f"{name}-{direction}-{impl}", marks=marks
                )


@functools.lru_cache(maxsize=1)
def _inputs(name):
    shape = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape.x_shape, dtype=np.float32)
    w = rng.standard_normal(shape.weight_shape, dtype=np.float32)
    grad_out = rng.standard_normal(shape.out_shape, dtype=np.float32)
    return x, w, grad_out


def _numbaconv_fn(name, direction, algorithm):
    shape = SHAPES[name]
    x, w, grad_out = _inputs(name)
    kw = dict(stride=shape.stride, padding=shape.padding, groups=shape.groups, algorithm=algorithm)
    if direction == "forward":
        return lambda: (numbaconv.conv2d(x, w, **kw),)
    return lambda: numbaconv.conv2d_backward(grad_out, x, w, needs=(True, True, False), **kw)[:2]


def _torch_fn(torch, name, direction):
    shape = SHAPES[name]
    x, w, grad_out = (torch.from_numpy(a) for a in _inputs(name))
    stride, padding = [shape.stride] * 2, [shape.padding] * 2
    if direction == "forward":

        def forward():
            with torch.inference_mode():
                return (torch.nn.functional.conv2d(x, w, None, stride, padding, 1, shape.groups),)

        return forward

    def backward():
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out,
            x,
            w,
            None,
            stride,
            padding,
            [1, 1],
            False,
            [0, 0],
            shape.groups,
            [True, True, False],
        )
        return grad_x, grad_w

    return backward


def _check_against_torch(name, direction, results):
    if _torch is None:
        return
    expected = [t.numpy() for t in _torch_fn(_torch, name, direction)()]
    for got, want in zip(results, expected):
        assert got.shape == want.shape
        err = float(np.max(np.abs(got - want)))
        assert err <= 1e-4 * float(np.max(np.abs(want))), f"max abs error {err:.3g}"


@pytest.mark.parametrize("name, direction, impl", list(_cases()))
def test_conv2d(benchmark, measure, request, name, direction, impl):
    benchmark.group = f"{name} {direction}"
    benchmark.extra_info.update(shape=name, direction=direction, impl=impl, dtype="float32")
    if impl == "torch":
        fn = _torch_fn(request.getfixturevalue("torch"), name, direction)
    else:
        fn = _numbaconv_fn(name, direction, impl)
        _check_against_torch(name, direction, fn())
    measure(fn, flops(SHAPES[name], direction))
