"""Module and Parameter: the stateful layer over the functional ops, shaped like ``torch.nn``.

A module's ``forward`` keeps what its ``backward`` needs (its input, a mask, indices) on the
module, so one ``forward`` is followed by at most one ``backward`` per call: a module called
twice in one forward pass (shared weights) needs two instances. ``backward(grad_out)`` returns
the gradient for the input and adds the parameters' gradients into ``Parameter.grad``.
Containers run their children forward in order and backward in reverse, so the chain rule can
be read off ``Sequential`` and ``Residual`` below.
"""

from collections import OrderedDict, namedtuple
from numbers import Integral

import numpy as np

from .._arith import add, assign, fill, iadd
from .._device import CPU, CUDA, is_device_array, require_cuda, to_device, to_host
from .._geometry import FLOAT_DTYPES

DEFAULT_DTYPE = np.dtype(np.float32)

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def check_dtype(op, dtype):
    """None (float32, PyTorch's default) or a float32/float64 dtype, as a numpy dtype."""
    try:
        dtype = DEFAULT_DTYPE if dtype is None else np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype}")
    return dtype


def check_device(op, device):
    """None, "cpu" or "cuda" ("cuda:0": the current GPU), as None, CPU or CUDA. Asking for
    "cuda" where CUDA is not available raises RuntimeError saying why."""
    if device is None:
        return None
    name = str(device)
    if name == CPU:
        return CPU
    if name in (CUDA, "cuda:0"):
        require_cuda(op)
        return CUDA
    raise ValueError(f"{op}: device must be 'cpu' or 'cuda', got {device!r}")


def device_of(module):
    """Where a module's parameters and floating buffers live: CPU or CUDA (CPU when it has none)."""
    for array in (*(p.data for p in module.parameters()), *module.buffers()):
        if is_device_array(array):
            return CUDA
    return CPU


def _moved(array, device, dtype):
    """``array`` on ``device`` (None: where it is) with ``dtype`` (None: its own); the same
    object when nothing changes. A dtype change of a GPU array goes through the host."""
    on_gpu = is_device_array(array)
    device = device or (CUDA if on_gpu else CPU)
    if (dtype is None or array.dtype == dtype) and on_gpu == (device == CUDA):
        return array
    host = to_host(array)
    if dtype is not None:
        host = host.astype(dtype)
    return to_device(host) if device == CUDA else np.ascontiguousarray(host)


class Parameter:
    """A trainable array: ``data`` (C-contiguous float32/float64) and ``grad`` (None until a
    backward pass, then an array of data's shape). ``requires_grad=False`` freezes it: backward
    passes do not compute its gradient and optimizers skip it."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad=True):
        data = np.array(data, order="C")  # a copy: the parameter owns its values
        if data.dtype not in FLOAT_DTYPES:
            raise TypeError(f"Parameter: data must be float32 or float64, got {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    ndim = property(lambda self: self.data.ndim)

    def accumulate(self, grad):
        """Add ``grad`` into ``self.grad`` (which takes ``grad`` itself when it was None)."""
        if grad is None:
            return
        if self.grad is None:
            self.grad = grad
        else:
            iadd(self.grad, grad)

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and model.

    Subclasses assign Parameters, sub-Modules and buffers (``register_buffer``) as attributes in
    ``__init__``; the order of assignment is the order of ``state_dict`` keys, as in PyTorch.
    They implement ``forward(x)`` and ``backward(grad_out, input_grad=True)``; input_grad=False
    tells the first layer of a model that nobody needs the gradient for its input, which saves
    that computation (``fit`` passes it).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ attributes

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning {name!r}")
        if name in self._buffers and (value is None or isinstance(value, np.ndarray) or is_device_array(value)):
            self._buffers[name] = value  # a buffer stays a buffer when reassigned, as in PyTorch
            return
        target = (self._parameters if isinstance(value, Parameter)
                  else self._modules if isinstance(value, Module) else None)
        for table in (self._parameters, self._buffers, self._modules):
            if table is not target:  # a replaced parameter or module keeps its place, as in PyTorch
                table.pop(name, None)
        if target is None:
            object.__setattr__(self, name, value)
            return
        target[name] = value
        self.__dict__.pop(name, None)

    def __getattr__(self, name):  # only called when normal lookup fails
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter, or None for an absent one such as bias=False)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name} must be a Parameter or None, got {type(param).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name, array):
        """Register a state array that is saved and loaded but not trained (running statistics)."""
        if array is not None and not (isinstance(array, np.ndarray) or is_device_array(array)):
            raise TypeError(f"register_buffer: {name} must be a numpy.ndarray (or a GPU array) or None, "
                            f"got {type(array).__name__}")
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    # ------------------------------------------------------------------ running

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_out, input_grad=True):
        raise NotImplementedError(
            f"{type(self).__name__} does not implement backward: write it next to forward, as the "
            "layers in numbaconv.nn do, or build the model from Sequential and Residual"
        )

    def __call__(self, *inputs, **kwargs):
        out = self.forward(*inputs, **kwargs)
        for hook in _CALL_HOOKS:
            hook(self, inputs, out)
        return out

    def _saved(self, name="_input"):
        """What forward kept for backward, or a clear error when forward has not run."""
        value = self.__dict__.get(name)
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return value

    # ------------------------------------------------------------------ traversal

    def named_children(self):
        yield from self._modules.items()

    def children(self):
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix="", remove_duplicate=True):
        """This module and every module below it, with dotted names; each module once (every
        time it appears with remove_duplicate=False, as state_dict walks it)."""
        seen = set()

        def walk(module, name):
            if id(module) in seen:
                return
            if remove_duplicate:
                seen.add(id(module))
            yield name, module
            for child_name, child in module._modules.items():
                if child is not None:
                    yield from walk(child, f"{name}.{child_name}" if name else child_name)

        yield from walk(self, prefix)

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def _named(self, table, prefix="", recurse=True):
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_name, module in modules:
            for name, value in getattr(module, table).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{module_name}.{name}" if module_name else name), value

    def named_parameters(self, prefix="", recurse=True):
        yield from self._named("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix="", recurse=True):
        yield from self._named("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def apply(self, fn):
        """Call ``fn`` on every submodule, then on this module (as PyTorch); returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ modes and gradients

    def train(self, mode=True):
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"train: mode must be a bool, got {mode!r}")
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's gradient (to None, PyTorch's default, or to zeros)."""
        for param in self.parameters():
            if set_to_none or param.grad is None:
                param.grad = None
            else:
                fill(param.grad, 0)

    def requires_grad_(self, requires_grad=True):
        for param in self.parameters():
            param.requires_grad = bool(requires_grad)
        return self

    # ------------------------------------------------------------------ state

    def state_dict(self, prefix=""):
        """An OrderedDict of every parameter and buffer by dotted name, PyTorch's keys.

        The arrays are the module's own (not copies), as PyTorch's tensors are; copy them to
        keep a snapshot that later training does not change. ``prefix`` is put before every
        key, as in PyTorch ("model." gives "model.0.weight").
        """
        state = OrderedDict()
        for module_name, module in self.named_modules(remove_duplicate=False):
            dot = f"{prefix}{module_name}." if module_name else prefix
            for name, param in module._parameters.items():
                if param is not None:
                    state[dot + name] = param.data
            for name, buf in module._buffers.items():
                if buf is not None:
                    state[dot + name] = buf
        return state

    def load_state_dict(self, state, strict=True):
        """Copy the arrays of ``state`` (a mapping of name to array) into this module.

        Every array is checked before any is copied, so a failed load changes nothing. Values
        take the dtype of the array they replace. strict=True (the default) raises KeyError for
        missing and unexpected keys; strict=False loads the keys that match and returns them as
        (missing_keys, unexpected_keys). A shape mismatch is a ValueError naming the key.
        """
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise TypeError(f"load_state_dict: state must be a mapping of names to arrays, got {type(state).__name__}")
        own = self.state_dict()
        missing = [key for key in own if key not in state]
        unexpected = [key for key in state if key not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"load_state_dict: the state does not match {type(self).__name__}: {'; '.join(parts)}")
        values = {}
        for key, target in own.items():
            if key not in state:
                continue
            value = state[key]
            if is_device_array(value):
                value = to_host(value)
            if not isinstance(value, np.ndarray):
                if not hasattr(value, "__array__"):
                    raise TypeError(f"load_state_dict: {key} must be an array, got {type(value).__name__}")
                value = np.asarray(value)
            if value.dtype.kind not in "fiub":
                raise TypeError(f"load_state_dict: {key} must hold numbers, got dtype {value.dtype}")
            if value.shape != target.shape:
                raise ValueError(f"load_state_dict: {key} must have shape {target.shape}, got {value.shape}")
            values[key] = value
        for key, value in values.items():
            assign(own[key], value)
        return IncompatibleKeys(missing, unexpected)

    def to(self, device=None, dtype=None):
        """Move floating parameters and buffers to ``device`` ("cpu" or "cuda") and/or convert
        them to ``dtype``, in place; returns self.

        ``to(np.float64)`` also works, as ``module.to(torch.float64)`` does. A move or a dtype
        change drops the gradients (an optimizer built before a move keeps buffers on the old
        device: build it after, as in PyTorch). Integer buffers (BatchNorm's
        num_batches_tracked) stay on the host, where the count is kept.
        """
        if dtype is None and device is not None and not isinstance(device, str):
            device, dtype = None, device
        device = check_device("to", device)
        if dtype is not None:
            dtype = check_dtype("to", dtype)
        for module in self.modules():
            for param in module._parameters.values():
                if param is not None:
                    moved = _moved(param.data, device, dtype)
                    if moved is not param.data:
                        param.data, param.grad = moved, None
            for name, buf in module._buffers.items():
                if buf is not None and buf.dtype in FLOAT_DTYPES:
                    module._buffers[name] = _moved(buf, device, dtype)
        return self

    def cuda(self):
        return self.to(CUDA)

    def cpu(self):
        return self.to(CPU)

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    # ------------------------------------------------------------------ repr

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        for name, child in self._modules.items():
            text = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {text}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


# Called as hook(module, inputs, output) after every module call; numbaconv.summary uses it.
_CALL_HOOKS = []


class Identity(Module):
    """Returns its input; the gradient passes through unchanged."""

    def __init__(self, *args, **kwargs):  # PyTorch ignores its arguments too
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, grad_out, input_grad=True):
        return grad_out if input_grad else None


class Sequential(Module):
    """Modules run in order: ``Sequential(a, b, c)`` or ``Sequential(OrderedDict(name=module))``.

    Children are named "0", "1", ... (or by the OrderedDict's keys), as in PyTorch, so state
    dict keys read "features.0.weight". backward runs the children's backwards in reverse.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = modules[0].items()
        else:
            items = ((str(i), m) for i, m in enumerate(modules))
        for name, module in items:
            self._check(name, module)
            self._modules[name] = module

    @staticmethod
    def _check(name, module):
        if not isinstance(module, Module):
            raise TypeError(f"Sequential: entry {name} must be a Module, got {type(module).__name__}")

    def append(self, module):
        self._check(str(len(self)), module)
        self._modules[str(len(self))] = module
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        if not isinstance(index, Integral):
            raise TypeError(f"Sequential: index must be an int or a slice, got {type(index).__name__}")
        if not -len(modules) <= index < len(modules):
            raise IndexError(f"Sequential: index {index} is out of range for {len(modules)} modules")
        return modules[index]

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def backward(self, grad_out, input_grad=True):
        modules = list(self._modules.values())
        for i in range(len(modules) - 1, -1, -1):
            grad_out = modules[i].backward(grad_out, input_grad=input_grad or i > 0)
        return grad_out


class Residual(Module):
    """A skip connection: ``body(x) + shortcut(x)``, with ``shortcut`` the identity when None.

    backward sends grad_out down both branches and adds the two input gradients: the sum's
    gradient reaches each branch unchanged, and x feeds both. Children are named "body" and
    "shortcut". (``numbaconv.models.resnet18`` uses its own BasicBlock, to keep torchvision's
    key names.)
    """

    def __init__(self, body, shortcut=None):
        super().__init__()
        if not isinstance(body, Module):
            raise TypeError(f"Residual: body must be a Module, got {type(body).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(f"Residual: shortcut must be a Module or None, got {type(shortcut).__name__}")
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        out = self.body(x)
        if out.shape != skip.shape:
            raise ValueError(f"Residual: body gives shape {out.shape} but the shortcut gives {skip.shape}; "
                             "give a shortcut that maps the input to the body's output shape")
        return add(out, skip)

    def backward(self, grad_out, input_grad=True):
        grad = self.body.backward(grad_out, input_grad=input_grad)
        skip = grad_out if self.shortcut is None else self.shortcut.backward(grad_out, input_grad=input_grad)
        if not input_grad:
            return None
        return add(grad, skip)
