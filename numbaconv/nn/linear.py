"""Linear, Flatten and Dropout layers, as in torch.nn."""

from .. import functional as F
from .._random import generator
from ..functional.linear import _check_p
from . import init
from .conv import _positive_int
from .module import Module, Parameter, check_device, check_dtype


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features), bias (out_features,).

    Input (..., in_features). Initialized as PyTorch does; rng as in Conv2d.
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, rng=None):
        super().__init__()
        op = "Linear"
        device = check_device(op, device)
        dtype = check_dtype(op, dtype)
        self.in_features = _positive_int(op, "in_features", in_features)
        self.out_features = _positive_int(op, "out_features", out_features)
        rng = generator(op, rng)
        shape = (self.out_features, self.in_features)
        self.weight = Parameter(init.kaiming_uniform(rng, shape, dtype))
        if bias:
            self.bias = Parameter(init.default_bias(rng, shape, self.out_features, dtype))
        else:
            self.register_parameter("bias", None)
        self.to(device)  # drawn on the host, from the same generator, wherever it is to live

    def forward(self, x):
        self._input = x
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)

    def backward(self, grad_out, input_grad=True):
        needs = (bool(input_grad), self.weight.requires_grad, self.bias is not None and self.bias.requires_grad)
        grad_x, grad_w, grad_b = F.linear_backward(grad_out, self._saved(), self.weight.data, needs=needs)
        self.weight.accumulate(grad_w)
        if self.bias is not None:
            self.bias.accumulate(grad_b)
        return grad_x

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Dimensions start_dim..end_dim merged into one; backward restores the input's shape."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        self._shape = x.shape
        return F.flatten(x, self.start_dim, self.end_dim)

    def backward(self, grad_out, input_grad=True):
        return grad_out.reshape(self._saved("_shape")) if input_grad else None

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    """In training, zero each element with probability p and scale the rest by 1 / (1 - p);
    in eval mode, the identity. rng: a Generator or seed for the masks (default numbaconv's
    generator); inplace is accepted and ignored (inputs are never modified)."""

    def __init__(self, p=0.5, inplace=False, *, rng=None):
        super().__init__()
        self.p = _check_p("Dropout", p)
        self.inplace = inplace
        self.rng = None if rng is None else generator("Dropout", rng)

    def forward(self, x):
        out, self._mask = F.dropout(x, self.p, self.training, self.rng)
        self._p = self.p if self.training else 0.0
        return out

    def backward(self, grad_out, input_grad=True):
        return F.dropout_backward(grad_out, self._saved("_mask"), self._p) if input_grad else None

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


__all__ = ["Linear", "Flatten", "Dropout"]
