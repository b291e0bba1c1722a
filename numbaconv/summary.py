"""summary(model, input_shape): a layer-by-layer table of output shapes, parameters,
multiply-accumulates and connections, from one forward pass on zeros.

Numbers are per sample (batch 1). For the layers with weights:

* MACs (multiply-accumulates): Conv: out_elements * in_channels / groups * prod(kernel_size);
  ConvTranspose: in_elements * out_channels / groups * prod(kernel_size); Linear:
  out_elements * in_features. Every other layer: 0.
* connections, as the lecture counts them: each output neuron connects to the inputs its
  weights read, plus one for its bias: MACs + out_elements when the layer has a bias. LeNet's
  first conv on 32x32x1 with six 5x5 filters: 28 * 28 * 6 * (25 + 1) = 122,304.
"""

import math
import sys
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np

from .nn import conv as _conv
from .nn.linear import Linear
from .nn.module import _CALL_HOOKS, Module, check_dtype

__all__ = ["summary", "Summary", "LayerSummary"]


@dataclass
class LayerSummary:
    """One call of a leaf module (a module without children) in the forward pass.

    name: its dotted name in the model ("features.0"); type: its class name; output_shape: the
    shape of one sample's output (no batch dimension); params: its parameters' element count;
    macs, connections: see the module docstring.
    """

    name: str
    type: str
    output_shape: tuple
    params: int
    macs: int
    connections: int

    @property
    def outputs(self):
        """Elements of one sample's output: the layer's neurons (28 * 28 * 6 = 4,704)."""
        return math.prod(self.output_shape)


@dataclass
class Summary:
    """What summary found: ``rows`` (a LayerSummary per leaf call, in call order), the totals,
    and the shapes of one sample's input and the model's output. ``str()`` is the table."""

    input_shape: tuple
    output_shape: tuple
    rows: list = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0
    total_connections: int = 0

    @property
    def non_trainable_params(self):
        return self.total_params - self.trainable_params

    def __str__(self):
        head = ("Layer (type)", "Output shape", "Param #", "MACs", "Connections")
        body = [(f"{r.name} ({r.type})" if r.name else r.type, _shape(r.output_shape), f"{r.params:,}",
                 f"{r.macs:,}", f"{r.connections:,}") for r in self.rows]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

        def fmt(line):
            return "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(line, widths))).rstrip()

        rule = "-" * len(fmt(head))
        lines = [rule, fmt(head), "=" * len(rule), *map(fmt, body), "=" * len(rule),
                 f"Input shape: {_shape(self.input_shape)} per sample, output shape: {_shape(self.output_shape)}",
                 f"Total params: {self.total_params:,}",
                 f"Trainable params: {self.trainable_params:,}",
                 f"Non-trainable params: {self.non_trainable_params:,}",
                 f"Total MACs: {self.total_macs:,} per sample",
                 f"Total connections: {self.total_connections:,}",
                 rule]
        return "\n".join(lines)


def _shape(shape):
    return str(tuple(int(d) for d in shape))


def _check_input_shape(input_shape):
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__"):
        raise TypeError(f"summary: input_shape must be a tuple of ints, one sample's shape without the batch "
                        f"dimension, e.g. (3, 224, 224); got {input_shape!r}")
    shape = tuple(input_shape)
    if not shape:
        raise ValueError("summary: input_shape must not be empty; give one sample's shape, e.g. (3, 224, 224)")
    for d in shape:
        if not isinstance(d, Integral) or isinstance(d, (bool, np.bool_)):
            raise TypeError(f"summary: input_shape must hold ints, got {input_shape!r}")
        if d < 1:
            raise ValueError(f"summary: input_shape must hold positive sizes, got {input_shape!r}")
    return tuple(int(d) for d in shape)


def _first_array(out):
    """The output array of a call (the first array of a tuple such as (values, indices))."""
    if isinstance(out, np.ndarray):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, np.ndarray):
                return item
    return None


def _counts(module, inputs, out):
    """(macs, connections) of one call of ``module``: nonzero for convolutions and Linear."""
    if isinstance(module, _conv._ConvBase):
        kernel = math.prod(module.kernel_size)
        if module._transposed:
            macs = inputs[0].size * module.out_channels // module.groups * kernel
        else:
            macs = out.size * module.in_channels // module.groups * kernel
    elif isinstance(module, Linear):
        macs = out.size * module.in_features
    else:
        return 0, 0
    return macs, macs + (out.size if module.bias is not None else 0)


def summary(model, input_shape, dtype=None, file=None, print_table=True):
    """Run ``model`` once in eval mode on zeros of shape (1, *input_shape) and tabulate its leaf
    modules in call order: name, output shape, parameters, MACs and connections (per sample).

    input_shape: one sample's shape without the batch dimension, as torchsummary takes it:
    (C, H, W) for 2-D nets, (C, L) for 1-D, (C, D, H, W) for 3-D, (features,) for a Linear;
    batch 1 is implied. dtype: of the zeros; None (the default) takes the dtype of the model's
    parameters (float32 when it has none). file: where to print (default sys.stdout);
    print_table=False only returns the result.

    The model is left as it was: the training/eval mode of every module and what each keeps
    for its backward are restored, running statistics are untouched (eval mode), and the
    recording hook is removed, also when the forward pass raises.

    Returns a :class:`Summary` whose ``str()`` is the printed table.
    """
    if not isinstance(model, Module):
        raise TypeError(f"summary: model must be a numbaconv.nn.Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    if dtype is None:
        dtype = next((p.data.dtype for p in model.parameters()), np.dtype(np.float32))
    dtype = check_dtype("summary", dtype)

    names = {id(module): name for name, module in model.named_modules()}
    rows = []

    def record(module, inputs, out):
        if any(child is not None for child in module._modules.values()):
            return  # containers: their leaves have a row each
        array = _first_array(out)
        if array is None:
            return
        macs, connections = _counts(module, inputs, array)
        params = sum(p.size for p in module.parameters(recurse=False))
        rows.append(LayerSummary(names.get(id(module), ""), type(module).__name__, tuple(array.shape[1:]),
                                 int(params), int(macs), int(connections)))

    saved = [(module, dict(module.__dict__)) for module in model.modules()]
    _CALL_HOOKS.append(record)
    try:
        model.eval()
        x = np.zeros((1, *shape), dtype=dtype)
        try:
            out = model(x)
        except Exception as e:
            e.add_note(f"summary: the forward pass ran on shape {(1, *shape)}: input_shape is one sample's "
                       "shape without the batch dimension (batch 1 is implied)")
            raise
    finally:
        _CALL_HOOKS.remove(record)
        for module, state in saved:  # modes and the state kept for backward, as they were
            module.__dict__.clear()
            module.__dict__.update(state)

    out = _first_array(out)
    params = list(model.parameters())
    result = Summary(
        input_shape=shape,
        output_shape=() if out is None else tuple(out.shape[1:]),
        rows=rows,
        total_params=int(sum(p.size for p in params)),
        trainable_params=int(sum(p.size for p in params if p.requires_grad)),
        total_macs=int(sum(r.macs for r in rows)),
        total_connections=int(sum(r.connections for r in rows)),
    )
    if print_table:
        print(result, file=sys.stdout if file is None else file)
    return result
