"""numbaconv.onnx: models exported from PyTorch and graphs built by hand, run next to ONNX
Runtime; and the loader's refusals (truncated or malformed files, cycles, dangling inputs,
tensors whose data disagree with their shape, unsupported ops and attributes, external data).

Every comparison is against ONNX Runtime on the same bytes, within 1e-4 of the output's scale
(its largest magnitude). The PyTorch models (tests/onnx_models.py) have random weights and
random batch-norm statistics, so folding them changes the weights.
"""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import numbaconv  # noqa: E402
import numbaconv.cli  # noqa: E402
import numbaconv.onnx as nco  # noqa: E402
from conftest import assert_close  # noqa: E402
from numbaconv.inference import GraphError  # noqa: E402

RTOL = 1e-4


def reference(data, feeds):
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def assert_matches_ort(data, feeds, model=None):
    """numbaconv's outputs equal ONNX Runtime's within RTOL of each output's largest magnitude."""
    model = nco.load(data) if model is None else model
    got = model.run(feeds)
    want = reference(data, feeds)
    assert set(got) == set(want)
    for name, ref in want.items():
        scale = np.full(ref.shape, max(float(np.max(np.abs(ref), initial=0.0)), 1e-30))
        assert_close(got[name], ref.astype(np.float64), scale * (RTOL / 1e-4), what=f"output {name}")
    return model


# --------------------------------------------------------------------------- models from PyTorch


def models():
    """tests/onnx_models.py, or a skip when torch is not importable."""
    pytest.importorskip("torch")
    import onnx_models

    return onnx_models


TORCH_MODELS = {  # name: (builder in onnx_models, input shape)
    "lenet5": ("lenet", (3, 1, 32, 32)),
    "vgg_style": ("vgg_style", (2, 3, 32, 32)),
    "mobilenet_block": ("mobilenet_block", (2, 3, 32, 32)),
    "conv1d": ("conv1d_net", (3, 2, 64)),
    "conv3d": ("conv3d_net", (2, 1, 8, 12, 8)),
    "decoder": ("decoder", (2, 3, 10, 12)),
    "resnet18_32x32": ("torch_resnet18", (2, 3, 32, 32)),
}


@pytest.mark.parametrize("fold", [True, False], ids=["exporter-folded", "batchnorm-kept"])
@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_torch_models_match_onnxruntime(name, fold):
    m = models()
    torch = m.torch
    torch.manual_seed(0)
    builder, shape = TORCH_MODELS[name]
    module = m.randomize(getattr(m, builder)())
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    data = m.export(module, x, fold=fold)
    model = assert_matches_ort(data, {"x": x})
    ops = [n.op for n in model.graph.nodes]
    assert "BatchNormalization" not in ops, "every batch norm follows a convolution and is folded into it"
    assert "Identity" not in ops
    # the batch size is free: another batch runs through the same model
    x2 = np.random.default_rng(2).standard_normal((1, *shape[1:])).astype(np.float32)
    assert_matches_ort(data, {"x": x2}, model)
    with torch.no_grad():  # and the exported graph is PyTorch's model
        ref = module(torch.from_numpy(x)).numpy()
    assert_close(model(x), ref.astype(np.float64), np.full(ref.shape, np.abs(ref).max()), what="against PyTorch")


def test_activations_fused_into_convolutions():
    m = models()
    x = np.zeros((1, 3, 16, 16), np.float32)
    model = nco.load(m.export(m.randomize(m.mobilenet_block()), x, fold=False))
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    fused = [n.attrs.get("epilogue") for n in convs]
    assert fused.count((1.0, 0.0, 6.0)) == 6, fused  # every Conv + BN + ReLU6 became one Conv
    assert not any(n.op in ("Clip", "Relu") for n in model.graph.nodes)


def test_full_size_resnet18_batch_1():
    m = models()
    m.torch.manual_seed(0)
    module = m.randomize(m.torch_resnet18())
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert_matches_ort(m.export(module, x), {"x": x})


@pytest.mark.parametrize("builder, shape", [("mobilenet_block", (2, 3, 16, 16)), ("conv3d_net", (2, 1, 8, 12, 8))])
def test_default_exporter(builder, shape):
    m = models()
    m.torch.manual_seed(0)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    data = m.export_dynamo(m.randomize(getattr(m, builder)()), x)
    model = assert_matches_ort(data, {"x": x})
    assert_matches_ort(data, {"x": x[:1]}, model)


def test_opset_11_export():
    m = models()
    x = np.random.default_rng(4).standard_normal((2, 2, 64)).astype(np.float32)
    assert_matches_ort(m.export(m.randomize(m.conv1d_net()), x, opset=11), {"x": x})


# --------------------------------------------------------------------------- graphs built by hand


def make(nodes, inputs, outputs, initializers=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model.SerializeToString()


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


R = np.random.default_rng(5)


def rand(*shape):
    return R.standard_normal(shape).astype(np.float32)


def _single(op, x_shape, y_shape, opset=13, inits=(), extra_inputs=(), **attrs):
    node = helper.make_node(op, ["x", *extra_inputs], ["y"], name=f"the_{op.lower()}", **attrs)
    return make([node], [vi("x", x_shape)], [vi("y", y_shape)], inits, opset), {"x": rand(*x_shape)}


def _case_lppool():
    return _single("LpPool", [2, 3, 9, 8], None, kernel_shape=[3, 2], strides=[2, 2], p=3, pads=[1, 0, 1, 1])


def _case_lppool_p2():
    return _single("LpPool", [2, 3, 9, 8], None, kernel_shape=[2, 2], p=2)


def _case_lrn():
    return _single("LRN", [2, 7, 5, 5], None, size=3, alpha=0.3, beta=0.6, bias=1.5)


def _case_global_max_pool():
    return _single("GlobalMaxPool", [2, 3, 5, 4, 3], None)


def _case_conv_transpose_asymmetric():
    w = rand(3, 2, 3, 3)
    return _single("ConvTranspose", [2, 3, 5, 4], None, inits=[init("w", w), init("b", rand(2))],
                   extra_inputs=["w", "b"], strides=[2, 3], pads=[0, 1, 2, 1], output_padding=[1, 0])


def _case_conv_transpose_output_shape():
    w = rand(4, 3, 3, 3)
    return _single("ConvTranspose", [1, 4, 5, 5], None, inits=[init("w", w)], extra_inputs=["w"], strides=[2, 2],
                   output_shape=[10, 9], group=1)


def _case_conv_transpose_grouped_1d():
    return _single("ConvTranspose", [2, 4, 7], None, inits=[init("w", rand(4, 3, 4))], extra_inputs=["w"],
                   strides=[3], group=2, dilations=[2])


def _case_conv_same_upper():
    return _single("Conv", [2, 3, 9, 10], None, inits=[init("w", rand(5, 3, 4, 3))], extra_inputs=["w"],
                   strides=[2, 2], auto_pad="SAME_UPPER")


def _case_conv_asymmetric_pads():
    return _single("Conv", [2, 4, 9, 10], None, inits=[init("w", rand(4, 2, 3, 3)), init("b", rand(4))],
                   extra_inputs=["w", "b"], pads=[0, 2, 1, 0], group=2)


def _case_max_pool_same_lower():
    return _single("MaxPool", [2, 3, 7, 8], None, kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER")


def _case_max_pool_ceil_dilated():
    return _single("MaxPool", [2, 3, 11, 10], None, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                   dilations=[2, 1], ceil_mode=1)


def _case_average_pool():
    return _single("AveragePool", [2, 3, 7, 8], None, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                   count_include_pad=0)


def _case_average_pool_asymmetric():
    return _single("AveragePool", [2, 3, 7, 8], None, kernel_shape=[3, 2], strides=[1, 2], pads=[0, 1, 2, 0],
                   count_include_pad=1)


def _case_pad_modes():
    nodes = [helper.make_node("Pad", ["x", "p"], ["a"], mode="reflect"),
             helper.make_node("Pad", ["x", "p"], ["b"], mode="edge"),
             helper.make_node("Pad", ["x", "p", "v"], ["c"], mode="constant")]
    p = init("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))
    v = init("v", np.array(0.5, np.float32))
    data = make(nodes, [vi("x", [2, 3, 4, 5])], [vi("a", None), vi("b", None), vi("c", None)], [p, v])
    return data, {"x": rand(2, 3, 4, 5)}


def _case_squeeze_unsqueeze_opset11():
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
             helper.make_node("Squeeze", ["u"], ["y"], axes=[0])]
    return make(nodes, [vi("x", [2, 3, 4])], [vi("y", None)], opset=11), {"x": rand(2, 3, 4)}


def _case_squeeze_unsqueeze_opset13():
    nodes = [helper.make_node("Constant", [], ["axes"], value=init("", np.array([1, -1], np.int64))),
             helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
             helper.make_node("Squeeze", ["u", "axes"], ["y"])]
    return make(nodes, [vi("x", [2, 3, 4])], [vi("y", None)]), {"x": rand(2, 3, 4)}


def _case_arithmetic():
    nodes = [helper.make_node("Constant", [], ["c"], value_float=1.5),
             helper.make_node("Sub", ["x", "c"], ["s"]),
             helper.make_node("Div", ["s", "d"], ["q"]),
             helper.make_node("Mul", ["q", "x"], ["m"]),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    d = init("d", (np.abs(rand(1, 4)) + 0.5))
    return make(nodes, [vi("x", [2, 3, 4])], [vi("y", None)], [d, init("w", rand(4, 6))]), {"x": rand(2, 3, 4)}


def _case_integer_div():
    """Integer Div rounds toward zero (shape arithmetic in exported graphs)."""
    nodes = [helper.make_node("Div", ["n", "d"], ["q"]), helper.make_node("Reshape", ["x", "q"], ["y"])]
    inits = [init("n", np.array([-4, 7], np.int64)), init("d", np.array([3, 2], np.int64))]  # [-1, 3]; floor: [-2, 3]
    return make(nodes, [vi("x", [2, 3, 2])], [vi("y", None)], inits), {"x": rand(2, 3, 2)}


def _case_cast_gather():
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
             helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Gather", ["f", "idx"], ["y"], axis=-1)]
    idx = init("idx", np.array([[2, 0], [-1, 1]], np.int64))
    return make(nodes, [vi("x", [2, 3, 4])], [vi("y", None)], [idx]), {"x": 3 * rand(2, 3, 4)}


def _case_gemm_transposed():
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.5, beta=2.0, transA=1, transB=1)
    return (make([node], [vi("a", [4, 3])], [vi("y", None)], [init("b", rand(5, 4)), init("c", rand(3, 5))]),
            {"a": rand(4, 3)})


def _case_gemm_packed():
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.5, beta=2.0)
    return (make([node], [vi("a", ["N", 4])], [vi("y", None)], [init("b", rand(4, 5)), init("c", rand(5))]),
            {"a": rand(3, 4)})


def _case_softmax_opset11():
    nodes = [helper.make_node("Softmax", ["x"], ["a"]),  # opset 11: flattened to 2-D at axis 1
             helper.make_node("LogSoftmax", ["x"], ["b"], axis=2)]
    return make(nodes, [vi("x", [2, 3, 4])], [vi("a", None), vi("b", None)], opset=11), {"x": rand(2, 3, 4)}


def _case_shapes():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["r"]),
             helper.make_node("Concat", ["r", "r"], ["c"], axis=1),
             helper.make_node("Flatten", ["c"], ["f"], axis=2),
             helper.make_node("Clip", ["f", "lo", "hi"], ["y"])]
    inits = [init("shape", np.array([0, -1, 3], np.int64)), init("lo", np.array(-0.5, np.float32)),
             init("hi", np.array(0.7, np.float32))]
    return make(nodes, [vi("x", ["N", 3, 4, 5])], [vi("y", None)], inits), {"x": rand(2, 3, 4, 5)}


def _case_elementwise():
    nodes = [helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.2),
             helper.make_node("Sigmoid", ["a"], ["b"]),
             helper.make_node("Tanh", ["x"], ["c"]),
             helper.make_node("Add", ["b", "c"], ["d"]),
             helper.make_node("Elu", ["d"], ["e"], alpha=0.7),
             helper.make_node("Relu", ["e"], ["f"]),
             helper.make_node("Dropout", ["f"], ["g"]),
             helper.make_node("Identity", ["g"], ["y"])]
    return make(nodes, [vi("x", [2, 5, 6])], [vi("y", None)]), {"x": rand(2, 5, 6)}


def _case_reduce_opset13():
    nodes = [helper.make_node("ReduceMean", ["x"], ["a"], axes=[2, 3]),
             helper.make_node("ReduceMax", ["x"], ["b"], axes=[1, -1], keepdims=0),
             helper.make_node("ReduceMean", ["x"], ["c"])]
    return make(nodes, [vi("x", [2, 3, 4, 5])], [vi("a", None), vi("b", None), vi("c", None)]), {"x": rand(2, 3, 4, 5)}


def _case_reduce_opset18():
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["a"]),
             helper.make_node("ReduceMax", ["x", "axes"], ["b"], keepdims=0)]
    axes = init("axes", np.array([2, 3, 4], np.int64))
    return (make(nodes, [vi("x", [2, 3, 4, 5, 2])], [vi("a", None), vi("b", None)], [axes], opset=18),
            {"x": rand(2, 3, 4, 5, 2)})


def _case_batchnorm_alone():
    c = 4
    inits = [init("s", rand(c)), init("b", rand(c)), init("m", rand(c)), init("v", np.abs(rand(c)) + 0.1)]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    return make([node], [vi("x", [2, c, 5])], [vi("y", None)], inits), {"x": rand(2, c, 5)}


HAND_BUILT = {name[len("_case_"):]: f for name, f in sorted(globals().items()) if name.startswith("_case_")}


@pytest.mark.parametrize("case", list(HAND_BUILT))
def test_hand_built_graphs_match_onnxruntime(case):
    data, feeds = HAND_BUILT[case]()
    assert_matches_ort(data, feeds)


def test_model_interface(tmp_path):
    data, feeds = _case_gemm_packed()
    path = tmp_path / "gemm.onnx"
    path.write_bytes(data)
    model = nco.load(str(path))
    assert [(i.name, i.shape, i.dtype) for i in model.inputs] == [("a", (None, 4), np.float32)]
    assert [(o.name, o.shape) for o in model.outputs] == [("y", (None, 5))]
    a = feeds["a"]
    before = a.copy()
    out = model(a)
    np.testing.assert_array_equal(out, model.run({"a": a})["y"])
    np.testing.assert_array_equal(a, before)  # inputs are never modified
    assert out.flags.c_contiguous and out.flags.writeable
    assert [n.op for n in model.graph.nodes] == ["Linear"]  # alpha, beta and C packed into the weights


def test_outputs_never_alias_inputs_or_weights():
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["w"], ["z"])]
    data = make(nodes, [vi("x", [2])], [vi("y", None), vi("z", None)], [init("w", rand(3))])
    model = nco.load(data)
    x = rand(2)
    out = model.run({"x": x})
    out["y"][:] = 7
    out["z"][:] = 7
    np.testing.assert_array_equal(model.run({"x": x})["z"], reference(data, {"x": x})["z"])
    assert not np.any(x == 7)


def test_run_argument_errors():
    data, feeds = _case_conv_same_upper()
    model = nco.load(data)
    x = feeds["x"]
    with pytest.raises(TypeError, match="'x' must have dtype float32, got float64"):
        model(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"'x' must have shape \(2, 3, 9, 10\), got \(2, 3, 9, 11\)"):
        model(np.zeros((2, 3, 9, 11), np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        model(x.tolist())
    with pytest.raises(ValueError, match="missing"):
        model.run({"other": x})


# --------------------------------------------------------------------------- safety


@pytest.fixture(scope="module")
def lenet_bytes():
    """A LeNet-sized model built by hand (no torch needed): conv, relu, pool, gemm."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[5, 5]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p1"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1)]
    inits = [init("w1", rand(6, 1, 5, 5)), init("b1", rand(6)), init("w2", rand(10, 6 * 14 * 14)), init("b2", rand(10))]
    return make(nodes, [vi("x", ["N", 1, 32, 32])], [vi("y", ["N", 10])], inits)


def test_lenet_bytes_load(lenet_bytes):
    assert_matches_ort(lenet_bytes, {"x": rand(2, 1, 32, 32)})


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.9995])
def test_truncated_file_is_refused(lenet_bytes, fraction):
    with pytest.raises(ValueError):
        nco.load(lenet_bytes[:int(len(lenet_bytes) * fraction)])


@pytest.mark.parametrize("data", [b"", b"\x00" * 64, b"PK\x03\x04 a zip, not a model", bytes(range(256)) * 8,
                                  b"\x80\x04\x95 a pickle stream"], ids=["empty", "zeros", "zip", "bytes", "pickle"])
def test_malformed_bytes_are_refused(data):
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        nco.load(data)


def test_load_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="path or bytes"):
        nco.load(123)
    with pytest.raises(ValueError, match="is not a file"):
        nco.load(str(tmp_path))


def test_cycle_is_refused():
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="first"), helper.make_node("Add", ["a", "x"], ["b"], name="second")]
    with pytest.raises(GraphError, match="cycle through node 'first'"):
        nco.load(make(nodes, [vi("x", [2])], [vi("b", None)]))


def test_dangling_input_is_refused():
    nodes = [helper.make_node("Add", ["x", "nowhere"], ["y"], name="adder")]
    with pytest.raises(GraphError, match="node 'adder' \\(Add\\): input 'nowhere' .* dangling"):
        nco.load(make(nodes, [vi("x", [2])], [vi("y", None)]))


def test_value_produced_twice_is_refused():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="one"), helper.make_node("Tanh", ["x"], ["y"], name="two")]
    with pytest.raises(GraphError, match="node 'two' \\(Tanh\\): output 'y' is already produced"):
        nco.load(make(nodes, [vi("x", [2])], [vi("y", None)]))


def test_missing_graph_output_is_refused():
    with pytest.raises(GraphError, match="graph output 'z'"):
        nco.load(make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("z", None)]))


def _bad_tensor(**fields):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 3])
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(t, key).extend(value)
        else:
            setattr(t, key, value)
    return t


@pytest.mark.parametrize("tensor, match", [
    (_bad_tensor(float_data=[1.0] * 5), r"initializer 'w': its shape \(2, 3\) needs 6 values, the file holds 5"),
    (_bad_tensor(raw_data=b"\x00" * 20), r"needs 24 bytes of float32 data, the file holds 20"),
    (TensorProto(name="w", data_type=TensorProto.STRING, dims=[1], string_data=[b"x"]), "data type STRING"),
    (TensorProto(name="w", data_type=TensorProto.FLOAT16, dims=[1], int32_data=[0]), "data type FLOAT16"),
], ids=["float_data", "raw_data", "string", "float16"])
def test_tensor_data_disagreeing_with_shape_is_refused(tensor, match):
    data = make([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [2, 3])], [vi("y", None)], [tensor])
    with pytest.raises(ValueError, match=match):
        nco.load(data)


def test_external_data_is_refused(tmp_path):
    secret = tmp_path / "weights.bin"
    secret.write_bytes(np.ones(6, np.float32).tobytes())
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 3], data_location=TensorProto.EXTERNAL)
    entry = t.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    data = make([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [2, 3])], [vi("y", None)], [t])
    (tmp_path / "m.onnx").write_bytes(data)
    with pytest.raises(ValueError, match="'w' is stored as external data \\(in 'weights.bin'\\)"):
        nco.load(str(tmp_path / "m.onnx"))


def test_unsupported_op_names_op_and_node():
    data = make([helper.make_node("Gelu", ["x"], ["y"], name="act")], [vi("x", [2])], [vi("y", None)], opset=20)
    with pytest.raises(GraphError, match="node 'act': unsupported op 'Gelu'"):
        nco.load(data)
    data = make([helper.make_node("Relu", ["x"], ["y"], name="custom", domain="com.example")], [vi("x", [2])],
                [vi("y", None)])
    with pytest.raises(GraphError, match="node 'custom': unsupported op com.example::Relu"):
        nco.load(data)


def test_unsupported_attribute_names_op_node_and_attribute():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv7", kernel_shape=[3, 3], foo=3)
    data = make([node], [vi("x", [1, 1, 5, 5])], [vi("y", None)], [init("w", rand(1, 1, 3, 3))])
    with pytest.raises(GraphError, match="node 'conv7' \\(Conv\\): unsupported attribute 'foo'"):
        nco.load(data)


def test_unsupported_attribute_value_and_extra_output():
    data, _ = _single("LRN", [1, 4, 3, 3], None, size=4)
    with pytest.raises(ValueError, match="LRN: attribute size must be odd, got 4"):
        nco.load(data)
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], name="mp", kernel_shape=[2, 2])
    data = make([node], [vi("x", [1, 1, 4, 4])], [vi("y", None), vi("idx", None, TensorProto.INT64)])
    with pytest.raises(GraphError, match="node 'mp' \\(MaxPool\\): output 'idx'"):
        nco.load(data)


def test_old_opset_is_refused():
    data = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", None)], opset=10)
    with pytest.raises(ValueError, match="opset 10 is not supported"):
        nco.load(data)


def test_shapes_are_checked_at_load_time():
    """A weight that does not fit its input fails at load, naming the node, before any call."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv_bad")
    data = make([node], [vi("x", ["N", 3, 8, 8])], [vi("y", None)], [init("w", rand(4, 2, 3, 3))])
    with pytest.raises(GraphError, match="node 'conv_bad' \\(Conv\\): .*x has 3 channels"):
        nco.load(data)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], name="fc")]
    data = make(nodes, [vi("x", ["N", 3, 4])], [vi("y", None)], [init("w", rand(11, 5))])
    with pytest.raises(GraphError, match="node 'fc' \\(Gemm\\): .*weight must have shape"):
        nco.load(data)


def test_enormous_shapes_are_refused_or_deferred():
    """A file cannot make loading allocate without bound: a pad to 4e20 elements (more than any
    address space, so it fails alike everywhere) is refused; an enormous declared input is
    checked at call time instead of at load time."""
    data = make([helper.make_node("Pad", ["x", "p"], ["y"], name="huge")], [vi("x", [1, 1])], [vi("y", None)],
                [init("p", np.array([0, 0, 10**10, 10**10], np.int64))])
    with pytest.raises(ValueError, match="node 'huge' \\(Pad\\)|memory"):
        nco.load(data)
    model = nco.load(make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", 10**5, 10**5])], [vi("y", None)]))
    assert model.outputs[0].shape is None
    with pytest.raises(ValueError, match="must have shape \\(N, 100000, 100000\\)"):
        model(np.zeros((1, 2, 2), np.float32))


def test_declared_output_shape_is_checked():
    data = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", 3])], [vi("y", ["N", 4])])
    with pytest.raises(GraphError, match="declared with shape"):
        nco.load(data)


def test_import_numbaconv_does_not_import_onnx():
    code = "import sys, numbaconv; print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- numbaconv predict


def test_predict_cli(tmp_path, lenet_bytes, capsys):
    model_path = tmp_path / "lenet.onnx"
    model_path.write_bytes(lenet_bytes)
    x = rand(5, 1, 32, 32)
    np.save(tmp_path / "x.npy", x)
    out_path = tmp_path / "out.npy"
    code = numbaconv.cli.main(["predict", str(model_path), str(tmp_path / "x.npy"), "--output", str(out_path),
                               "--top-k", "3", "--batch-size", "2"])
    assert code == 0
    want = reference(lenet_bytes, {"x": x})["y"]
    got = np.load(out_path)
    assert_close(got, want.astype(np.float64), np.full(want.shape, np.abs(want).max()))
    text = capsys.readouterr().out
    assert "(5, 1, 32, 32)" in text and "(5, 10)" in text and "ms" in text
    top = np.argsort(-want[0])[:3]
    assert f"sample 0: top-3 classes {', '.join(str(int(k)) for k in top)} (scores" in text

    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"s{i}.npy", x[i])  # single samples, without the batch axis
    out_dir = tmp_path / "outputs"
    assert numbaconv.cli.main(["predict", str(model_path), str(folder), "--output", str(out_dir)]) == 0
    for i in range(3):
        assert_close(np.load(out_dir / f"s{i}.npy"), want[i:i + 1].astype(np.float64),
                     np.full((1, 10), np.abs(want).max()))
    text = capsys.readouterr().out
    assert "3 files, 3 samples" in text and f"s1.npy: top-5 classes {int(np.argmax(want[1]))}," in text


def test_predict_cli_errors(tmp_path, lenet_bytes, capsys):
    model_path = tmp_path / "lenet.onnx"
    model_path.write_bytes(lenet_bytes)
    np.save(tmp_path / "bad.npy", rand(2, 1, 31, 32))
    assert numbaconv.cli.main(["predict", str(model_path), str(tmp_path / "bad.npy")]) == 2
    assert "must have shape" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert numbaconv.cli.main(["predict", str(tmp_path / "junk.onnx"), str(tmp_path / "bad.npy")]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad attribute values


def _bad(op, x_shape, inits=(), extra=(), **attrs):
    """Loading a one-node model with a bad attribute: refused at load time (GraphError, a
    ValueError, whatever the op raised, so that the message names the node)."""
    return lambda: nco.load(_single(op, x_shape, None, inits=inits, extra_inputs=extra, **attrs)[0])


_W = [init("w", rand(4, 2, 3, 3))]
CASES = [
    ("conv strides 0", _bad("Conv", [1, 2, 5, 5], _W, ["w"], strides=[0, 1]), ValueError, "stride"),
    ("conv group 0", _bad("Conv", [1, 2, 5, 5], _W, ["w"], group=0), ValueError, "groups"),
    ("conv group mismatch", _bad("Conv", [1, 2, 5, 5], _W, ["w"], group=3), ValueError, "groups"),
    ("conv kernel too large", _bad("Conv", [1, 2, 2, 2], _W, ["w"]), ValueError, "larger than"),
    ("conv dilation -1", _bad("Conv", [1, 2, 5, 5], _W, ["w"], dilations=[-1, 1]), ValueError, "dilation"),
    ("conv pads negative", _bad("Conv", [1, 2, 5, 5], _W, ["w"], pads=[-1, 0, 0, 0]), ValueError, "pads"),
    ("conv pads length", _bad("Conv", [1, 2, 5, 5], _W, ["w"], pads=[1, 1]), ValueError, "pads"),
    ("conv auto_pad", _bad("Conv", [1, 2, 5, 5], _W, ["w"], auto_pad="BOTH"), ValueError, "auto_pad"),
    ("conv weight dtype", _bad("Conv", [1, 2, 5, 5], [init("w", rand(4, 2, 3, 3).astype(np.float64))], ["w"]),
     ValueError, "dtype"),
    ("conv kernel_shape", _bad("Conv", [1, 2, 5, 5], _W, ["w"], kernel_shape=[2, 2]), ValueError, "kernel_shape"),
    ("conv 1-d weight on 2-d input", _bad("Conv", [1, 2, 5, 5], [init("w", rand(4, 2, 3))], ["w"]), ValueError, "W"),
    ("conv bias length", _bad("Conv", [1, 2, 5, 5], _W + [init("b", rand(3))], ["w", "b"]), ValueError, "bias"),
    ("conv rank 2 input", _bad("Conv", [2, 5], [init("w", rand(4, 2))], ["w"]), ValueError, "spatial"),
    ("conv_transpose output_padding", _bad("ConvTranspose", [1, 4, 5, 5], [init("w", rand(4, 2, 3, 3))], ["w"],
                                           output_padding=[4, 4]), ValueError, "output_padding"),
    ("conv_transpose pads", _bad("ConvTranspose", [1, 4, 2, 2], [init("w", rand(4, 2, 1, 1))], ["w"],
                                 pads=[1, 1, 1, 1]), ValueError, "pads"),
    ("max_pool kernel 0", _bad("MaxPool", [1, 2, 5, 5], kernel_shape=[0, 2]), ValueError, "kernel"),
    ("max_pool kernel too large", _bad("MaxPool", [1, 2, 3, 3], kernel_shape=[5, 5]), ValueError, "kernel"),
    ("max_pool missing kernel", _bad("MaxPool", [1, 2, 3, 3]), ValueError, "kernel_shape"),
    ("avg_pool stride 0", _bad("AveragePool", [1, 2, 5, 5], kernel_shape=[2, 2], strides=[0, 1]), ValueError, "stride"),
    ("avg_pool asymmetric exclusive", _bad("AveragePool", [1, 2, 5, 5], kernel_shape=[2, 2], pads=[1, 0, 0, 0]),
     ValueError, "count_include_pad"),
    ("lp_pool p 0", _bad("LpPool", [1, 2, 5, 5], kernel_shape=[2, 2], p=0), ValueError, "norm_type"),
    ("lrn size 0", _bad("LRN", [1, 2, 5, 5], size=0), ValueError, "size"),
    ("softmax axis", _bad("Softmax", [2, 3], axis=5), ValueError, "axis"),
    ("transpose perm", _bad("Transpose", [2, 3], perm=[0, 0]), ValueError, "perm"),
    ("flatten axis", _bad("Flatten", [2, 3], axis=9), ValueError, "axis"),
    ("reshape count", _bad("Reshape", [2, 3], [init("s", np.array([4, 2], np.int64))], ["s"]), ValueError, "reshape"),
    ("squeeze size", _bad("Squeeze", [2, 3], [init("a", np.array([0], np.int64))], ["a"]), ValueError, "size 1"),
    ("unsqueeze axis", _bad("Unsqueeze", [2, 3], [init("a", np.array([7], np.int64))], ["a"]), ValueError, "axes"),
    ("pad negative", _bad("Pad", [2, 3], [init("p", np.array([0, -1, 0, 0], np.int64))], ["p"]), ValueError, "pads"),
    ("pad mode", _bad("Pad", [2, 3], [init("p", np.array([0, 1, 0, 0], np.int64))], ["p"], mode="mirror"),
     ValueError, "mode"),
    ("gemm shapes", _bad("Gemm", [2, 3], [init("w", rand(4, 5))], ["w"]), ValueError, "weight must have shape"),
    ("matmul shapes", _bad("MatMul", [2, 3], [init("w", rand(4, 5))], ["w"]), ValueError, "matmul"),
    ("add broadcast", _bad("Add", [2, 3], [init("w", rand(4))], ["w"]), ValueError, "broadcast"),
    ("concat axis", _bad("Concat", [2, 3], axis=4), ValueError, "axis"),
    ("batchnorm lengths", _bad("BatchNormalization", [1, 3, 4], [init(n, rand(2)) for n in "sbmv"], list("sbmv")),
     ValueError, "shape"),
    ("batchnorm training", _bad("BatchNormalization", [1, 2, 4], [init(n, rand(2)) for n in "sbmv"], list("sbmv"),
                                training_mode=1), ValueError, "training_mode"),
    ("clip bounds", _bad("Clip", [2, 3], [init("lo", rand(2))], ["lo"]), ValueError, "broadcast"),
    ("conv five inputs", _bad("Conv", [1, 2, 5, 5], _W, ["w", "", "w", "w"]), ValueError, "inputs"),
]


@pytest.mark.parametrize("name, call, exception, match", CASES, ids=[c[0] for c in CASES])
def test_bad_attribute_values_are_refused(name, call, exception, match):
    with pytest.raises(exception, match=match):
        call()


def test_bad_attribute_values_never_crash():
    """The same cases in a fresh interpreter: a crash in compiled code fails this test."""
    from conftest import assert_battery_survives

    assert_battery_survives("test_onnx")


# --------------------------------------------------------------------------- attribute space, drawn


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_conv_attributes_match_onnxruntime(data):
    nd = data.draw(st.integers(1, 3), label="ndim")
    groups = data.draw(st.sampled_from([1, 2]), label="groups")
    c_in, c_out = 2 * groups, groups * data.draw(st.integers(1, 3))
    kernel = [data.draw(st.integers(1, 3)) for _ in range(nd)]
    dil = [data.draw(st.integers(1, 2)) for _ in range(nd)]
    size = [data.draw(st.integers((k - 1) * d + 1, (k - 1) * d + 5)) for k, d in zip(kernel, dil)]
    attrs = dict(strides=[data.draw(st.integers(1, 3)) for _ in range(nd)], dilations=dil, group=groups)
    if data.draw(st.booleans(), label="auto_pad"):
        attrs["auto_pad"] = data.draw(st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID"]))
        if attrs["auto_pad"] != "VALID":
            attrs["dilations"] = [1] * nd  # ONNX Runtime refuses dilation with SAME padding
    else:
        attrs["pads"] = [data.draw(st.integers(0, 2)) for _ in range(2 * nd)]
    inits = [init("w", rand(c_out, c_in // groups, *kernel))]
    if data.draw(st.booleans(), label="bias"):
        inits.append(init("b", rand(c_out)))
    node = helper.make_node("Conv", ["x", *(t.name for t in inits)], ["y"], **attrs)
    x = rand(2, c_in, *size)
    assert_matches_ort(make([node], [vi("x", list(x.shape))], [vi("y", None)], inits), {"x": x})


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pool_attributes_match_onnxruntime(data):
    op = data.draw(st.sampled_from(["MaxPool", "AveragePool", "LpPool"]), label="op")
    nd = data.draw(st.integers(1, 3), label="ndim")
    kernel = [data.draw(st.integers(1, 3)) for _ in range(nd)]
    size = [data.draw(st.integers(k, k + 5)) for k in kernel]
    attrs = dict(kernel_shape=kernel, strides=[data.draw(st.integers(1, 3)) for _ in range(nd)])
    # pads within half the window: beyond that a window can read padding only
    attrs["pads"] = [data.draw(st.integers(0, k // 2)) for k in kernel * 2]
    if op in ("MaxPool", "AveragePool"):
        attrs["ceil_mode"] = data.draw(st.integers(0, 1))
    if op == "AveragePool":
        attrs["count_include_pad"] = data.draw(st.integers(0, 1))
        if attrs["count_include_pad"] == 0:
            attrs["pads"] = attrs["pads"][:nd] * 2  # numbaconv needs count_include_pad=1 for asymmetric pads
    if op == "LpPool":
        attrs["p"] = data.draw(st.integers(1, 3))
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    x = rand(2, 3, *size)
    assert_matches_ort(make([node], [vi("x", list(x.shape))], [vi("y", None)], opset=13), {"x": x})


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_conv_transpose_attributes_match_onnxruntime(data):
    nd = data.draw(st.integers(1, 3), label="ndim")
    groups = data.draw(st.sampled_from([1, 2]), label="groups")
    c_in, c_out = 2 * groups, groups * data.draw(st.integers(1, 2))
    kernel = [data.draw(st.integers(1, 3)) for _ in range(nd)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(nd)]
    dil = [data.draw(st.integers(1, 2)) for _ in range(nd)]
    size = [data.draw(st.integers(1, 4)) for _ in range(nd)]
    attrs = dict(strides=strides, dilations=dil, group=groups,
                 output_padding=[data.draw(st.integers(0, s - 1)) for s in strides])  # ONNX Runtime: < stride
    full = [(i - 1) * s + (k - 1) * d + 1 + e for i, s, k, d, e in zip(size, strides, kernel, dil, attrs["output_padding"])]
    if data.draw(st.booleans(), label="output_shape"):
        attrs["output_shape"] = [data.draw(st.integers(max(1, f - 3), f)) for f in full]
    else:
        attrs["pads"] = [data.draw(st.integers(0, min(2, (f - 1) // 2))) for f in full * 2]
    inits = [init("w", rand(c_in, c_out // groups, *kernel))]
    if data.draw(st.booleans(), label="bias"):
        inits.append(init("b", rand(c_out)))
    node = helper.make_node("ConvTranspose", ["x", *(t.name for t in inits)], ["y"], **attrs)
    x = rand(2, c_in, *size)
    assert_matches_ort(make([node], [vi("x", list(x.shape))], [vi("y", None)], inits), {"x": x})


def test_shape_arithmetic_of_view_with_dynamic_batch():
    """``x.view(x.size(0), -1)`` exports as Shape, Gather, Unsqueeze, Concat, Reshape."""
    m = models()
    torch = m.torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(y.view(y.size(0), -1)).float()

    torch.manual_seed(0)
    x = np.random.default_rng(6).standard_normal((3, 3, 8, 8)).astype(np.float32)
    data = m.export(Net(), x, opset=11)
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert {"Shape", "Gather", "Reshape"} <= ops, ops
    model = assert_matches_ort(data, {"x": x})
    assert_matches_ort(data, {"x": x[:1]}, model)
