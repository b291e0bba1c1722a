"""Convolution layers: Conv1d/2d/3d and ConvTranspose1d/2d/3d, PyTorch's signatures and keys."""

from numbers import Integral

from .. import functional as F
from .._geometry import PADDING_MODES, check_choice, int_tuple
from .._random import generator
from ..functional.conv import ALGORITHM_CHOICES
from . import init
from .module import Module, Parameter, check_device, check_dtype


def _positive_int(op, name, value):
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {value}")
    return int(value)


class _ConvBase(Module):
    """What Conv and ConvTranspose share: argument checks, parameters, the backward's shape."""

    _ndim = 0
    _transposed = False

    def _setup(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
               padding_mode, device, dtype, algorithm, rng, output_padding=0):
        op, n = type(self).__name__, self._ndim
        device = check_device(op, device)
        dtype = check_dtype(op, dtype)
        self.in_channels = _positive_int(op, "in_channels", in_channels)
        self.out_channels = _positive_int(op, "out_channels", out_channels)
        self.groups = _positive_int(op, "groups", groups)
        for name, channels in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if channels % self.groups:
                raise ValueError(f"{op}: {name} must be divisible by groups={self.groups}, got {channels}")
        self.kernel_size = int_tuple(op, "kernel_size", kernel_size, n, 1)
        self.stride = int_tuple(op, "stride", stride, n, 1)
        self.dilation = int_tuple(op, "dilation", dilation, n, 1)
        if isinstance(padding, str) and not self._transposed:
            check_choice(op, "padding", padding, ("same", "valid"))
            if padding == "same" and max(self.stride) > 1:
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride={stride!r}")
            self.padding = padding
        else:
            self.padding = int_tuple(op, "padding", padding, n, 0)
        self.output_padding = int_tuple(op, "output_padding", output_padding, n, 0)
        self.padding_mode = check_choice(op, "padding_mode", padding_mode, PADDING_MODES)
        if self._transposed and padding_mode != "zeros":
            raise ValueError(f"{op}: only padding_mode='zeros' is supported, got {padding_mode!r}")
        self.algorithm = check_choice(op, "algorithm", algorithm, ALGORITHM_CHOICES)
        if not isinstance(bias, (bool, int)):
            raise TypeError(f"{op}: bias must be a bool, got {bias!r}")
        rng = generator(op, rng)
        if self._transposed:
            shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        else:
            shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self.weight = Parameter(init.kaiming_uniform(rng, shape, dtype))
        if bias:
            self.bias = Parameter(init.default_bias(rng, shape, self.out_channels, dtype))
        else:
            self.register_parameter("bias", None)
        self.to(device)  # drawn on the host, from the same generator, wherever it is to live

    def _needs(self, input_grad):
        return (bool(input_grad), self.weight.requires_grad, self.bias is not None and self.bias.requires_grad)

    def _accumulate(self, grads):
        grad_x, grad_w, grad_b = grads
        self.weight.accumulate(grad_w)
        if self.bias is not None:
            self.bias.accumulate(grad_b)
        return grad_x

    def extra_repr(self):
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._ndim:
            text += f", padding={self.padding}"
        if self.dilation != (1,) * self._ndim:
            text += f", dilation={self.dilation}"
        if self.output_padding != (0,) * self._ndim:
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text


class _ConvNd(_ConvBase):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, algorithm="auto", rng=None):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                    padding_mode, device, dtype, algorithm, rng)

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    padding_mode=self.padding_mode, algorithm=self.algorithm)

    def forward(self, x):
        self._input = x
        bias = None if self.bias is None else self.bias.data
        return getattr(F, f"conv{self._ndim}d")(x, self.weight.data, bias, **self._args())

    def backward(self, grad_out, input_grad=True):
        backward = getattr(F, f"conv{self._ndim}d_backward")
        return self._accumulate(backward(grad_out, self._saved(), self.weight.data, needs=self._needs(input_grad),
                                         **self._args()))


class _ConvTransposeNd(_ConvBase):
    _transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None, *, algorithm="auto",
                 rng=None):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                    padding_mode, device, dtype, algorithm, rng, output_padding)

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding,
                    groups=self.groups, dilation=self.dilation, algorithm=self.algorithm)

    def forward(self, x):
        self._input = x
        bias = None if self.bias is None else self.bias.data
        return getattr(F, f"conv_transpose{self._ndim}d")(x, self.weight.data, bias, **self._args())

    def backward(self, grad_out, input_grad=True):
        backward = getattr(F, f"conv_transpose{self._ndim}d_backward")
        return self._accumulate(backward(grad_out, self._saved(), self.weight.data, needs=self._needs(input_grad),
                                         **self._args()))


_CONV_DOC = """{n}-D convolution layer, as torch.nn.Conv{n}d: weight (out_channels, in_channels / groups,
    *kernel_size) and bias (out_channels,), initialized as PyTorch does. Input (N, in_channels,
    {s}). Keyword-only extras: algorithm ("auto", "direct", "im2col", "tune") and rng (a Generator or
    seed for the initial weights; default numbaconv's generator, see numbaconv.manual_seed)."""

_CONV_TRANSPOSE_DOC = """{n}-D transposed convolution layer, as torch.nn.ConvTranspose{n}d: weight (in_channels,
    out_channels / groups, *kernel_size), bias (out_channels,). Input (N, in_channels, {s}).
    Keyword-only extras: algorithm and rng, as in Conv{n}d."""

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def _layer(base, name, ndim, doc):
    return type(name, (base,), {"_ndim": ndim, "__doc__": doc.format(n=ndim, s=_SPATIAL[ndim]),
                                "__module__": __name__})


Conv1d, Conv2d, Conv3d = (_layer(_ConvNd, f"Conv{n}d", n, _CONV_DOC) for n in (1, 2, 3))
ConvTranspose1d, ConvTranspose2d, ConvTranspose3d = (
    _layer(_ConvTransposeNd, f"ConvTranspose{n}d", n, _CONV_TRANSPOSE_DOC) for n in (1, 2, 3))

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]
