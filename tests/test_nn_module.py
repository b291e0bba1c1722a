"""numbaconv.nn models and the Module API.

Whole small models against float64 central finite differences (conftest.numerical_grad) of the
loss, with respect to the input and every parameter; then the Module machinery: traversal,
modes, gradients, state dicts, dtype conversion, errors, seeding and initialization, and that
layers never modify their input. Comparisons with torch.nn's behaviour skip without torch.
"""

from collections import OrderedDict

import numpy as np
import pytest

import numbaconv
import numbaconv.nn as nnc
from conftest import DTYPES, LAYOUTS, assert_unmodified, make_array, numerical_grad, snapshot

# --------------------------------------------------------------------------- finite differences


def _check_model_gradients(model, loss_fn, x, target, before_forward=lambda: None, zero=()):
    """model.backward(loss_fn.backward()) against central differences of the float64 loss.

    The loss is not linear here (normalization, activations, pooling), so the central difference
    has a truncation error of order eps**2 besides rounding of order 1e-16 * |loss| / eps: both
    far below the 1e-6 relative tolerance, and far below any real error. Random inputs keep every
    ReLU input and every max-pooling choice further than eps from a kink. ``zero`` names the
    parameters whose gradient is zero (a bias followed by batch normalization in training).
    """
    x = np.array(x, dtype=np.float64)

    def loss():
        before_forward()
        return float(loss_fn(model(x), target))

    model.zero_grad()
    loss()
    grad_x = model.backward(loss_fn.backward())
    analytic = {name: p.grad.copy() for name, p in model.named_parameters()}
    assert len(analytic) == len(list(model.parameters())) > 0

    def compare(got, num, what):
        assert got.shape == num.shape and got.dtype == np.float64, what
        tol = 1e-6 * max(1.0, float(np.max(np.abs(num))))
        err = float(np.max(np.abs(got - num)))
        assert err <= tol, f"{what}: max |analytic - numerical| = {err:.3g} > {tol:.3g}"
        if what not in zero:  # else the check tests nothing
            assert np.any(np.abs(num) > 1e-6), f"{what}: the numerical gradient is all zero"

    compare(grad_x, numerical_grad(loss, x), "input")
    for name, param in model.named_parameters():
        compare(analytic[name], numerical_grad(loss, param.data), name)


def _classes(rng, n, c):
    return rng.integers(0, c, n)


def test_cnn_with_batch_norm_in_training_matches_finite_differences():
    rng = np.random.default_rng(0)
    model = nnc.Sequential(
        nnc.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=1), nnc.BatchNorm2d(3, dtype=np.float64), nnc.ReLU(),
        nnc.MaxPool2d(2), nnc.Flatten(), nnc.Linear(3 * 3 * 3, 4, dtype=np.float64, rng=2),
    )
    _randomize_norm_affine(model, rng)
    _check_model_gradients(model, nnc.CrossEntropyLoss(), rng.standard_normal((3, 2, 6, 6)), _classes(rng, 3, 4),
                           zero=("0.bias",))


def test_residual_model_matches_finite_differences():
    rng = np.random.default_rng(1)
    f64 = dict(dtype=np.float64)
    model = nnc.Sequential(
        nnc.Conv2d(2, 3, 3, padding=1, **f64),
        nnc.Residual(nnc.Sequential(nnc.Conv2d(3, 3, 3, padding=1, **f64), nnc.BatchNorm2d(3, **f64), nnc.Tanh(),
                                    nnc.Conv2d(3, 3, 1, **f64))),
        nnc.Residual(nnc.Sequential(nnc.Conv2d(3, 2, 3, stride=2, padding=1, **f64), nnc.ELU()),
                     shortcut=nnc.Conv2d(3, 2, 1, stride=2, bias=False, **f64)),
        nnc.AdaptiveAvgPool2d(1), nnc.Flatten(), nnc.Linear(2, 3, **f64),
    )
    _randomize_norm_affine(model, rng)
    _check_model_gradients(model, nnc.CrossEntropyLoss(), rng.standard_normal((2, 2, 5, 5)), _classes(rng, 2, 3),
                           zero=("1.body.0.bias",))


def test_conv1d_model_with_dropout_matches_finite_differences():
    rng = np.random.default_rng(2)
    f64 = dict(dtype=np.float64)
    dropout = nnc.Dropout(0.3)
    model = nnc.Sequential(
        nnc.Conv1d(2, 4, 3, padding=2, dilation=2, padding_mode="reflect", **f64), nnc.GroupNorm(2, 4, **f64),
        nnc.LeakyReLU(0.1), nnc.AvgPool1d(2), nnc.Conv1d(4, 4, 2, groups=2, **f64), dropout,
        nnc.Flatten(), nnc.Linear(12, 3, **f64), nnc.LogSoftmax(dim=1),
    )
    _randomize_norm_affine(model, rng)

    def same_mask():  # the same dropout mask at every forward call
        dropout.rng = np.random.default_rng(7)

    _check_model_gradients(model, nnc.NLLLoss(), rng.standard_normal((3, 2, 9)), _classes(rng, 3, 3), same_mask)


def test_conv3d_model_matches_finite_differences():
    rng = np.random.default_rng(3)
    f64 = dict(dtype=np.float64)
    model = nnc.Sequential(
        nnc.Conv3d(1, 2, 2, padding=1, **f64), nnc.BatchNorm3d(2, **f64), nnc.Sigmoid(),
        nnc.MaxPool3d(2, ceil_mode=True), nnc.ConvTranspose3d(2, 2, 2, stride=2, **f64),
        nnc.AdaptiveMaxPool3d(1), nnc.Flatten(), nnc.Linear(2, 3, **f64),
    )
    _randomize_norm_affine(model, rng)
    x = rng.standard_normal((2, 1, 3, 3, 3))
    _check_model_gradients(model, nnc.MSELoss(), x, rng.standard_normal((2, 3)), zero=("0.bias",))


def test_transposed_and_dense_model_matches_finite_differences():
    rng = np.random.default_rng(4)
    f64 = dict(dtype=np.float64)
    model = nnc.Sequential(
        nnc.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, **f64), nnc.LocalResponseNorm(2),
        nnc.Softmax(dim=1), nnc.LPPool2d(2, 2), nnc.AvgPool2d(2, stride=1, padding=1), nnc.Flatten(),
        nnc.Linear(3 * 4 * 4, 4, **f64), nnc.BatchNorm1d(4, **f64), nnc.ReLU(), nnc.Linear(4, 2, **f64),
    )
    _randomize_norm_affine(model, rng)
    _check_model_gradients(model, nnc.MSELoss(reduction="sum"), rng.standard_normal((3, 2, 3, 3)),
                           rng.standard_normal((3, 2)), zero=("6.bias",))


def test_eval_mode_model_matches_finite_differences():
    rng = np.random.default_rng(5)
    f64 = dict(dtype=np.float64)
    model = nnc.Sequential(nnc.Conv2d(1, 2, 2, **f64), nnc.BatchNorm2d(2, **f64), nnc.Dropout(0.5), nnc.ELU(),
                           nnc.Flatten(), nnc.Linear(8, 2, **f64))
    _randomize_norm_affine(model, rng)
    model[1].running_mean[...] = rng.standard_normal(2)
    model[1].running_var[...] = rng.uniform(0.5, 2, 2)
    model.eval()
    _check_model_gradients(model, nnc.CrossEntropyLoss(), rng.standard_normal((2, 1, 3, 3)), _classes(rng, 2, 2))


def _randomize_norm_affine(model, rng):
    """Normalization weights and biases off their 1 and 0, so their gradients are general."""
    for module in model.modules():
        if isinstance(module, (nnc.BatchNorm1d, nnc.BatchNorm2d, nnc.BatchNorm3d, nnc.GroupNorm)):
            module.weight.data[...] = rng.uniform(0.5, 1.5, module.weight.shape)
            module.bias.data[...] = rng.standard_normal(module.bias.shape)


# --------------------------------------------------------------------------- traversal


def _net():
    return nnc.Sequential(
        nnc.Conv2d(1, 2, 3, rng=0), nnc.BatchNorm2d(2), nnc.ReLU(),
        nnc.Sequential(nnc.Flatten(), nnc.Linear(8, 3, rng=1)),
    )


def test_named_parameters_and_modules_order():
    net = _net()
    assert [n for n, _ in net.named_parameters()] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "3.1.weight", "3.1.bias"]
    assert [p for p in net.parameters()] == [p for _, p in net.named_parameters()]
    assert [n for n, _ in net.named_modules()] == ["", "0", "1", "2", "3", "3.0", "3.1"]
    assert [n for n, _ in net.named_modules(prefix="net")][:2] == ["net", "net.0"]
    assert [n for n, _ in net.named_parameters(prefix="net")][0] == "net.0.weight"
    assert list(net.children()) == [net[0], net[1], net[2], net[3]]
    assert [n for n, _ in net.named_children()] == ["0", "1", "2", "3"]
    assert [n for n, _ in net[1].named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    assert list(net.parameters(recurse=False)) == []
    assert [n for n, _ in net[0].named_parameters(recurse=False)] == ["weight", "bias"]
    assert list(nnc.Conv2d(1, 1, 1, bias=False).state_dict()) == ["weight"]


def test_named_parameters_order_equals_torch():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    theirs = tnn.Sequential(tnn.Conv2d(1, 2, 3), tnn.BatchNorm2d(2), tnn.ReLU(),
                            tnn.Sequential(tnn.Flatten(), tnn.Linear(8, 3)))
    ours = _net()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert list(ours.state_dict(prefix="m.")) == list(theirs.state_dict(prefix="m."))


def test_shared_parameters_and_modules_are_listed_once_as_torch():
    a, b = nnc.Linear(2, 2), nnc.Linear(2, 2)
    b.weight = a.weight  # a shared parameter
    model = nnc.Sequential(a, b, a)  # and a shared module
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.bias"]
    assert [n for n, _ in model.named_modules()] == ["", "0", "1"]
    assert len(list(model.parameters())) == 3
    # state_dict lists every path, as torch's does, each one the same array
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert state["1.weight"] is state["0.weight"] is state["2.weight"]
    torch = pytest.importorskip("torch")
    ta, tb = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    tb.weight = ta.weight
    theirs = torch.nn.Sequential(ta, tb, ta)
    assert [n for n, _ in theirs.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert list(theirs.state_dict()) == list(state)
    assert model.load_state_dict(theirs.state_dict()) == ([], [])
    np.testing.assert_array_equal(a.weight.data, ta.weight.detach().numpy())


def test_replacing_a_parameter_or_module_keeps_its_place():
    conv = nnc.Conv2d(1, 2, 3)
    conv.weight = nnc.Parameter(np.zeros((2, 1, 3, 3), np.float32))
    assert list(conv.state_dict()) == ["weight", "bias"]
    model = nnc.Sequential(nnc.Linear(2, 3), nnc.ReLU(), nnc.Linear(3, 1))
    setattr(model, "0", nnc.Linear(2, 3, bias=False))  # replace the first layer in place
    assert list(model.state_dict()) == ["0.weight", "2.weight", "2.bias"]
    assert model(np.ones((4, 2), np.float32)).shape == (4, 1)  # still run in order
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    setattr(theirs, "0", torch.nn.Linear(2, 3, bias=False))
    assert list(theirs.state_dict()) == list(model.state_dict())


def test_sequential_indexing_append_and_ordered_dict():
    relu, lin = nnc.ReLU(), nnc.Linear(2, 3)
    model = nnc.Sequential(OrderedDict(act=relu, fc=lin))
    assert list(model.state_dict()) == ["fc.weight", "fc.bias"]
    assert model[0] is relu and model[-1] is lin and len(model) == 2 and list(model) == [relu, lin]
    assert model.act is relu and model.fc is lin
    head = model[1:]
    assert isinstance(head, nnc.Sequential) and list(head.state_dict()) == ["fc.weight", "fc.bias"]
    model.append(nnc.Tanh())
    assert [n for n, _ in model.named_children()] == ["act", "fc", "2"]
    with pytest.raises(IndexError, match="out of range"):
        model[3]
    with pytest.raises(TypeError, match="index"):
        model["act"]
    with pytest.raises(TypeError, match="entry 1 must be a Module"):
        nnc.Sequential(nnc.ReLU(), lambda x: x)
    with pytest.raises(TypeError, match="must be a Module"):
        model.append(np.zeros(2))


def test_train_and_eval_recurse():
    net = _net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net[3].train()
    assert net[3][1].training and not net.training and not net[0].training
    net.train()
    assert all(m.training for m in net.modules())
    with pytest.raises(TypeError, match="mode"):
        net.train("no")


def test_apply_visits_children_first():
    net = _net()
    seen = []
    assert net.apply(lambda m: seen.append(m)) is net
    assert seen[-1] is net and seen[0] is net[0] and len(seen) == 7


def test_attribute_registration():
    m = nnc.Linear(2, 2)
    m.extra = nnc.ReLU()
    assert [n for n, _ in m.named_children()] == ["extra"]
    m.extra = 3  # a plain value replaces the child
    assert list(m.children()) == [] and m.extra == 3
    m.scale = nnc.Parameter(np.ones(2))
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias", "scale"]
    del m.scale
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    m.register_buffer("count", np.zeros(1))
    m.count = np.ones(1)  # a buffer stays a buffer when reassigned
    assert list(m.state_dict()) == ["weight", "bias", "count"]
    np.testing.assert_array_equal(m.state_dict()["count"], [1.0])
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        m.missing
    with pytest.raises(TypeError, match="count2 must be a numpy.ndarray"):
        m.register_buffer("count2", [1.0])
    with pytest.raises(TypeError, match="p must be a Parameter"):
        m.register_parameter("p", np.ones(2))
    with pytest.raises(TypeError, match="float32 or float64"):
        nnc.Parameter(np.ones(2, np.int32))

    class Forgot(nnc.Module):
        def __init__(self):
            self.w = 1

    with pytest.raises(AttributeError, match="Module.__init__"):
        Forgot()


# --------------------------------------------------------------------------- gradients


def _run(model, x, seed=0):
    y = model(x)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    return model.backward(g)


def _grads(model):
    return {n: (None if p.grad is None else p.grad.copy()) for n, p in model.named_parameters()}


def _small_model():
    return nnc.Sequential(nnc.Conv2d(2, 3, 3, rng=0), nnc.BatchNorm2d(3), nnc.ReLU(), nnc.Flatten(),
                          nnc.Linear(12, 2, rng=1), nnc.GroupNorm(1, 2))


def test_zero_grad_to_none_and_to_zeros():
    model = _small_model()
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    _run(model, x)
    assert all(p.grad is not None for p in model.parameters())
    arrays = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=False)
    for p, a in zip(model.parameters(), arrays):
        assert p.grad is a and not np.any(p.grad)  # zeroed in place
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.zero_grad(set_to_none=False)  # nothing to zero: stays None
    assert all(p.grad is None for p in model.parameters())


def test_gradients_accumulate_over_two_backward_calls():
    model = _small_model()
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float64)
    model.double()
    _run(model, x, seed=1)
    first = _grads(model)
    _run(model, x, seed=2)
    both = _grads(model)
    model.zero_grad()
    _run(model, x, seed=2)
    second = _grads(model)
    for name in first:
        np.testing.assert_allclose(both[name], first[name] + second[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_accumulation_does_not_write_into_the_callers_arrays():
    model = nnc.Linear(3, 2, dtype=np.float64)
    x = np.ones((1, 3))
    g = np.ones((1, 2))
    g_copy = g.copy()
    for _ in range(3):
        model(x)
        model.backward(g)
    np.testing.assert_array_equal(g, g_copy)
    np.testing.assert_array_equal(model.bias.grad, [3.0, 3.0])


def test_requires_grad_false_leaves_grad_none():
    model = _small_model()
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    assert model.requires_grad_(False) is model
    grad_x = _run(model, x)
    assert grad_x is not None and grad_x.shape == x.shape
    assert all(p.grad is None for p in model.parameters())
    model[0].bias.requires_grad = True  # one parameter back on
    _run(model, x)
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["0.bias"]
    model.requires_grad_()
    _run(model, x)
    assert all(p.grad is not None for p in model.parameters())


def test_input_grad_false_returns_none_and_still_accumulates_parameter_grads():
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4))
    models = [_small_model().double() for _ in range(2)]
    res = [nnc.Residual(nnc.Sequential(nnc.Conv2d(2, 2, 3, padding=1, rng=s, dtype=np.float64), nnc.Tanh()))
           for s in (3, 3)]
    for a, b in ((models[0], models[1]), (res[0], res[1])):
        y = a(x)
        g = np.random.default_rng(1).standard_normal(y.shape)
        assert a.backward(g) is not None
        b(x)
        assert b.backward(g, input_grad=False) is None
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            np.testing.assert_array_equal(pa.grad, pb.grad, err_msg=name)
    for layer in (nnc.Conv2d(2, 2, 3), nnc.BatchNorm2d(2), nnc.GroupNorm(2, 2), nnc.ReLU(), nnc.MaxPool2d(2),
                  nnc.Dropout(0.2), nnc.Flatten(), nnc.Identity(), nnc.Softmax(1), nnc.LocalResponseNorm(2)):
        y = layer(x.astype(np.float32))
        assert layer.backward(np.ones(y.shape, np.float32), input_grad=False) is None, type(layer).__name__
    linear = nnc.Linear(4, 2)
    linear(np.ones((3, 4), np.float32))
    assert linear.backward(np.ones((3, 2), np.float32), input_grad=False) is None
    assert linear.weight.grad is not None and linear.bias.grad is not None


BACKWARD_BEFORE_FORWARD = [
    nnc.Conv1d(1, 1, 1), nnc.Conv2d(1, 1, 1), nnc.ConvTranspose3d(1, 1, 1), nnc.MaxPool2d(2), nnc.AvgPool1d(2),
    nnc.LPPool2d(2, 2), nnc.AdaptiveAvgPool3d(1), nnc.AdaptiveMaxPool1d(1), nnc.ReLU(), nnc.LeakyReLU(), nnc.ELU(),
    nnc.Sigmoid(), nnc.Tanh(), nnc.Softmax(1), nnc.LogSoftmax(), nnc.Flatten(), nnc.Linear(1, 1),
    nnc.Dropout(), nnc.BatchNorm2d(1), nnc.GroupNorm(1, 1), nnc.LocalResponseNorm(1),
    nnc.Sequential(nnc.ReLU()), nnc.Residual(nnc.ReLU()), nnc.CrossEntropyLoss(), nnc.MSELoss(),
]


@pytest.mark.parametrize("layer", BACKWARD_BEFORE_FORWARD, ids=lambda m: type(m).__name__)
def test_backward_before_forward_raises(layer):
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(np.ones((1, 1, 1, 1), np.float32))


def test_custom_module_without_backward_says_so():
    class Half(nnc.Module):
        def forward(self, x):
            return x / 2

    half = Half()
    np.testing.assert_array_equal(half(np.ones(2)), [0.5, 0.5])
    with pytest.raises(NotImplementedError, match="Half does not implement backward"):
        half.backward(np.ones(2))
    with pytest.raises(NotImplementedError, match="forward"):
        nnc.Module()(np.ones(2))


def test_residual_checks_shapes_and_arguments():
    block = nnc.Residual(nnc.Conv2d(2, 3, 1))
    with pytest.raises(ValueError, match="shortcut"):
        block(np.ones((1, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="body must be a Module"):
        nnc.Residual(None)
    with pytest.raises(TypeError, match="shortcut must be a Module or None"):
        nnc.Residual(nnc.ReLU(), shortcut="identity")
    assert list(nnc.Residual(nnc.Linear(2, 2), nnc.Linear(2, 2)).state_dict()) == [
        "body.weight", "body.bias", "shortcut.weight", "shortcut.bias"]


# --------------------------------------------------------------------------- state dicts


def test_state_dict_returns_the_modules_own_arrays():
    model = _small_model()
    state = model.state_dict()
    assert state["0.weight"] is model[0].weight.data
    assert state["1.running_mean"] is model[1].running_mean
    state["0.bias"][...] = 7
    np.testing.assert_array_equal(model[0].bias.data, 7)
    assert isinstance(state, OrderedDict)


def _new_state(model, value=0.5):
    return {k: np.full(v.shape, value, v.dtype) for k, v in model.state_dict().items()}


def _copy_state(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def _assert_state_equal(model, state):
    now = model.state_dict()
    assert list(now) == list(state)
    for k in state:
        np.testing.assert_array_equal(now[k], state[k], err_msg=k)


def test_load_state_dict_copies_values_in_the_modules_dtype():
    model = _small_model()
    arrays = {k: v for k, v in model.state_dict().items()}
    state = {k: np.full(v.shape, 2, np.float64 if v.dtype.kind == "f" else np.int64)
             for k, v in arrays.items()}
    assert model.load_state_dict(state) == nnc.IncompatibleKeys([], [])
    for k, v in model.state_dict().items():
        assert v is arrays[k] and v.dtype == arrays[k].dtype  # copied into the same arrays
        np.testing.assert_array_equal(v, 2)
    state["0.weight"][...] = 3  # the module does not hold the caller's array
    assert not np.any(model[0].weight.data == 3)


@pytest.mark.parametrize("change, exception, words", [
    (lambda s: s.pop("1.running_var"), KeyError, ["missing", "1.running_var"]),
    (lambda s: s.update({"9.weight": np.ones(2)}), KeyError, ["unexpected", "9.weight"]),
    (lambda s: s.update({"0.weight": np.ones((3, 2, 3, 2))}), ValueError, ["0.weight", "(3, 2, 3, 3)", "(3, 2, 3, 2)"]),
    (lambda s: s.update({"4.bias": np.ones(3)}), ValueError, ["4.bias", "(2,)", "(3,)"]),
    (lambda s: s.update({"1.num_batches_tracked": np.zeros(1, np.int64)}), ValueError, ["num_batches_tracked"]),
    (lambda s: s.update({"0.bias": [1.0, 2.0, 3.0]}), TypeError, ["0.bias", "list"]),
    (lambda s: s.update({"0.bias": "abc"}), TypeError, ["0.bias"]),
    (lambda s: s.update({"0.bias": np.array(["a", "b", "c"])}), TypeError, ["0.bias", "dtype"]),
], ids=["missing", "unexpected", "shape", "last_key_shape", "buffer_shape", "list", "str", "strings"])
def test_load_state_dict_errors_name_the_key_and_change_nothing(change, exception, words):
    model = _small_model()
    before = _copy_state(model)
    state = _new_state(model)
    change(state)
    with pytest.raises(exception) as info:
        model.load_state_dict(state)
    for word in words:
        assert word in str(info.value)
    _assert_state_equal(model, before)  # every other key was good, and still none was loaded


def test_load_state_dict_rejects_a_non_mapping():
    with pytest.raises(TypeError, match="mapping"):
        nnc.Linear(2, 2).load_state_dict([np.ones((2, 2)), np.ones(2)])


def test_load_state_dict_not_strict_loads_the_matching_keys():
    model = _small_model()
    before = _copy_state(model)
    state = _new_state(model, 0.25)
    del state["0.bias"], state["1.running_mean"]
    state["extra.weight"] = np.ones(3)
    result = model.load_state_dict(state, strict=False)
    assert result == (["0.bias", "1.running_mean"], ["extra.weight"])
    assert result.missing_keys == ["0.bias", "1.running_mean"] and result.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(model[0].bias.data, before["0.bias"])
    np.testing.assert_array_equal(model[1].running_mean, before["1.running_mean"])
    np.testing.assert_array_equal(model[0].weight.data, 0.25)
    # a shape mismatch is still an error, and still loads nothing
    state["0.weight"] = np.ones(2)
    with pytest.raises(ValueError, match="0.weight"):
        model.load_state_dict(state, strict=False)


def test_state_dict_round_trip_between_models():
    a, b = _small_model(), nnc.Sequential(nnc.Conv2d(2, 3, 3, rng=5), nnc.BatchNorm2d(3), nnc.ReLU(), nnc.Flatten(),
                                          nnc.Linear(12, 2, rng=6), nnc.GroupNorm(1, 2))
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    a(x)  # moves the running statistics off their start
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))


# --------------------------------------------------------------------------- dtype and device


def test_to_converts_parameters_and_float_buffers_only():
    model = _small_model()
    x32 = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    _run(model, x32)
    values = _copy_state(model)
    assert model.to(np.float64) is model
    for name, value in model.state_dict().items():
        expected = np.int64 if name.endswith("num_batches_tracked") else np.float64
        assert value.dtype == expected, name
        np.testing.assert_array_equal(value, values[name])
    assert all(p.grad is None for p in model.parameters())  # converting drops the gradients
    assert model(x32.astype(np.float64)).dtype == np.float64
    assert model.float() is model
    assert {v.dtype for k, v in model.state_dict().items() if "num_batches" not in k} == {np.dtype(np.float32)}
    assert model.double() is model and model[0].weight.dtype == np.float64
    assert model.to(dtype=np.float32) is model and model[4].weight.dtype == np.float32
    assert model.to("cpu", np.float64) is model and model[4].weight.dtype == np.float64
    assert model.to("cpu") is model and model[4].weight.dtype == np.float64
    assert model.state_dict()["1.num_batches_tracked"].dtype == np.int64


def test_bad_devices_and_dtypes_raise():
    model = nnc.Linear(2, 2)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'tpu'"):
        model.to("tpu")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'cuda:1'"):
        model.to(device="cuda:1")
    with pytest.raises(TypeError, match="float32 or float64"):
        model.to(np.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        model.to(dtype=np.int64)
    assert model.weight.dtype == np.float32


# --------------------------------------------------------------------------- seeding and init


def test_manual_seed_makes_initialization_reproducible():
    def build():
        return nnc.Sequential(nnc.Conv2d(2, 3, 3), nnc.ConvTranspose1d(2, 4, 2), nnc.Linear(4, 5))

    numbaconv.manual_seed(42)
    a = build()
    numbaconv.manual_seed(42)
    b = build()
    numbaconv.manual_seed(43)
    c = build()
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key], err_msg=key)
        assert not np.array_equal(value, c.state_dict()[key]), key
    # consecutive layers draw different numbers; an explicit rng overrides the global generator
    assert not np.array_equal(a[0].weight.data, build()[0].weight.data)
    np.testing.assert_array_equal(nnc.Linear(3, 4, rng=8).weight.data, nnc.Linear(3, 4, rng=8).weight.data)
    np.testing.assert_array_equal(nnc.Linear(3, 4, rng=np.random.default_rng(8)).weight.data,
                                  nnc.Linear(3, 4, rng=8).weight.data)


INIT_CASES = [
    # (layer, fan_in): fan_in = weight.shape[1] * prod(kernel), the transposed layers' too (as torch)
    (lambda dt: nnc.Conv2d(8, 64, 3, dtype=dt, rng=0), 8 * 9),
    (lambda dt: nnc.Conv1d(6, 63, 5, groups=3, dtype=dt, rng=1), 2 * 5),
    (lambda dt: nnc.Conv3d(2, 32, (2, 3, 2), dtype=dt, rng=2), 2 * 12),
    (lambda dt: nnc.ConvTranspose2d(64, 4, 3, dtype=dt, rng=3), 4 * 9),
    (lambda dt: nnc.ConvTranspose1d(32, 6, 2, groups=2, dtype=dt, rng=4), 3 * 2),
    (lambda dt: nnc.Linear(20, 100, dtype=dt, rng=5), 20),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make, fan_in", INIT_CASES)
def test_initialization_is_uniform_within_one_over_sqrt_fan_in(make, fan_in, dtype):
    layer = make(dtype)
    bound = 1 / np.sqrt(fan_in)
    for name, param in layer.named_parameters():
        w = param.data.astype(np.float64)
        assert param.dtype == dtype
        assert np.all(np.abs(w) <= dtype(bound)), name  # rounding to dtype is monotonic
        if w.size >= 500:  # uniform: reaches near the bound, mean near 0, variance bound**2 / 3
            assert np.max(np.abs(w)) > 0.98 * bound, name
            assert abs(w.mean()) < 0.1 * bound, name
            assert abs(w.var() / (bound ** 2 / 3) - 1) < 0.15, name


def test_initialization_bound_equals_torchs():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for ours, theirs in [(nnc.Conv2d(8, 64, 3, rng=0), torch.nn.Conv2d(8, 64, 3)),
                         (nnc.ConvTranspose2d(64, 4, 3, rng=0), torch.nn.ConvTranspose2d(64, 4, 3)),
                         (nnc.Linear(20, 100, rng=0), torch.nn.Linear(20, 100))]:
        for key, value in theirs.state_dict().items():
            if value.numel() < 64:  # too few draws to say where the bound is
                continue
            a = np.abs(ours.state_dict()[key]).max()
            b = value.abs().max().item()
            # both reach near the same bound: within 3% for the weights (hundreds of draws or
            # more), 12% for the biases (64 or 100 draws: the chance of missing is below 1e-3)
            assert abs(a - b) < (0.03 if value.numel() >= 500 else 0.12) * b, key


def test_default_normalization_state_equals_torchs():
    torch = pytest.importorskip("torch")
    for name, args in [("BatchNorm1d", (3,)), ("BatchNorm2d", (2,)), ("BatchNorm3d", (4,)), ("GroupNorm", (2, 4))]:
        ours, theirs = getattr(nnc, name)(*args), getattr(torch.nn, name)(*args)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for key, value in theirs.state_dict().items():
            np.testing.assert_array_equal(ours.state_dict()[key], value.numpy(), err_msg=key)


def test_manual_seed_rejects_bad_seeds():
    with pytest.raises(TypeError, match="seed"):
        numbaconv.manual_seed(1.5)
    with pytest.raises(ValueError, match="seed"):
        numbaconv.manual_seed(-1)


# --------------------------------------------------------------------------- constructor errors


CONSTRUCTOR_ERRORS = [
    (lambda: nnc.Conv2d(0, 2, 3), ValueError, "in_channels"),
    (lambda: nnc.Conv2d(2.0, 2, 3), TypeError, "in_channels"),
    (lambda: nnc.Conv1d(2, -1, 3), ValueError, "out_channels"),
    (lambda: nnc.Conv2d(3, 4, 3, groups=2), ValueError, "in_channels must be divisible by groups"),
    (lambda: nnc.Conv2d(4, 3, 3, groups=2), ValueError, "out_channels must be divisible by groups"),
    (lambda: nnc.ConvTranspose2d(4, 3, 3, groups=2), ValueError, "out_channels must be divisible by groups"),
    (lambda: nnc.Conv2d(2, 2, 3, groups=0), ValueError, "groups"),
    (lambda: nnc.Conv2d(2, 2, 0), ValueError, "kernel_size"),
    (lambda: nnc.Conv2d(2, 2, (3, 3, 3)), TypeError, "kernel_size"),
    (lambda: nnc.Conv3d(2, 2, "3"), TypeError, "kernel_size"),
    (lambda: nnc.Conv2d(2, 2, 3, stride=0), ValueError, "stride"),
    (lambda: nnc.Conv2d(2, 2, 3, dilation=(1, 0)), ValueError, "dilation"),
    (lambda: nnc.Conv2d(2, 2, 3, padding=-1), ValueError, "padding"),
    (lambda: nnc.Conv2d(2, 2, 3, padding="full"), ValueError, "padding"),
    (lambda: nnc.Conv2d(2, 2, 3, padding="same", stride=2), ValueError, "padding='same' needs stride 1"),
    (lambda: nnc.Conv2d(2, 2, 3, padding_mode="mirror"), ValueError, "padding_mode"),
    (lambda: nnc.ConvTranspose2d(2, 2, 3, padding_mode="reflect"), ValueError, "padding_mode"),
    (lambda: nnc.Conv2d(2, 2, 3, bias="yes"), TypeError, "bias"),
    (lambda: nnc.Conv2d(2, 2, 3, dtype=np.int32), TypeError, "dtype"),
    (lambda: nnc.Conv2d(2, 2, 3, dtype="nonsense"), TypeError, "dtype"),
    (lambda: nnc.Linear(3, 2, dtype=np.float16), TypeError, "dtype"),
    (lambda: nnc.Conv2d(2, 2, 3, device="gpu"), ValueError, "device must be 'cpu' or 'cuda', got 'gpu'"),
    (lambda: nnc.Conv2d(2, 2, 3, algorithm="fft"), ValueError, "algorithm"),
    (lambda: nnc.Conv2d(2, 2, 3, rng=-1), ValueError, "rng"),
    (lambda: nnc.Conv2d(2, 2, 3, rng="a"), TypeError, "rng"),
    (lambda: nnc.Linear(0, 3), ValueError, "in_features"),
    (lambda: nnc.Linear(3, 2.5), TypeError, "out_features"),
    (lambda: nnc.BatchNorm2d(0), ValueError, "num_features"),
    (lambda: nnc.BatchNorm1d(3, eps="a"), TypeError, "eps"),
    (lambda: nnc.BatchNorm2d(3, momentum="a"), TypeError, "momentum"),
    (lambda: nnc.BatchNorm3d(3, dtype=np.int64), TypeError, "dtype"),
    (lambda: nnc.GroupNorm(3, 4), ValueError, "num_channels must be divisible by num_groups"),
    (lambda: nnc.GroupNorm(0, 4), ValueError, "num_groups"),
    (lambda: nnc.GroupNorm(2, 4, dtype=np.int32), TypeError, "dtype"),
    (lambda: nnc.LocalResponseNorm(0), ValueError, "size"),
    (lambda: nnc.Dropout(1.0), ValueError, "p"),
    (lambda: nnc.Dropout(-0.1), ValueError, "p"),
    (lambda: nnc.Dropout("a"), TypeError, "p"),
    (lambda: nnc.LeakyReLU("a"), TypeError, "negative_slope"),
    (lambda: nnc.ELU(None), TypeError, "alpha"),
    (lambda: nnc.Softmax(dim=1.5), TypeError, "dim"),
    (lambda: nnc.LogSoftmax(dim=True), TypeError, "dim"),
    (lambda: nnc.MaxPool2d(), TypeError, "kernel_size"),
    (lambda: nnc.AvgPool2d(2, foo=1), TypeError, "foo"),
    (lambda: nnc.MaxPool1d(2, 2, 0, 1, False, False, 1), TypeError, "at most 6"),
    (lambda: nnc.CrossEntropyLoss(reduction="avg"), ValueError, "reduction"),
]


@pytest.mark.parametrize("build, exception, words", CONSTRUCTOR_ERRORS, ids=lambda v: v if isinstance(v, str) else "")
def test_constructor_errors_name_the_argument(build, exception, words):
    with pytest.raises(exception, match=words.replace("(", r"\(").replace(")", r"\)")):
        build()


@pytest.mark.parametrize("layer, x", [
    (nnc.MaxPool2d(0), np.zeros((1, 1, 4, 4), np.float32)),
    (nnc.AvgPool2d(2, padding=2), np.zeros((1, 1, 4, 4), np.float32)),
    (nnc.AdaptiveAvgPool2d(0), np.zeros((1, 1, 4, 4), np.float32)),
    (nnc.BatchNorm2d(3), np.zeros((2, 3, 4), np.float32)),
    (nnc.BatchNorm1d(3), np.zeros((2, 4), np.float32)),
    (nnc.Conv2d(3, 2, 3), np.zeros((1, 2, 5, 5), np.float32)),
    (nnc.Conv2d(2, 2, 3), np.zeros((1, 2, 5, 5), np.float64)),
    (nnc.Linear(3, 2), np.zeros((2, 4), np.float32)),
    (nnc.Softmax(dim=3), np.zeros((2, 4), np.float32)),
], ids=lambda v: type(v).__name__ if isinstance(v, nnc.Module) else "")
def test_bad_inputs_raise_value_or_type_error(layer, x):
    with pytest.raises((ValueError, TypeError)):
        layer(x)


# --------------------------------------------------------------------------- inputs are never modified


UNMODIFIED_LAYERS = [
    (lambda: nnc.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 5, 5)),
    (lambda: nnc.ConvTranspose2d(2, 3, 3, stride=2), (2, 2, 3, 3)),
    (lambda: nnc.Conv1d(2, 2, 3, padding="same", padding_mode="circular"), (2, 2, 6)),
    (lambda: nnc.MaxPool2d(2, return_indices=True), (2, 2, 4, 4)),
    (lambda: nnc.AvgPool3d(2), (1, 2, 4, 4, 4)),
    (lambda: nnc.LPPool1d(2, 2), (2, 2, 6)),
    (lambda: nnc.AdaptiveMaxPool2d(2), (2, 2, 5, 5)),
    (lambda: nnc.ReLU(inplace=True), (2, 3, 4)),
    (lambda: nnc.ELU(inplace=True), (2, 3, 4)),
    (lambda: nnc.Sigmoid(), (2, 3, 4)),
    (lambda: nnc.Softmax(dim=1), (2, 3, 4)),
    (lambda: nnc.LogSoftmax(dim=-1), (2, 3, 4)),
    (lambda: nnc.Flatten(), (2, 3, 4)),
    (lambda: nnc.Linear(4, 2), (2, 3, 4)),
    (lambda: nnc.Dropout(0.5, inplace=True, rng=0), (2, 3, 4)),
    (lambda: nnc.BatchNorm2d(2), (3, 2, 3, 3)),
    (lambda: nnc.BatchNorm1d(3), (4, 3)),
    (lambda: nnc.GroupNorm(1, 2), (2, 2, 3)),
    (lambda: nnc.LocalResponseNorm(2), (2, 4, 3)),
    (lambda: nnc.Identity(), (2, 3)),
    (lambda: _small_model(), (2, 2, 4, 4)),
    (lambda: nnc.Residual(nnc.Conv2d(2, 2, 3, padding=1), nnc.Identity()), (2, 2, 4, 4)),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("make, shape", UNMODIFIED_LAYERS, ids=lambda v: str(v) if isinstance(v, tuple) else "")
def test_layers_never_modify_their_input_and_take_any_layout(make, shape, layout):
    rng = np.random.default_rng(len(shape))
    x = make_array(rng, shape, np.float32, layout)
    reference = make()
    state = _copy_state(reference)
    y_ref = reference(np.ascontiguousarray(x))
    y_ref = y_ref[0] if isinstance(y_ref, tuple) else y_ref
    g = make_array(np.random.default_rng(1), y_ref.shape, np.float32, layout)
    gx_ref = reference.backward(np.ascontiguousarray(g))

    layer = make()
    layer.load_state_dict(state)  # the same weights and the same starting statistics
    copies = snapshot(x, g)
    y = layer(x)
    y = y[0] if isinstance(y, tuple) else y
    gx = layer.backward(g)
    assert_unmodified([x, g], copies)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)  # Dropout: the same seed, the same mask
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-6)
    assert gx.shape == x.shape and gx.dtype == x.dtype
    # a second pass accumulates into the parameters' gradients, not into anything of the caller's
    first, gx_copy = _grads(layer), gx.copy()
    if isinstance(layer, nnc.Dropout):
        layer.eval()  # (a new mask would change the result, not the point here)
    layer(x)
    layer.backward(g)
    assert_unmodified([x, g, gx], copies + [gx_copy])  # nor the first pass's result
    for name, param in layer.named_parameters():
        np.testing.assert_allclose(param.grad, 2 * first[name], rtol=1e-5, atol=1e-6, err_msg=name)
