"""relu, leaky relu, elu, sigmoid, tanh and softmax(dim=1), forward and backward, float32, next
to PyTorch.

Element-wise ops are bound by memory traffic, so the figure is GB/s: the bytes each call must
read and write (forward: x in, y out; backward: grad_out and x or y in, grad_x out) over the
median time, in ``extra_info["gbps"]``. The numbaconv cases first check their result against
PyTorch: no figure comes from a wrong answer. Extra info carries ``op`` (not ``shape``), so
bench/report.py's conv2d table leaves these cases out.
"""

import functools

import numpy as np
import pytest

import numbaconv

try:
    import torch as _torch
except ImportError:
    _torch = None

SHAPES = {"relu": (8, 64, 112, 112), "leaky_relu": (8, 64, 112, 112), "elu": (8, 64, 112, 112),
          "sigmoid": (8, 64, 112, 112), "tanh": (8, 64, 112, 112), "softmax": (64, 1000)}
#: Ops whose backward reads the forward's input x (the others read its output y).
READS_X = {"relu", "leaky_relu", "elu"}
DIRECTIONS = ("forward", "backward")
IMPLEMENTATIONS = ("numbaconv", "torch")


@functools.lru_cache(maxsize=1)
def _inputs(op):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPES[op], dtype=np.float32)
    grad_out = rng.standard_normal(SHAPES[op], dtype=np.float32)
    return x, grad_out, _numbaconv_forward(op)(x)


def _numbaconv_forward(op):
    return (lambda x: numbaconv.softmax(x, 1)) if op == "softmax" else getattr(numbaconv, op)


def _numbaconv_fn(op, direction):
    x, grad_out, y = _inputs(op)
    if direction == "forward":
        return functools.partial(_numbaconv_forward(op), x)
    if op == "softmax":
        return lambda: numbaconv.softmax_backward(grad_out, y, 1)
    backward = getattr(numbaconv, f"{op}_backward")
    return functools.partial(backward, grad_out, x if op in READS_X else y)


def _torch_fn(torch, op, direction):
    x, grad_out, y = (torch.from_numpy(a) for a in _inputs(op))
    if direction == "forward":
        fn = {"relu": torch.relu, "leaky_relu": torch.nn.functional.leaky_relu, "elu": torch.nn.functional.elu,
              "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softmax": lambda t: torch.softmax(t, 1)}[op]

        def forward():
            with torch.inference_mode():
                return fn(x)

        return forward
    # the kernels autograd runs for these ops' backward
    return {
        "relu": lambda: torch.ops.aten.threshold_backward(grad_out, x, 0),
        "leaky_relu": lambda: torch.ops.aten.leaky_relu_backward(grad_out, x, 0.01, False),
        "elu": lambda: torch.ops.aten.elu_backward(grad_out, 1.0, 1.0, 1.0, False, x),
        "sigmoid": lambda: torch.ops.aten.sigmoid_backward(grad_out, y),
        "tanh": lambda: torch.ops.aten.tanh_backward(grad_out, y),
        "softmax": lambda: torch.ops.aten._softmax_backward_data(grad_out, y, 1, torch.float32),
    }[op]


def _check_against_torch(op, direction, result):
    if _torch is None:
        return
    expected = _torch_fn(_torch, op, direction)().numpy()
    assert result.shape == expected.shape
    err = float(np.max(np.abs(result - expected)))
    assert err <= 1e-5 * max(1.0, float(np.max(np.abs(expected)))), f"max abs error {err:.3g}"


def _bytes(op, direction):
    arrays = 2 if direction == "forward" else 3
    return arrays * int(np.prod(SHAPES[op])) * np.dtype(np.float32).itemsize


@pytest.mark.parametrize("op", list(SHAPES))
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_elementwise(benchmark, measure, request, op, direction, impl):
    benchmark.group = f"{op} {direction}"
    benchmark.extra_info.update(op=op, size=SHAPES[op], direction=direction, impl=impl, dtype="float32")
    if impl == "torch":
        fn = _torch_fn(request.getfixturevalue("torch"), op, direction)
    else:
        fn = _numbaconv_fn(op, direction)
        _check_against_torch(op, direction, fn())
    measure(fn, 0)
    for key in ("flops", "gflops"):  # memory-bound: bandwidth, not arithmetic, is the figure here
        benchmark.extra_info.pop(key, None)
    if not benchmark.disabled:
        nbytes = _bytes(op, direction)
        benchmark.extra_info.update(bytes=nbytes, gbps=nbytes / benchmark.stats.stats.median / 1e9)
