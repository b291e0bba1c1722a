"""Activation layers, as in torch.nn. ``inplace`` is accepted for PyTorch's signatures and
ignored: numbaconv never modifies an input, and backward needs it."""

from numbers import Integral

from .. import functional as F
from ..functional.activation import check_real
from .module import Module


class _FromInput(Module):
    """An activation whose backward reads the input x (relu, leaky_relu, elu)."""

    _op = ""

    def _args(self):
        return {}

    def forward(self, x):
        self._input = x
        return getattr(F, self._op)(x, **self._args())

    def backward(self, grad_out, input_grad=True):
        if not input_grad:
            return None
        return getattr(F, self._op + "_backward")(grad_out, self._saved(), **self._args())

    def extra_repr(self):
        return ", ".join(f"{name}={value}" for name, value in self._args().items())


class _FromOutput(_FromInput):
    """An activation whose backward reads the output y (sigmoid, tanh, softmax, log_softmax)."""

    def forward(self, x):
        self._output = getattr(F, self._op)(x, **self._args())
        return self._output

    def backward(self, grad_out, input_grad=True):
        if not input_grad:
            return None
        return getattr(F, self._op + "_backward")(grad_out, self._saved("_output"), **self._args())


class ReLU(_FromInput):
    """max(x, 0)."""

    _op = "relu"

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace


class LeakyReLU(_FromInput):
    """x where x > 0, negative_slope * x elsewhere."""

    _op = "leaky_relu"

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = check_real("LeakyReLU", "negative_slope", negative_slope)
        self.inplace = inplace

    def _args(self):
        return {"negative_slope": self.negative_slope}


class ELU(_FromInput):
    """x where x > 0, alpha * (exp(x) - 1) elsewhere."""

    _op = "elu"

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = check_real("ELU", "alpha", alpha)
        self.inplace = inplace

    def _args(self):
        return {"alpha": self.alpha}


class Sigmoid(_FromOutput):
    """1 / (1 + exp(-x))."""

    _op = "sigmoid"


class Tanh(_FromOutput):
    """tanh(x)."""

    _op = "tanh"


class _Softmax(_FromOutput):
    def __init__(self, dim=None):
        super().__init__()
        if dim is not None and (not isinstance(dim, Integral) or isinstance(dim, bool)):
            raise TypeError(f"{type(self).__name__}: dim must be an int or None, got {dim!r}")
        self.dim = dim

    def _args(self):
        return {"dim": self._dim}

    def forward(self, x):
        # dim=None: PyTorch's legacy implicit choice, 0 for 0-, 1- and 3-d inputs, else 1
        self._dim = self.dim if self.dim is not None else (0 if getattr(x, "ndim", 0) in (0, 1, 3) else 1)
        return super().forward(x)

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_Softmax):
    """exp(x) / sum(exp(x)) along dim."""

    _op = "softmax"


class LogSoftmax(_Softmax):
    """log(softmax(x, dim)), computed stably."""

    _op = "log_softmax"


__all__ = ["ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax"]
