"""Pooling layers: max, average, power-average and adaptive, 1-D to 3-D, as in torch.nn.

Each layer is its functional op with fixed arguments: forward calls ``F.<op>`` and keeps its
input, backward calls ``F.<op>_backward`` with the same arguments, which the op checks on
every call (the messages name the op and the argument).
"""

from .. import functional as F
from .module import Module

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


class _Pool(Module):
    """One pooling op: ``_op`` names it ("max_pool2d"); ``_names`` lists its arguments in order."""

    _op = ""
    _names = ()

    def __init__(self, *args, **kwargs):
        super().__init__()
        params = dict(zip(self._names, (None,) * len(self._names)))
        params.update(self._defaults)
        if len(args) > len(self._names):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._names)} arguments, got {len(args)}")
        params.update(zip(self._names, args))
        for name in kwargs:
            if name not in params:
                raise TypeError(f"{type(self).__name__} got an unexpected argument {name!r}")
        params.update(kwargs)
        missing = [name for name in self._names if name not in self._defaults and params[name] is None]
        if missing:
            raise TypeError(f"{type(self).__name__} missing required argument {missing[0]!r}")
        if "stride" in params and params["stride"] is None:  # as PyTorch: the default stride is the window
            params["stride"] = params["kernel_size"]
        for name, value in params.items():
            setattr(self, name, value)

    def _args(self):
        return {name: getattr(self, name) for name in self._names if name != "return_indices"}

    def forward(self, x):
        self._input = x
        return getattr(F, self._op)(x, **self._args())

    def backward(self, grad_out, input_grad=True):
        if not input_grad:
            return None
        return getattr(F, self._op + "_backward")(grad_out, self._saved(), **self._args())

    def extra_repr(self):
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._names)


class _MaxPool(_Pool):
    """Max pooling keeps the arg-max indices of forward in training, so backward routes without
    searching. In evaluation (``eval()``) it asks for no indices unless ``return_indices``: the
    kernels without them are faster (ResNet's stem pooling 0.37 against 1.6 ms at batch 1, AVX2
    host), and a backward then finds the maxima again."""

    def forward(self, x):
        self._input = x
        if self.training or self.return_indices:
            out, self._indices = getattr(F, self._op)(x, return_indices=True, **self._args())
            return (out, self._indices) if self.return_indices else out
        self._indices = None
        return getattr(F, self._op)(x, **self._args())

    def backward(self, grad_out, input_grad=True):
        if not input_grad:
            return None
        return getattr(F, self._op + "_backward")(grad_out, self._saved(), indices=self.__dict__.get("_indices"),
                                                  **self._args())


_KINDS = {
    # class name: (base, op, argument names, defaults, doc)
    "MaxPool": (_MaxPool, "max_pool", ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
                dict(stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False),
                "{n}-D max pooling, as torch.nn.MaxPool{n}d. Input (N, C, {s})."),
    "AvgPool": (_Pool, "avg_pool", ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                    "divisor_override"),
                dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None),
                "{n}-D average pooling, as torch.nn.AvgPool{n}d. Input (N, C, {s})."),
    "LPPool": (_Pool, "lp_pool", ("norm_type", "kernel_size", "stride", "ceil_mode"),
               dict(stride=None, ceil_mode=False),
               "{n}-D power-average pooling, as torch.nn.LPPool{n}d. Input (N, C, {s})."),
    "AdaptiveAvgPool": (_Pool, "adaptive_avg_pool", ("output_size",), {},
                        "{n}-D adaptive average pooling, as torch.nn.AdaptiveAvgPool{n}d. Input (N, C, {s})."),
    "AdaptiveMaxPool": (_MaxPool, "adaptive_max_pool", ("output_size", "return_indices"),
                        dict(return_indices=False),
                        "{n}-D adaptive max pooling, as torch.nn.AdaptiveMaxPool{n}d. Input (N, C, {s})."),
}

__all__ = []
for _kind, (_base, _op, _names, _defaults, _doc) in _KINDS.items():
    for _n in (1, 2, 3):
        _name = f"{_kind}{_n}d"
        globals()[_name] = type(_name, (_base,), {
            "_op": f"{_op}{_n}d", "_names": _names, "_defaults": _defaults,
            "__doc__": _doc.format(n=_n, s=_SPATIAL[_n]), "__module__": __name__,
        })
        __all__.append(_name)
