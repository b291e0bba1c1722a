"""Normalization layers: BatchNorm1d/2d/3d, GroupNorm, LocalResponseNorm, as in torch.nn."""

import numpy as np

from .. import functional as F
from ..functional.activation import check_real
from .conv import _positive_int
from .module import Module, Parameter, check_device, check_dtype


class _Affine(Module):
    """What BatchNorm and GroupNorm share: an optional per-channel weight (ones) and bias (zeros),
    and the accumulation of their gradients."""

    def _init_affine(self, affine, channels, dtype):
        self.affine = bool(affine)
        if self.affine:
            self.weight = Parameter(np.ones(channels, dtype))
            self.bias = Parameter(np.zeros(channels, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _affine(self):
        return (None, None) if not self.affine else (self.weight.data, self.bias.data)

    def _needs(self, input_grad):
        return (bool(input_grad), self.affine and self.weight.requires_grad, self.affine and self.bias.requires_grad)

    def _accumulate(self, grads):
        grad_x, grad_w, grad_b = grads
        if self.affine:
            self.weight.accumulate(grad_w)
            self.bias.accumulate(grad_b)
        return grad_x


class _BatchNorm(_Affine):
    """Batch normalization over (N, *spatial) per channel, PyTorch's parameters and buffers:
    weight, bias (affine=True), running_mean, running_var, num_batches_tracked
    (track_running_stats=True). momentum=None averages all batches seen (cumulative)."""

    _ranks = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__()
        op = type(self).__name__
        device = check_device(op, device)
        dtype = check_dtype(op, dtype)
        self.num_features = _positive_int(op, "num_features", num_features)
        self.eps = check_real(op, "eps", eps)
        self.momentum = None if momentum is None else check_real(op, "momentum", momentum)
        self._init_affine(affine, num_features, dtype)
        self.track_running_stats = bool(track_running_stats)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)
        self.to(device)

    def _check_input(self, x):
        if getattr(x, "ndim", None) not in self._ranks:
            ranks = " or ".join(f"{r}-D" for r in self._ranks)
            raise ValueError(f"{type(self).__name__}: expected a {ranks} input, got shape {getattr(x, 'shape', None)}")

    def _arrays(self):
        return (self.running_mean, self.running_var, *self._affine())

    def forward(self, x):
        self._check_input(x)
        # batch statistics in training, and always when no running statistics are kept
        self._batch = self.training or not self.track_running_stats
        momentum = self.momentum or 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if self.momentum is None:
                momentum = 1.0 / int(self.num_batches_tracked)
        self._input = x
        return F.batch_norm(x, *self._arrays(), self._batch, momentum, self.eps)

    def backward(self, grad_out, input_grad=True):
        return self._accumulate(F.batch_norm_backward(grad_out, self._saved(), *self._arrays(), self._batch,
                                                      self.eps, self._needs(input_grad)))

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs, as torch.nn.BatchNorm1d."""

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) inputs, as torch.nn.BatchNorm2d."""

    _ranks = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization of (N, C, D, H, W) inputs, as torch.nn.BatchNorm3d."""

    _ranks = (5,)


class GroupNorm(_Affine):
    """Group normalization, as torch.nn.GroupNorm: weight and bias (num_channels,) when affine."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None):
        super().__init__()
        op = "GroupNorm"
        device = check_device(op, device)
        dtype = check_dtype(op, dtype)
        self.num_groups = _positive_int(op, "num_groups", num_groups)
        self.num_channels = _positive_int(op, "num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(f"{op}: num_channels must be divisible by num_groups={num_groups}, got {num_channels}")
        self.eps = check_real(op, "eps", eps)
        self._init_affine(affine, num_channels, dtype)
        self.to(device)

    def forward(self, x):
        self._input = x
        return F.group_norm(x, self.num_groups, *self._affine(), self.eps)

    def backward(self, grad_out, input_grad=True):
        return self._accumulate(F.group_norm_backward(grad_out, self._saved(), self.num_groups, *self._affine(),
                                                      self.eps, self._needs(input_grad)))

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class LocalResponseNorm(Module):
    """Local response normalization across channels (AlexNet), as torch.nn.LocalResponseNorm."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size = _positive_int("LocalResponseNorm", "size", size)
        self.alpha, self.beta, self.k = alpha, beta, k

    def forward(self, x):
        self._input = x
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def backward(self, grad_out, input_grad=True):
        if not input_grad:
            return None
        return F.local_response_norm_backward(grad_out, self._saved(), self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LocalResponseNorm"]
