"""Optimizers: SGD and Adam, with ``torch.optim``'s signatures and update rules, step for step.

An optimizer holds ``param_groups``, a list of dicts, each with "params" (a list of
``numbaconv.nn.Parameter``) and that group's hyperparameters ("lr", "momentum", ...), and
``state``, a dict from Parameter to that parameter's buffers (momentum, moment estimates).
``step()`` updates every parameter that has a gradient, in place: the arrays in a model's
``state_dict`` change, and the parameters keep their dtype. Edit ``group["lr"]`` between steps
to schedule the learning rate, as in PyTorch. A parameter whose ``grad`` is None or whose
``requires_grad`` is False is skipped, and its state does not advance.

The arithmetic is PyTorch's, in the parameter's own dtype (the buffers share it);
hyperparameters and bias corrections are Python floats (double precision), so a float64 model
trains in float64 throughout and a float32 model matches torch's float32 rounding.
"""

import math
from numbers import Real

import numpy as np

from ._arith import zeros_like
from ._device import CPU, CUDA, is_device_array
from .nn.module import Module, Parameter, _moved

__all__ = ["Optimizer", "SGD", "Adam", "StepLR"]


def _is_real(value):
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def _non_negative(op, name, value):
    if not _is_real(value):
        raise TypeError(f"{op}: {name} must be a real number >= 0, got {value!r}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{op}: {name} must be >= 0, got {value!r}")
    return float(value)


def _flag(op, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")
    return bool(value)


def _param_list(op, where, params):
    """``params`` (a Parameter or an iterable of them) as a list, each Parameter once."""
    if isinstance(params, Parameter):
        return [params]
    if isinstance(params, (Module, np.ndarray, dict, str)) or not hasattr(params, "__iter__"):
        raise TypeError(f"{op}: {where} must be an iterable of numbaconv.nn.Parameter (such as "
                        f"model.parameters()), got {type(params).__name__}")
    params = list(params)
    seen = set()
    for i, param in enumerate(params):
        if not isinstance(param, Parameter):
            hint = " (wrap arrays in numbaconv.nn.Parameter)" if isinstance(param, np.ndarray) else ""
            raise TypeError(f"{op}: {where} must hold numbaconv.nn.Parameter objects, got "
                            f"{type(param).__name__} at index {i}{hint}")
        if id(param) in seen:
            raise ValueError(f"{op}: {where} must list each parameter once, got a duplicate at index {i}")
        seen.add(id(param))
    return params


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and ``step``.

    params: an iterable of Parameters, or of dicts {"params": [...], "lr": ..., ...} whose
    entries override ``defaults`` for that group (PyTorch's parameter groups). Subclasses set
    ``defaults`` and implement ``_check_group`` (hyperparameter checks) and ``_update`` (the
    rule for one parameter).
    """

    def __init__(self, params, defaults):
        op = type(self).__name__
        self.defaults = dict(defaults)
        self.state = {}
        self.param_groups = []
        if isinstance(params, (Parameter, Module, np.ndarray, dict, str)) or not hasattr(params, "__iter__"):
            raise TypeError(f"{op}: params must be an iterable of numbaconv.nn.Parameter (such as "
                            f"model.parameters()) or of parameter-group dicts, got {type(params).__name__}")
        entries = list(params)
        if not entries:
            raise ValueError(f"{op}: params must hold at least one parameter, got an empty list")
        if all(isinstance(entry, dict) for entry in entries):
            groups = entries
        elif any(isinstance(entry, dict) for entry in entries):
            raise TypeError(f"{op}: params must hold either Parameters or parameter-group dicts, not both")
        else:
            groups = [{"params": entries}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add a dict {"params": [...], hyperparameter: value, ...}; missing hyperparameters take
        the optimizer's defaults. A parameter may belong to one group only."""
        op = type(self).__name__
        if not isinstance(group, dict):
            raise TypeError(f"{op}: a parameter group must be a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"{op}: a parameter group must have a 'params' entry, got keys {sorted(group)}")
        group = dict(group)  # the caller's dict stays as it was
        group["params"] = _param_list(op, "a group's 'params'", group["params"])
        for name, value in self.defaults.items():
            group.setdefault(name, value)
        self._check_group(group)
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in taken for p in group["params"]):
            raise ValueError(f"{op}: some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        """Clear the gradients of every parameter: to None (the default, as in PyTorch) or, with
        set_to_none=False, to zeros in place."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if set_to_none:
                    param.grad = None
                else:
                    param.grad[...] = 0

    def step(self, closure=None):
        """Update every parameter that has a gradient, in place, by the optimizer's rule.

        closure: as in PyTorch, a function that recomputes the gradients and returns the loss;
        it is called first and its loss returned (None without a closure).
        """
        op = f"{type(self).__name__}.step"
        loss = None
        if closure is not None:
            if not callable(closure):
                raise TypeError(f"{op}: closure must be None or a function returning the loss, got {closure!r}")
            loss = closure()
        for group in self.param_groups:
            self._check_group(group)  # the rate may have been edited since the last step
            for param in group["params"]:
                if param.grad is None or not param.requires_grad:
                    continue
                grad = param.grad
                on_gpu = is_device_array(param.data)
                if not (isinstance(grad, np.ndarray) or is_device_array(grad)) or grad.shape != param.data.shape:
                    shape = getattr(grad, "shape", type(grad).__name__)
                    raise ValueError(f"{op}: a parameter of shape {param.data.shape} has a gradient of shape {shape}")
                if is_device_array(grad) != on_gpu:
                    raise ValueError(f"{op}: a parameter on {'the GPU' if on_gpu else 'the host'} has its gradient "
                                     f"on {'the host' if on_gpu else 'the GPU'}")
                if grad.dtype != param.data.dtype:
                    grad = _moved(grad, None, param.data.dtype)
                update = self._update_gpu if on_gpu else self._update
                update(param, grad, group, self.state.setdefault(param, {}))
        return loss

    def _buffer(self, state, name, param):
        """state[name] with param's dtype and device: zeros when new, converted after a
        model.to(dtype) or moved after a model.to(device)."""
        buf = state.get(name)
        if buf is None:
            buf = state[name] = zeros_like(param.data)
        else:
            buf = state[name] = _moved(buf, CUDA if is_device_array(param.data) else CPU, param.data.dtype)
        return buf

    def _check_group(self, group):
        raise NotImplementedError

    def _update(self, param, grad, group, state):
        raise NotImplementedError

    def _update_gpu(self, param, grad, group, state):
        """The same rule for a parameter on the GPU, as one fused kernel."""
        raise NotImplementedError

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {key}: {value}" for key, value in sorted(group.items()) if key != "params")
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and L2
    weight decay, as ``torch.optim.SGD`` (same positional order).

    For each parameter p with gradient g, every step:

        g = g + weight_decay * p
        buf = g (first step) or momentum * buf + (1 - dampening) * g   (when momentum > 0)
        g = g + momentum * buf (nesterov) or buf                        (when momentum > 0)
        p = p - lr * g

    state[p]: {"momentum_buffer": buf} (p's shape and dtype) once momentum is used.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, group):
        op = "SGD"
        for name in ("lr", "momentum", "dampening", "weight_decay"):
            _non_negative(op, name, group[name])
        if _flag(op, "nesterov", group["nesterov"]) and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{op}: nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _update(self, param, grad, group, state):
        lr, momentum, weight_decay = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        if weight_decay != 0:
            grad = grad + weight_decay * param.data  # a new array: param.grad is left as it was
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, order="C")  # a copy, as torch.clone
            else:
                if buf.dtype != param.data.dtype:
                    buf = state["momentum_buffer"] = buf.astype(param.data.dtype)
                buf *= momentum
                buf += (1 - float(group["dampening"])) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        param.data -= lr * grad

    def _update_gpu(self, param, grad, group, state):
        from .kernels.cuda import arith

        momentum = float(group["momentum"])
        first = momentum != 0 and state.get("momentum_buffer") is None
        buf = self._buffer(state, "momentum_buffer", param) if momentum != 0 else param.data  # unused without
        arith.sgd(param.data, grad, buf, float(group["lr"]), momentum, float(group["dampening"]),
                  float(group["weight_decay"]), group["nesterov"], first)


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam``: L2 weight decay added to the gradient,
    bias-corrected moment estimates, and optionally AMSGrad (same positional order).

    For each parameter p with gradient g, at step t (counted per parameter from 1):

        g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g           (torch's lerp: m + (1 - beta1) * (g - m))
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v)                        (amsgrad; v below means vmax)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    state[p]: {"step": t, "exp_avg": m, "exp_avg_sq": v[, "max_exp_avg_sq": vmax]}.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, group):
        op = "Adam"
        for name in ("lr", "eps", "weight_decay"):
            _non_negative(op, name, group[name])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(_is_real(b) for b in betas):
            raise TypeError(f"{op}: betas must be a pair of real numbers in [0, 1), got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0 <= beta < 1:
                raise ValueError(f"{op}: betas[{i}] must be in [0, 1), got {beta!r}")
        _flag(op, "amsgrad", group["amsgrad"])

    def _update(self, param, grad, group, state):
        lr, eps, weight_decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        step = state["step"] = state.get("step", 0) + 1
        if weight_decay != 0:
            grad = grad + weight_decay * param.data
        exp_avg = self._buffer(state, "exp_avg", param)
        exp_avg_sq = self._buffer(state, "exp_avg_sq", param)
        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        if group["amsgrad"]:
            second = self._buffer(state, "max_exp_avg_sq", param)
            np.maximum(second, exp_avg_sq, out=second)
        else:
            second = exp_avg_sq
        # Python floats: the corrections of a float32 model are computed in double, as torch's
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        denom = np.sqrt(second)
        denom /= math.sqrt(bias_correction2)
        denom += eps
        update = step_size * exp_avg
        update /= denom
        param.data -= update

    def _update_gpu(self, param, grad, group, state):
        from .kernels.cuda import arith

        step = state["step"] = state.get("step", 0) + 1
        exp_avg = self._buffer(state, "exp_avg", param)
        exp_avg_sq = self._buffer(state, "exp_avg_sq", param)
        second = self._buffer(state, "max_exp_avg_sq", param) if group["amsgrad"] else exp_avg_sq
        beta1, beta2 = (float(b) for b in group["betas"])
        arith.adam(param.data, grad, exp_avg, exp_avg_sq, second, float(group["lr"]), beta1, beta2,
                   float(group["eps"]), float(group["weight_decay"]), group["amsgrad"], step)


class StepLR:
    """Multiply each group's learning rate by gamma every ``step_size`` epochs, as
    ``torch.optim.lr_scheduler.StepLR``: lr = initial_lr * gamma ** (epoch // step_size).

    Call ``step()`` once per epoch, after the epoch's optimizer steps (``fit(scheduler=...)``
    does). ``get_last_lr()`` gives the rates now in use.
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        op = "StepLR"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{op}: optimizer must be a numbaconv.optim optimizer, got {type(optimizer).__name__}")
        if not isinstance(step_size, int) or isinstance(step_size, bool) or step_size < 1:
            raise ValueError(f"{op}: step_size must be an int >= 1, got {step_size!r}")
        self.optimizer, self.step_size = optimizer, step_size
        self.gamma = _non_negative(op, "gamma", gamma)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.last_epoch = 0

    def step(self):
        self.last_epoch += 1
        factor = self.gamma ** (self.last_epoch // self.step_size)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def __repr__(self):
        return f"StepLR(step_size={self.step_size}, gamma={self.gamma}, last_epoch={self.last_epoch})"
