"""PyTorch as a second reference: forward and autograd backward on NumPy arrays.

Imported only by test modules that have already called ``pytest.importorskip("torch")``.
Padding modes go through torch.nn.Conv{n}d itself, the definition of their semantics.
"""

import numpy as np
import torch

CONV_MODULES = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
CONV_TRANSPOSE = {
    1: torch.nn.functional.conv_transpose1d,
    2: torch.nn.functional.conv_transpose2d,
    3: torch.nn.functional.conv_transpose3d,
}


def _tensor(a, grad=False):
    return torch.tensor(np.array(a), requires_grad=grad)


def _numpy(t):
    return None if t is None else t.detach().numpy()


def conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", grad_out=None):
    """Forward through torch.nn.Conv{n}d; with ``grad_out`` also (grad_x, grad_w, grad_b)."""
    nd = x.ndim - 2
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    module = CONV_MODULES[nd](
        x.shape[1], w.shape[0], w.shape[2:], stride=stride, padding=padding, dilation=dilation,
        groups=groups, bias=True, padding_mode=padding_mode, dtype=dtype,
    )
    with torch.no_grad():
        module.weight.copy_(torch.tensor(np.array(w)))
        module.bias.copy_(torch.tensor(np.zeros(w.shape[0]) if b is None else np.array(b)))
    xt = _tensor(x, grad=True)
    y = module(xt)
    if grad_out is None:
        return _numpy(y)
    y.backward(torch.tensor(np.array(grad_out)))
    return _numpy(y), _numpy(xt.grad), _numpy(module.weight.grad), _numpy(module.bias.grad)


def conv_transpose(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, grad_out=None):
    """Forward through F.conv_transpose{n}d; with ``grad_out`` also (grad_x, grad_w, grad_b)."""
    xt, wt = _tensor(x, grad=True), _tensor(w, grad=True)
    bias = np.zeros(w.shape[1] * groups, dtype=x.dtype) if b is None else b
    bt = _tensor(bias, grad=True)
    y = CONV_TRANSPOSE[x.ndim - 2](xt, wt, bt, stride, padding, output_padding, groups, dilation)
    if grad_out is None:
        return _numpy(y)
    y.backward(torch.tensor(np.array(grad_out)))
    return _numpy(y), _numpy(xt.grad), _numpy(wt.grad), _numpy(bt.grad)
