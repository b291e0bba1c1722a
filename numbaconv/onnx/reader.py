"""Read an ONNX ModelProto into numbaconv's inference graph.

What is refused, always with a ValueError (or TypeError for a wrong argument) that names the
problem, before anything runs:

- bytes that do not parse as a ModelProto (a truncated or foreign file), a model with no graph,
  an opset of the default domain below 11;
- an op outside ``SUPPORTED_OPS`` or from another domain, an attribute the op does not take, a
  sub-graph attribute; the error names the op, the node and the attribute;
- a tensor whose data disagrees with its shape, of a data type numbaconv does not read, or
  stored as external data. External data would make loading open other files named by the
  model; numbaconv reads the one file (or buffer) it is given, so such a model is refused (save
  it with the weights inside: ``onnx.save(model, path, save_as_external_data=False)``);
- a dangling input, a value produced twice, a cycle (``inference.graph.check``), and inputs
  whose declared shapes the graph cannot run on (``InferenceModel``'s load-time run).

Nothing in a model file is executed: the protobuf holds data only, and every tensor is copied
out of it with NumPy.
"""

import math
import os

import numpy as np

from ..inference.graph import Graph, GraphError, Node, TensorInfo
from ..inference.model import InferenceModel
from ..inference.ops import OPS, REQUIRED

MIN_OPSET = 11

SUPPORTED_OPS = tuple(sorted(OPS))

# TensorProto.DataType -> numpy dtype, and the typed field that holds it when raw_data is empty
_DTYPES = {
    1: (np.float32, "float_data"), 11: (np.float64, "double_data"), 7: (np.int64, "int64_data"),
    6: (np.int32, "int32_data"), 3: (np.int8, "int32_data"), 2: (np.uint8, "int32_data"),
    5: (np.int16, "int32_data"), 9: (np.bool_, "int32_data"),
}
_TYPE_NAMES = {0: "UNDEFINED", 8: "STRING", 10: "FLOAT16", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64",
               15: "COMPLEX128", 16: "BFLOAT16"}
_INPUT_DTYPES = {1: np.dtype(np.float32), 11: np.dtype(np.float64)}
_EXTERNAL = 1  # TensorProto.EXTERNAL


def _parse(data):
    try:
        import onnx  # the protobuf parser, imported only when a model is read
    except ImportError:
        raise ImportError("numbaconv.onnx.load needs the onnx package to parse the file: "
                          "python -m pip install 'numbaconv[onnx]'") from None

    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(data))
    except Exception as e:  # google.protobuf's DecodeError, and RuntimeError from the C++ parser
        raise ValueError(f"numbaconv.onnx.load: not a valid ONNX model, the protobuf does not parse "
                         f"({type(e).__name__}: {e}); the file may be truncated or of another format") from None
    if not model.HasField("graph") or not len(model.graph.node) and not len(model.graph.output):
        raise ValueError("numbaconv.onnx.load: not a valid ONNX model: it has no graph (empty, truncated or "
                         "another format)")
    return model


def _read_bytes(path_or_bytes):
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes)
    if isinstance(path_or_bytes, (str, os.PathLike)):
        path = os.fspath(path_or_bytes)
        if not os.path.isfile(path):
            raise ValueError(f"numbaconv.onnx.load: {path!r} is not a file")
        with open(path, "rb") as f:
            return f.read()
    raise TypeError(f"numbaconv.onnx.load: path_or_bytes must be a path or bytes, got {type(path_or_bytes).__name__}")


def tensor(proto, what=None):
    """A TensorProto as a new ndarray (never a view of the protobuf's memory)."""
    what = what or f"tensor {proto.name!r}"
    if proto.data_location == _EXTERNAL or len(proto.external_data):
        where = {e.key: e.value for e in proto.external_data}.get("location", "?")
        raise ValueError(f"{what} is stored as external data (in {where!r}); numbaconv reads only the model file "
                         "itself: save the model with its weights inside")
    if proto.HasField("segment"):
        raise ValueError(f"{what} is segmented; segmented tensors are not supported")
    if proto.data_type not in _DTYPES:
        name = _TYPE_NAMES.get(proto.data_type, str(proto.data_type))
        raise ValueError(f"{what} has data type {name}, which numbaconv does not read "
                         f"(it reads {', '.join(np.dtype(d).name for d, _ in _DTYPES.values())})")
    dtype, field = _DTYPES[proto.data_type]
    dims = tuple(proto.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} has a negative dimension: shape {dims}")
    count = math.prod(dims)
    if proto.raw_data:
        raw = proto.raw_data
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise ValueError(f"{what}: its shape {dims} needs {count * np.dtype(dtype).itemsize} bytes of "
                             f"{np.dtype(dtype).name} data, the file holds {len(raw)}")
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(dims)
    values = getattr(proto, field)
    if len(values) != count:
        raise ValueError(f"{what}: its shape {dims} needs {count} values, the file holds {len(values)}")
    return np.array(values, dtype=np.int64 if field == "int32_data" and dtype != np.bool_ else dtype).astype(dtype).reshape(dims)


def _attribute(a, node_name, op):
    kind = a.type
    if kind == 1:
        return float(a.f)
    if kind == 2:
        return int(a.i)
    if kind == 3:
        return a.s.decode("utf-8", errors="replace")
    if kind == 4:
        return tensor(a.t, f"attribute {a.name!r} of node {node_name!r} ({op})")
    if kind == 6:
        return [float(v) for v in a.floats]
    if kind == 7:
        return [int(v) for v in a.ints]
    if kind == 8:
        return [s.decode("utf-8", errors="replace") for s in a.strings]
    raise GraphError(f"node {node_name!r} ({op}): attribute {a.name!r} of type {kind} (a graph or sparse tensor) "
                     "is not supported")


def _opset(model):
    versions = {entry.domain: entry.version for entry in model.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None:
        raise ValueError("numbaconv.onnx.load: the model imports no opset of the default ONNX domain")
    if version < MIN_OPSET:
        raise ValueError(f"numbaconv.onnx.load: opset {version} is not supported; numbaconv reads opset "
                         f"{MIN_OPSET} and later (convert with onnx.version_converter)")
    return version


def _value_info(v, what):
    t = v.type
    if not t.HasField("tensor_type"):
        raise GraphError(f"{what} {v.name!r} is not a tensor")
    elem = t.tensor_type.elem_type
    if what == "graph input" and elem not in _INPUT_DTYPES:
        raise GraphError(f"graph input {v.name!r} has element type {_TYPE_NAMES.get(elem, elem)}; numbaconv runs "
                         "float32 and float64 models")
    shape = None
    if t.tensor_type.HasField("shape"):
        shape = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in t.tensor_type.shape.dim)
    return TensorInfo(v.name, shape, _INPUT_DTYPES.get(elem))


def _node(n, opset, constants, index):
    name = n.name or f"#{index}"
    op = n.op_type
    if n.domain not in ("", "ai.onnx"):
        raise GraphError(f"node {name!r}: unsupported op {n.domain}::{op}")
    attrs = {a.name: _attribute(a, name, op) for a in n.attribute}
    for a in n.attribute:
        if a.ref_attr_name:
            raise GraphError(f"node {name!r} ({op}): attribute {a.name!r} refers to a function attribute")
    if op == "Constant":
        return _constant(name, n, attrs, constants)
    if op not in OPS:
        raise GraphError(f"node {name!r}: unsupported op {op!r} (numbaconv runs {', '.join(SUPPORTED_OPS)})")
    inputs = list(n.input)
    if op == "Conv" and len(inputs) > 3:  # (the graph's Conv takes a fourth, the optimizer's residual)
        raise GraphError(f"node {name!r} (Conv): takes 2 to 3 inputs, got {len(inputs)}")
    axes_became_input = {"Squeeze": 13, "Unsqueeze": 13, "ReduceMean": 18, "ReduceMax": 18}
    if opset < axes_became_input.get(op, 0) and "axes" in attrs:  # later opsets: an input
        constants[f"{name}/axes"] = np.array(attrs.pop("axes"), dtype=np.int64)
        inputs = inputs[:1] + [f"{name}/axes"]
    if op in ("Softmax", "LogSoftmax") and opset < 13:  # earlier opsets flatten to 2-D at axis (default 1)
        attrs.setdefault("axis", 1)
        attrs["coerce_2d"] = 1
    if op == "Dropout":
        attrs.pop("ratio", None)  # opset 11's attribute; the ratio does nothing at inference
    defaults = OPS[op][1]
    allowed = set(defaults) | ({"coerce_2d"} if op in ("Softmax", "LogSoftmax") else set())
    for key in attrs:
        if key not in allowed:
            raise GraphError(f"node {name!r} ({op}): unsupported attribute {key!r} (supported: "
                             f"{', '.join(sorted(defaults)) or 'none'})")
    for key, default in defaults.items():
        if default is REQUIRED and key not in attrs:
            raise GraphError(f"node {name!r} ({op}): required attribute {key!r} is missing")
    return Node(op, inputs, list(n.output), attrs, name)


def _constant(name, n, attrs, constants):
    if len(attrs) != 1:
        raise GraphError(f"node {name!r} (Constant): needs exactly one value attribute, got {sorted(attrs)}")
    (key, value), = attrs.items()
    makers = {"value": lambda v: v, "value_float": lambda v: np.array(v, np.float32),
              "value_floats": lambda v: np.array(v, np.float32), "value_int": lambda v: np.array(v, np.int64),
              "value_ints": lambda v: np.array(v, np.int64)}
    if key not in makers:
        raise GraphError(f"node {name!r} (Constant): unsupported attribute {key!r} (supported: {', '.join(makers)})")
    if len(n.output) != 1 or not n.output[0]:
        raise GraphError(f"node {name!r} (Constant): needs one output")
    if n.output[0] in constants:
        raise GraphError(f"node {name!r} (Constant): output {n.output[0]!r} is already a constant")
    constants[n.output[0]] = makers[key](value)
    return None


def read_graph(model):
    """A parsed ModelProto as an inference ``Graph`` (unchecked, unoptimized)."""
    opset = _opset(model)
    g = model.graph
    constants = {}
    for t in g.initializer:
        if t.name in constants:
            raise GraphError(f"initializer {t.name!r} is given twice")
        constants[t.name] = tensor(t, f"initializer {t.name!r}")
    if len(g.sparse_initializer):
        raise GraphError("sparse initializers are not supported")
    inputs = [_value_info(v, "graph input") for v in g.input if v.name not in constants]
    outputs = [_value_info(v, "graph output") for v in g.output]
    nodes = [node for i, n in enumerate(g.node) if (node := _node(n, opset, constants, i)) is not None]
    read = {name for node in nodes for name in node.inputs} | {o.name for o in outputs}
    for node in nodes:  # MaxPool's indices, Dropout's mask, training-mode statistics
        for extra in node.outputs[1:]:
            if extra and extra in read:
                raise GraphError(f"{node.describe()}: output {extra!r} (the op's optional output number "
                                 f"{node.outputs.index(extra) + 1}) is not supported")
        node.outputs = node.outputs[:1]
    return Graph(nodes, inputs, outputs, constants)


def load(path_or_bytes):
    """Load an ONNX model (a path, or the file's bytes) as an InferenceModel.

    ``model(x)`` runs a one-input one-output model; ``model.run({name: x})`` returns every output
    by name; ``model.inputs`` / ``model.outputs`` give names, shapes (None for the batch or any
    size fixed at run time) and dtypes. The graph is checked, optimized (batch norm folded into
    convolutions, activations fused into them, weights pre-packed) and run once on a batch of
    one before it is returned, so a model that cannot run fails here.
    """
    return InferenceModel(read_graph(_parse(_read_bytes(path_or_bytes))))
