"""``numbaconv.compile(model)``: a numbaconv ``nn`` model as an InferenceModel.

Each layer becomes the ONNX-named node an exporter would write for its torch twin (Conv2d a
Conv, BatchNorm2d a BatchNormalization, ...), so a compiled model goes through the same checks,
batch-norm folding, activation fusion and planning as an imported one. Containers are walked:
``Sequential`` in order, ``Residual`` as an Add of its two branches, and the zoo's ResNet and
BasicBlock as their forward reads. Parameters are copied: training the model afterwards does
not change the compiled one. A layer with no inference form here raises TypeError naming it.
"""

import numpy as np

from .. import models, nn
from .graph import Graph, Node, TensorInfo
from .model import InferenceModel


class _Builder:
    def __init__(self):
        self.nodes, self.constants = [], {}

    def const(self, name, value):
        self.constants[name] = np.array(value)
        return name

    def node(self, op, inputs, name, **attrs):
        out = f"{name}:{op}" if name else f"#{len(self.nodes)}:{op}"
        self.nodes.append(Node(op, list(inputs), [out], attrs, name))
        return out


def _pads(padding):
    return list(padding) * 2


def _conv(b, m, x, name):
    n = m._ndim
    if isinstance(m.padding, str):  # "valid", or "same" with PyTorch's split of an odd total
        spans = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        begin = [s // 2 if m.padding == "same" else 0 for s in spans]
        end = [s - bg if m.padding == "same" else 0 for s, bg in zip(spans, begin)]
    else:
        begin = end = list(m.padding)
    if m.padding_mode != "zeros":
        mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[m.padding_mode]
        pads = b.const(f"{name}.pads", np.array([0, 0, *begin, 0, 0, *end], np.int64))
        x = b.node("Pad", [x, pads], f"{name}.pad", mode=mode)
        begin = end = [0] * n
    inputs = [x, b.const(f"{name}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(b.const(f"{name}.bias", m.bias.data))
    return b.node("Conv", inputs, name, strides=list(m.stride), pads=[*begin, *end], dilations=list(m.dilation),
                  group=m.groups)


def _conv_transpose(b, m, x, name):
    inputs = [x, b.const(f"{name}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(b.const(f"{name}.bias", m.bias.data))
    return b.node("ConvTranspose", inputs, name, strides=list(m.stride), pads=_pads(m.padding),
                  output_padding=list(m.output_padding), dilations=list(m.dilation), group=m.groups)


def _batch_norm(b, m, x, name):
    if not m.track_running_stats:
        raise TypeError(f"compile: {name} ({type(m).__name__}) keeps no running statistics, so it normalizes with "
                        "each batch's own; it has no fixed inference form")
    dtype = m.running_mean.dtype
    scale, shift = (m.weight.data, m.bias.data) if m.affine else (np.ones(m.num_features, dtype),
                                                                 np.zeros(m.num_features, dtype))
    params = [b.const(f"{name}.{k}", v) for k, v in (("weight", scale), ("bias", shift),
                                                      ("running_mean", m.running_mean), ("running_var", m.running_var))]
    return b.node("BatchNormalization", [x, *params], name, epsilon=m.eps)


def _pool(b, m, x, name):
    kind = type(m).__name__[:-2]
    n = int(type(m).__name__[-2])
    k = _tuple(m.kernel_size, n)
    s = _tuple(m.stride, n)
    if kind == "MaxPool":
        if m.return_indices:
            raise TypeError(f"compile: {name} (MaxPool{n}d) returns indices; an inference graph has one output per node")
        return b.node("MaxPool", [x], name, kernel_shape=k, strides=s, pads=_pads(_tuple(m.padding, n)),
                      dilations=_tuple(m.dilation, n), ceil_mode=int(m.ceil_mode))
    if kind == "AvgPool":
        if m.divisor_override is not None:
            raise TypeError(f"compile: {name} (AvgPool{n}d) with divisor_override has no inference form")
        return b.node("AveragePool", [x], name, kernel_shape=k, strides=s, pads=_pads(_tuple(m.padding, n)),
                      ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad))
    p = float(m.norm_type)
    if not (p == np.inf or (p.is_integer() and p % 2 == 0)):  # the graph's LpPool sums |x| ** p, as ONNX
        raise TypeError(f"compile: {name} (LPPool{n}d) with norm_type={m.norm_type}: only even or infinite norms, "
                        "for which x ** p and |x| ** p agree")
    return b.node("LpPool", [x], name, kernel_shape=k, strides=s, p=p, ceil_mode=int(m.ceil_mode))


def _tuple(v, n):
    return list(v) if isinstance(v, (tuple, list)) else [int(v)] * n


def _adaptive(b, m, x, name):
    n = int(type(m).__name__[-2])
    size = _tuple(m.output_size, n)
    maximum = type(m).__name__.startswith("AdaptiveMax")
    if maximum and m.return_indices:
        raise TypeError(f"compile: {name} ({type(m).__name__}) returns indices; an inference graph has one output "
                        "per node")
    if all(v == 1 for v in size):
        return b.node("GlobalMaxPool" if maximum else "GlobalAveragePool", [x], name)
    if any(v is None for v in size):
        raise TypeError(f"compile: {name} ({type(m).__name__}) with output_size {m.output_size}: None sizes are not "
                        "supported")
    return b.node("AdaptiveMaxPool" if maximum else "AdaptiveAvgPool", [x], name, output_size=size)


def _flatten(b, m, x, name):
    if m.end_dim != -1 or m.start_dim < 0:
        raise TypeError(f"compile: {name} (Flatten) with start_dim={m.start_dim}, end_dim={m.end_dim}: only "
                        "start_dim >= 0 with end_dim=-1")
    if m.start_dim == 1:
        return b.node("Flatten", [x], name, axis=1)
    shape = b.const(f"{name}.shape", np.array([0] * m.start_dim + [-1], np.int64))
    return b.node("Reshape", [x, shape], name)


def _softmax(b, m, x, name):
    if m.dim is None:
        raise TypeError(f"compile: {name} ({type(m).__name__}) needs an explicit dim")
    return b.node(type(m).__name__, [x], name, axis=int(m.dim))


def _linear(b, m, x, name):
    inputs = [x, b.const(f"{name}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(b.const(f"{name}.bias", m.bias.data))
    return b.node("Linear", inputs, name)


def _lrn(b, m, x, name):
    if m.size % 2 == 0:
        raise TypeError(f"compile: {name} (LocalResponseNorm) with an even size={m.size} is not supported")
    return b.node("LRN", [x], name, size=m.size, alpha=float(m.alpha), beta=float(m.beta), bias=float(m.k))


def _basic_block(b, m, x, name):
    out = _convert(b, m.conv1, x, f"{name}.conv1")
    out = _convert(b, m.bn1, out, f"{name}.bn1")
    out = b.node("Relu", [out], f"{name}.relu")
    out = _convert(b, m.conv2, out, f"{name}.conv2")
    out = _convert(b, m.bn2, out, f"{name}.bn2")
    identity = x if m.downsample is None else _convert(b, m.downsample, x, f"{name}.downsample")
    return b.node("Relu", [b.node("Add", [out, identity], f"{name}.add")], f"{name}.relu_1")


def _resnet(b, m, x, name):
    for child in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
        x = _convert(b, getattr(m, child), x, _join(name, child))
    x = b.node("Flatten", [x], _join(name, "flatten"), axis=1)
    return _convert(b, m.fc, x, _join(name, "fc"))


def _residual(b, m, x, name):
    skip = x if m.shortcut is None else _convert(b, m.shortcut, x, _join(name, "shortcut"))
    return b.node("Add", [_convert(b, m.body, x, _join(name, "body")), skip], _join(name, "add"))


def _sequential(b, m, x, name):
    for child_name, child in m.named_children():
        x = _convert(b, child, x, _join(name, child_name))
    return x


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _simple(op, **attrs):
    def convert(b, m, x, name):
        return b.node(op, [x], name, **{k: float(getattr(m, v)) for k, v in attrs.items()})
    return convert


_CONVERTERS = [
    (models.BasicBlock, _basic_block), (models.ResNet, _resnet), (nn.Sequential, _sequential),
    (nn.Residual, _residual),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), _conv),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _conv_transpose),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), _batch_norm),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
      nn.LPPool1d, nn.LPPool2d, nn.LPPool3d), _pool),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
      nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), _adaptive),
    (nn.ReLU, _simple("Relu")), (nn.LeakyReLU, _simple("LeakyRelu", alpha="negative_slope")),
    (nn.ELU, _simple("Elu", alpha="alpha")), (nn.Sigmoid, _simple("Sigmoid")), (nn.Tanh, _simple("Tanh")),
    ((nn.Softmax, nn.LogSoftmax), _softmax), (nn.Flatten, _flatten), (nn.Linear, _linear),
    ((nn.Dropout, nn.Identity), _simple("Identity")), (nn.LocalResponseNorm, _lrn),
]


def _convert(b, module, x, name):
    for kinds, convert in _CONVERTERS:
        if isinstance(module, kinds):
            return convert(b, module, x, name)
    raise TypeError(f"compile: layer {name or 'model'} ({type(module).__name__}) has no inference form "
                    f"(supported: {', '.join(sorted({k.__name__ for ks, _ in _CONVERTERS for k in (ks if isinstance(ks, tuple) else (ks,))}))})")


def compile(model, input_shape=None):
    """The inference form of a numbaconv ``nn`` model (evaluation semantics: batch norm with its
    running statistics, dropout off), as an :class:`InferenceModel`.

    input_shape: the shape of one sample, (C, *spatial), or None. When given, the model is run
    once on a batch of one at compile time, so a shape error surfaces now; the batch size stays
    free. The input is named "input" and the output "output"; the dtype is the parameters'.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile: model must be a numbaconv.nn.Module, got {type(model).__name__}")
    params = [p.data for p in model.parameters()]
    dtype = params[0].dtype if params else np.dtype(np.float32)
    if input_shape is not None:
        if not isinstance(input_shape, (tuple, list)) or not all(isinstance(d, (int, np.integer)) and d > 0
                                                                 for d in input_shape):
            raise TypeError(f"compile: input_shape must be a tuple of positive ints (C, *spatial), got {input_shape!r}")
        input_shape = (None, *(int(d) for d in input_shape))
    b = _Builder()
    b.node("Identity", [_convert(b, model, "input", "")], "output")
    b.nodes[-1].outputs = ["output"]  # the name the caller sees; the Identity itself is optimized away
    graph = Graph(b.nodes, [TensorInfo("input", input_shape, dtype)], [TensorInfo("output", None, dtype)], b.constants)
    return InferenceModel(graph)
