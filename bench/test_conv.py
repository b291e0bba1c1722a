"""Convolution forward and backward (grad input + grad weight), float32, on the shapes of
``numbaconv.benchmark.shapes``: every suite (LeNet, AlexNet, VGG-16, ResNet-18, depthwise,
pointwise, conv1d, conv3d, at batch 1 and a larger batch).

Each shape x direction is timed for numbaconv's algorithms ("direct", "im2col", and "auto", what
a user gets) and, when installed, PyTorch. The calls are those of ``numbaconv bench``
(``numbaconv.benchmark.runner``). The numbaconv cases first check their result against
PyTorch: no figure comes from a wrong answer. Select with -k, e.g. ``-k "depthwise and b8"``.
"""

import functools

import pytest
from shapes import DIRECTIONS, SHAPES, SUITES

from numbaconv.benchmark import runner

IMPLEMENTATIONS = ("direct", "im2col", "auto", "torch")
SLOW_FLOPS = 1e9  # direct backward past this takes seconds a call


def _cases():
    for name in SUITES["all"]:
        for direction in DIRECTIONS:
            for impl in IMPLEMENTATIONS:
                slow = impl == "direct" and direction == "backward" and SHAPES[name].flops() > SLOW_FLOPS
                marks = [pytest.mark.slow] if slow else []
                yield pytest.param(name, direction, impl, id=f"{name}-{direction}-{impl}", marks=marks)


@functools.lru_cache(maxsize=1)
def _inputs(name):
    return runner._inputs(SHAPES[name])


def _check_against_torch(name, direction, results):
    torch = runner.torch_or_none()
    if torch is None:
        return
    arrays = tuple(torch.from_numpy(a) for a in _inputs(name))
    expected = [t.numpy() for t in runner.torch_call(torch, SHAPES[name], direction, arrays)()]
    err = runner._max_error(results, expected)
    assert err <= runner.RTOL, f"max error {err:.3g} of the largest magnitude"


@pytest.mark.parametrize("name, direction, impl", list(_cases()))
def test_conv(benchmark, measure, request, name, direction, impl):
    shape = SHAPES[name]
    benchmark.group = f"{name} {direction}"
    benchmark.extra_info.update(shape=name, direction=direction, impl=impl, dtype="float32")
    if impl == "torch":
        torch = request.getfixturevalue("torch")
        fn = runner.torch_call(torch, shape, direction, tuple(torch.from_numpy(a) for a in _inputs(name)))
    else:
        fn = runner.numbaconv_call(shape, direction, impl, _inputs(name))
        _check_against_torch(name, direction, fn())
    measure(fn, shape.flops(direction))
