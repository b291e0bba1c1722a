"""numbaconv.nn layers against torch.nn: the same constructor arguments, the same state.

For each layer: the state_dict keys (in order), shapes and parameter names equal torch's; the
layer's own state (randomized) copied into the torch module gives the same outputs over two
forward calls, the same running statistics after each, and after a backward the same input
gradient and parameter gradients as torch's autograd; and the reverse, torch's (randomized)
state loaded with load_state_dict gives torch's outputs. The torch module always runs in
float64 on the same values, so a float64 layer is held to conftest's float64 tolerance and a
float32 layer to the float32 one (its own rounding only).
"""

import inspect
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import numbaconv  # noqa: E402
import numbaconv.nn as nnc  # noqa: E402
from conftest import DTYPES, assert_close  # noqa: E402

tnn = torch.nn


# --------------------------------------------------------------------------- building both sides


class TorchResidual(tnn.Module):
    """torch's spelling of numbaconv.nn.Residual: body(x) + shortcut(x), the same child names."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def layer(name, *args, **kwargs):
    """A factory ``make(lib, dtype)`` building ``lib.<name>(*args, **kwargs)`` for lib numbaconv.nn
    or torch.nn, passing dtype where the layer takes one."""

    def make(lib, dtype):
        cls = getattr(lib, name)
        extra = {"dtype": dtype} if "dtype" in inspect.signature(cls).parameters else {}
        return cls(*args, **kwargs, **extra)

    return make


def seq(*makers):
    return lambda lib, dtype: lib.Sequential(*(m(lib, dtype) for m in makers))


def residual(body, shortcut=None):
    def make(lib, dtype):
        cls = nnc.Residual if lib is nnc else TorchResidual
        return cls(body(lib, dtype), None if shortcut is None else shortcut(lib, dtype))

    return make


# (id, factory, input shape, modes): modes "train" and/or "eval"; inputs of LPPool are positive
TRAIN, BOTH = ("train",), ("train", "eval")
CASES = [
    # convolutions
    ("conv1d_stride_dilation", layer("Conv1d", 3, 4, 3, stride=2, padding=1, dilation=2), (2, 3, 9), TRAIN),
    ("conv1d_same_groups_reflect_nobias",
     layer("Conv1d", 4, 6, 3, padding="same", groups=2, padding_mode="reflect", bias=False), (2, 4, 7), TRAIN),
    ("conv2d_plain", layer("Conv2d", 2, 4, 3), (2, 2, 6, 5), TRAIN),
    ("conv2d_groups_circular",
     layer("Conv2d", 4, 4, (3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2,
           padding_mode="circular"), (2, 4, 7, 6), TRAIN),
    ("conv2d_same_depthwise_replicate_nobias",
     layer("Conv2d", 3, 6, 3, padding="same", groups=3, padding_mode="replicate", bias=False), (1, 3, 5, 6), TRAIN),
    ("conv2d_valid", layer("Conv2d", 2, 3, 2, padding="valid", stride=2), (2, 2, 5, 5), TRAIN),
    ("conv3d_groups", layer("Conv3d", 2, 4, 2, stride=(1, 2, 1), padding=1, groups=2), (2, 2, 4, 5, 4), TRAIN),
    ("conv3d_same_reflect",
     layer("Conv3d", 2, 2, 3, padding="same", padding_mode="reflect", dilation=(1, 1, 2)), (1, 2, 4, 4, 5), TRAIN),
    ("convT1d", layer("ConvTranspose1d", 3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 5), TRAIN),
    ("convT1d_groups_dilation_nobias",
     layer("ConvTranspose1d", 4, 6, 2, stride=3, output_padding=2, groups=2, dilation=2, bias=False),
     (1, 4, 4), TRAIN),
    ("convT2d_groups",
     layer("ConvTranspose2d", 4, 4, (3, 2), stride=2, padding=1, output_padding=1, groups=2, dilation=(2, 1)),
     (1, 4, 3, 3), TRAIN),
    ("convT2d_plain", layer("ConvTranspose2d", 2, 3, 3), (2, 2, 3, 4), TRAIN),
    ("convT3d_groups", layer("ConvTranspose3d", 2, 4, 2, stride=2, groups=2, output_padding=1, dilation=2),
     (1, 2, 2, 2, 2), TRAIN),
    ("convT3d_nobias",
     layer("ConvTranspose3d", 3, 2, (2, 3, 2), stride=(2, 1, 2), padding=(0, 1, 1), output_padding=(1, 0, 0),
           bias=False), (1, 3, 2, 3, 2), TRAIN),
    # pooling
    # (in evaluation max pooling keeps no indices and its backward finds the maxima again)
    ("maxpool1d_ceil", layer("MaxPool1d", 3, 2, 1, 2, ceil_mode=True), (2, 3, 10), BOTH),
    ("maxpool2d", layer("MaxPool2d", 2), (2, 3, 6, 6), BOTH),
    ("maxpool2d_3x3s2", layer("MaxPool2d", 3, 2, 1), (2, 3, 9, 9), BOTH),
    ("maxpool2d_indices_ceil",
     layer("MaxPool2d", (3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True, return_indices=True),
     (1, 2, 7, 5), TRAIN),
    ("maxpool3d_indices", layer("MaxPool3d", 2, stride=2, padding=1, return_indices=True), (1, 2, 4, 5, 4), TRAIN),
    ("avgpool1d_ceil_nopad", layer("AvgPool1d", 3, 2, 1, ceil_mode=True, count_include_pad=False),
     (2, 3, 8), TRAIN),
    ("avgpool2d_pad", layer("AvgPool2d", 3, stride=2, padding=1), (1, 2, 7, 6), TRAIN),
    ("avgpool2d_divisor", layer("AvgPool2d", 2, divisor_override=3), (1, 2, 5, 4), TRAIN),
    ("avgpool3d_ceil",
     layer("AvgPool3d", (2, 2, 3), stride=(1, 2, 2), padding=(1, 0, 1), ceil_mode=True, count_include_pad=False),
     (1, 2, 4, 5, 6), TRAIN),
    ("lppool1d", layer("LPPool1d", 2, 3, stride=2), (2, 3, 9), TRAIN),
    ("lppool2d_ceil", layer("LPPool2d", 3, 2, ceil_mode=True), (1, 2, 5, 7), TRAIN),
    ("lppool3d", layer("LPPool3d", 1.5, (2, 2, 1)), (1, 2, 4, 4, 3), TRAIN),
    ("adaptiveavg1d", layer("AdaptiveAvgPool1d", 4), (2, 3, 10), TRAIN),
    ("adaptiveavg2d", layer("AdaptiveAvgPool2d", (3, 2)), (1, 2, 7, 5), TRAIN),
    ("adaptiveavg3d", layer("AdaptiveAvgPool3d", 2), (1, 2, 5, 4, 3), TRAIN),
    ("adaptivemax1d_indices", layer("AdaptiveMaxPool1d", 3, return_indices=True), (2, 2, 8), TRAIN),
    ("adaptivemax2d", layer("AdaptiveMaxPool2d", (2, 3)), (1, 2, 5, 7), TRAIN),
    ("adaptivemax3d_indices", layer("AdaptiveMaxPool3d", (2, 1, 3), return_indices=True), (1, 2, 4, 3, 5), TRAIN),
    # activations
    ("relu", layer("ReLU"), (2, 3, 4), TRAIN),
    ("leaky_relu", layer("LeakyReLU", 0.2), (2, 3, 4), TRAIN),
    ("elu", layer("ELU", alpha=0.7), (2, 3, 4), TRAIN),
    ("sigmoid", layer("Sigmoid"), (2, 5), TRAIN),
    ("tanh", layer("Tanh"), (2, 2, 3, 3), TRAIN),
    ("softmax_dim1", layer("Softmax", dim=1), (2, 3, 4), TRAIN),
    ("softmax_dim_last", layer("Softmax", dim=-1), (2, 3, 4), TRAIN),
    # dim=None: torch's legacy rule, dim 0 for 1-D and 3-D inputs, else dim 1
    ("softmax_none_1d", layer("Softmax"), (5,), TRAIN),
    ("softmax_none_2d", layer("Softmax"), (3, 4), TRAIN),
    ("softmax_none_3d", layer("Softmax"), (3, 4, 2), TRAIN),
    ("softmax_none_4d", layer("Softmax"), (2, 3, 2, 2), TRAIN),
    ("log_softmax_dim0", layer("LogSoftmax", dim=0), (3, 4), TRAIN),
    ("log_softmax_none_3d", layer("LogSoftmax"), (3, 2, 4), TRAIN),
    ("log_softmax_none_2d", layer("LogSoftmax"), (3, 5), TRAIN),
    # linear, flatten, identity
    ("flatten", layer("Flatten"), (2, 3, 2, 2), TRAIN),
    ("flatten_middle", layer("Flatten", 1, 2), (2, 3, 4, 2), TRAIN),
    ("linear", layer("Linear", 5, 3), (4, 5), TRAIN),
    ("linear_nobias_3d", layer("Linear", 5, 3, bias=False), (2, 3, 5), TRAIN),
    ("linear_1d_input", layer("Linear", 5, 2), (5,), TRAIN),
    ("identity", layer("Identity"), (2, 3), TRAIN),
    ("dropout_eval", layer("Dropout", 0.4), (3, 4), ("eval",)),
    # normalization
    ("bn1d_2d_input", layer("BatchNorm1d", 3), (4, 3), BOTH),
    ("bn1d_3d_input", layer("BatchNorm1d", 3, momentum=0.2), (2, 3, 5), BOTH),
    ("bn2d", layer("BatchNorm2d", 3), (2, 3, 4, 4), BOTH),
    ("bn2d_cumulative", layer("BatchNorm2d", 3, momentum=None), (2, 3, 3, 4), BOTH),
    ("bn2d_no_affine", layer("BatchNorm2d", 2, affine=False), (3, 2, 3, 3), BOTH),
    ("bn2d_no_running_stats", layer("BatchNorm2d", 3, track_running_stats=False), (2, 3, 3, 3), BOTH),
    ("bn3d", layer("BatchNorm3d", 2, eps=1e-3, momentum=0.3), (2, 2, 3, 3, 2), BOTH),
    ("bn1d_no_affine_no_stats", layer("BatchNorm1d", 4, affine=False, track_running_stats=False), (5, 4), BOTH),
    ("groupnorm", layer("GroupNorm", 2, 4), (2, 4, 3, 3), TRAIN),
    ("groupnorm_no_affine_1d", layer("GroupNorm", 3, 6, eps=1e-3, affine=False), (2, 6, 5), TRAIN),
    ("groupnorm_one_group_3d", layer("GroupNorm", 1, 2), (2, 2, 2, 2, 2), TRAIN),
    ("lrn", layer("LocalResponseNorm", 3), (2, 5, 4, 4), TRAIN),
    ("lrn_params_1d", layer("LocalResponseNorm", 2, alpha=1e-2, beta=0.5, k=2.0), (1, 4, 6), TRAIN),
    # containers
    ("sequential_cnn",
     seq(layer("Conv2d", 2, 4, 3, padding=1), layer("BatchNorm2d", 4), layer("ReLU"), layer("MaxPool2d", 2),
         layer("Flatten"), layer("Linear", 4 * 3 * 3, 5)), (2, 2, 6, 6), BOTH),
    ("residual_identity",
     residual(seq(layer("Conv2d", 3, 3, 3, padding=1), layer("BatchNorm2d", 3), layer("Tanh"))),
     (2, 3, 4, 4), BOTH),
    ("residual_shortcut",
     residual(seq(layer("Conv2d", 2, 4, 3, stride=2, padding=1), layer("ELU")),
              seq(layer("Conv2d", 2, 4, 1, stride=2, bias=False), layer("BatchNorm2d", 4))),
     (2, 2, 5, 5), BOTH),
]

PARAMS = [pytest.param(make, shape, mode, id=f"{name}-{mode}")
          for name, make, shape, modes in CASES for mode in modes]


# --------------------------------------------------------------------------- helpers


def _seed(*parts):
    return zlib.crc32(repr(parts).encode())


def _random_state(state, rng):
    """New arrays of the shapes and dtypes of ``state`` (name -> numpy array): normal values,
    running variances in [0.5, 2), batch counters 3."""
    out = {}
    for key, a in state.items():
        if a.dtype.kind != "f":
            out[key] = np.full(a.shape, 3, a.dtype)
        elif key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 2.0, a.shape).astype(a.dtype)
        else:
            out[key] = rng.standard_normal(a.shape).astype(a.dtype)
    return out


def _torch_numpy_state(module):
    return {key: value.detach().numpy() for key, value in module.state_dict().items()}


def _input(rng, shape, dtype, positive):
    x = rng.standard_normal(shape)
    if positive:
        x = np.abs(x) + 0.1
    return x.astype(dtype)


def _close(got, want, dtype, what):
    """``got`` (numpy, ``dtype``) equals torch's float64 ``want`` within conftest's tolerance."""
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert_close(got, want.astype(np.float64), dtype=dtype, what=what)


def _check_state(ours, theirs, dtype):
    """Equal buffers (running statistics, batch counters) on both sides."""
    theirs_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        if value.dtype.kind == "f":
            _close(value, theirs_state[key], dtype, key)
        else:
            np.testing.assert_array_equal(value, theirs_state[key].numpy(), err_msg=key)
            assert value.dtype == np.int64 and value.shape == tuple(theirs_state[key].shape), key


def _split(y):
    """(output, indices or None) of a layer that may return indices."""
    return (y[0], y[1]) if isinstance(y, tuple) else (y, None)


# --------------------------------------------------------------------------- the parity test


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make, x_shape, mode", PARAMS)
def test_layer_matches_torch(make, x_shape, mode, dtype):
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(_seed(x_shape, mode, dtype.name, repr(make(nnc, dtype))))
    positive = "LPPool" in repr(make(nnc, dtype))
    ours, theirs = make(nnc, dtype), make(tnn, torch.float64)

    # the same state layout: keys in order, shapes, parameter names, dtypes
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert state[key].shape == tuple(value.shape), key
        assert state[key].dtype == (np.int64 if key.endswith("num_batches_tracked") else dtype), key
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]

    # numbaconv's state, randomized, into torch
    ours.load_state_dict(_random_state(state, rng))
    theirs.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    ours.train(mode == "train")
    theirs.train(mode == "train")

    for step in range(2):  # two steps: the running statistics' update is checked twice
        x = _input(rng, x_shape, dtype, positive)
        x_copy = x.copy()
        xt = torch.tensor(x.astype(np.float64), requires_grad=True)
        y, indices = _split(ours(x))
        yt, indices_t = _split(theirs(xt))
        np.testing.assert_array_equal(x, x_copy, err_msg="the layer modified its input")
        _close(y, yt, dtype, f"output, step {step}")
        if indices is not None:
            assert indices.dtype == np.int64
            np.testing.assert_array_equal(indices, indices_t.numpy())
        _check_state(ours, theirs, dtype)

    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = ours.backward(grad_out)
    yt.backward(torch.from_numpy(grad_out.astype(np.float64)))
    _close(grad_x, xt.grad, dtype, "grad_x")
    theirs_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        assert param.grad is not None, name
        assert param.grad.dtype == dtype and param.grad.shape == param.shape, name
        _close(param.grad, theirs_params[name].grad, dtype, f"grad of {name}")
    _check_state(ours, theirs, dtype)  # backward changes no running statistic

    # the reverse: torch's state, randomized, loaded into a fresh numbaconv layer
    ours, theirs = make(nnc, dtype), make(tnn, torch.float64)
    theirs.load_state_dict({key: torch.from_numpy(value)
                            for key, value in _random_state(_torch_numpy_state(theirs), rng).items()})
    assert ours.load_state_dict(theirs.state_dict()) == ([], [])  # torch tensors, read through __array__
    ours.train(mode == "train")
    theirs.train(mode == "train")
    x = _input(rng, x_shape, dtype, positive)
    with torch.no_grad():
        yt, _ = _split(theirs(torch.from_numpy(x.astype(np.float64))))
    _close(_split(ours(x))[0], yt, dtype, "output after loading torch's state")
    _check_state(ours, theirs, dtype)


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_training_scales_kept_elements_and_drops_about_p(dtype):
    rng = np.random.default_rng(5)
    p = 0.3
    x = (rng.uniform(0.5, 1.5, (40, 50)) * rng.choice([-1, 1], (40, 50))).astype(dtype)  # no zeros
    layer_ = nnc.Dropout(p, rng=11)
    y = layer_(x)
    kept = y != 0
    assert y.dtype == dtype and y.shape == x.shape
    assert abs(1 - kept.mean() - p) < 0.03  # 2000 draws: the standard deviation is 0.01
    # torch's dropout semantics on the same mask: x * mask / (1 - p), and the same for the gradient
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = xt * torch.from_numpy(kept) / (1 - p)
    _close(y, yt, np.dtype(dtype), "dropout output")
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    yt.backward(torch.from_numpy(grad_out.astype(np.float64)))
    _close(layer_.backward(grad_out), xt.grad, np.dtype(dtype), "dropout grad")


def test_dropout_eval_is_the_identity_and_copies():
    x = np.random.default_rng(1).standard_normal((3, 4))
    layer_ = nnc.Dropout(0.5).eval()
    y = layer_(x)
    np.testing.assert_array_equal(y, x)
    assert y is not x and not np.shares_memory(y, x)
    g = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(layer_.backward(g), g)
    with torch.no_grad():
        np.testing.assert_array_equal(tnn.Dropout(0.5).eval()(torch.from_numpy(x)).numpy(), y)


def test_dropout_masks_are_reproducible_from_the_seed():
    x = np.ones((6, 7), np.float32)
    a, b = nnc.Dropout(0.5, rng=3), nnc.Dropout(0.5, rng=3)
    first, second = a(x), a(x)
    np.testing.assert_array_equal(first, b(x))  # the same seed gives the same sequence of masks
    np.testing.assert_array_equal(second, b(x))
    assert not np.array_equal(first, second)  # ... and each call draws a new mask
    # one mask per seed whatever the dtype
    np.testing.assert_array_equal(nnc.Dropout(0.5, rng=3)(x.astype(np.float64)) != 0, first != 0)
    # rng=None: numbaconv's generator, reproducible after manual_seed
    numbaconv.manual_seed(123)
    c = nnc.Dropout(0.5)(x)
    numbaconv.manual_seed(123)
    np.testing.assert_array_equal(nnc.Dropout(0.5)(x), c)
    gen = np.random.default_rng(9)
    np.testing.assert_array_equal(nnc.Dropout(0.5, rng=gen)(x), nnc.Dropout(0.5, rng=np.random.default_rng(9))(x))


def test_dropout_backward_uses_the_mask_of_its_forward():
    x = np.random.default_rng(2).standard_normal((5, 8))
    layer_ = nnc.Dropout(0.25, rng=4)
    y = layer_(x)
    kept = y != 0
    g = np.random.default_rng(3).standard_normal(x.shape)
    np.testing.assert_allclose(layer_.backward(g), g * kept / 0.75, rtol=1e-15)


# --------------------------------------------------------------------------- losses


LOSS_CASES = [
    ("CrossEntropyLoss", (4, 5), "classes"),
    ("CrossEntropyLoss", (2, 3, 4, 2), "classes"),
    ("NLLLoss", (4, 3), "classes"),
    ("MSELoss", (3, 4), "same"),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape, target_kind", LOSS_CASES, ids=lambda v: str(v))
def test_loss_matches_torch(name, shape, target_kind, dtype, reduction):
    rng = np.random.default_rng(_seed(name, shape, reduction))
    x = rng.standard_normal(shape).astype(dtype)
    if target_kind == "classes":
        target = rng.integers(0, shape[1], (shape[0], *shape[2:]))
        target_t = torch.from_numpy(target)
    else:
        target = rng.standard_normal(shape).astype(dtype)
        target_t = torch.from_numpy(target.astype(np.float64))
    ours, theirs = getattr(nnc, name)(reduction=reduction), getattr(tnn, name)(reduction=reduction)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    loss, loss_t = ours(x, target), theirs(xt, target_t)
    _close(np.asarray(loss), loss_t, np.dtype(dtype), "loss")
    if reduction == "none":
        with pytest.raises(ValueError, match="grad_out"):
            ours.backward()
        grad_out = rng.standard_normal(loss.shape).astype(dtype)
        grad = ours.backward(grad_out)
        loss_t.backward(torch.from_numpy(grad_out.astype(np.float64)))
    else:
        grad = ours.backward()
        loss_t.backward()
    _close(grad, xt.grad, np.dtype(dtype), "loss gradient")


# --------------------------------------------------------------------------- repr


REPR_CASES = [
    ("Conv2d", (1, 6, 5), {}),
    ("Conv1d", (4, 6, 3), dict(padding=1, stride=2)),
    ("Conv2d", (4, 6, 3), dict(padding="same", padding_mode="reflect", groups=2, bias=False, dilation=2)),
    ("Conv3d", (2, 4, (1, 2, 3)), dict(padding="valid", padding_mode="circular")),
    ("ConvTranspose2d", (4, 6, 3), dict(stride=2, output_padding=1, padding=1)),
    ("ConvTranspose1d", (2, 4, 3), dict(groups=2, dilation=2, bias=False)),
    ("AdaptiveAvgPool2d", ((2, 3),), {}),
    ("ReLU", (), {}),
    ("LeakyReLU", (0.2,), {}),
    ("ELU", (), {}),
    ("Sigmoid", (), {}),
    ("Tanh", (), {}),
    ("Softmax", (1,), {}),
    ("Softmax", (), {}),
    ("LogSoftmax", (-1,), {}),
    ("Flatten", (), {}),
    ("Flatten", (0, 2), {}),
    ("Linear", (4, 3), {}),
    ("Linear", (4, 3), dict(bias=False)),
    ("Dropout", (0.3,), {}),
    ("LocalResponseNorm", (3,), {}),
    ("Identity", (), {}),
    ("CrossEntropyLoss", (), {}),
    ("NLLLoss", (), {}),
]


@pytest.mark.parametrize("name, args, kwargs", REPR_CASES, ids=lambda v: str(v))
def test_repr_equals_torch(name, args, kwargs):
    assert repr(getattr(nnc, name)(*args, **kwargs)) == repr(getattr(tnn, name)(*args, **kwargs))


def test_container_repr_equals_torch():
    def build(lib):
        return lib.Sequential(lib.Conv2d(1, 6, 5), lib.ReLU(), lib.Sequential(lib.Flatten(), lib.Linear(6, 2)))

    ours = repr(build(nnc))
    assert ours == repr(build(tnn))
    assert ours.splitlines()[1] == "  (0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1))"


def test_norm_and_pool_repr_read_like_torch():
    # not equal to torch's: torch 2.13 shows a bias= argument that numbaconv's norm layers do not
    # take, and fewer of the pooling arguments than numbaconv shows; the rest reads the same
    assert repr(nnc.BatchNorm2d(3)) == "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    assert repr(nnc.BatchNorm1d(3, momentum=None, affine=False)) == (
        "BatchNorm1d(3, eps=1e-05, momentum=None, affine=False, track_running_stats=True)")
    assert repr(nnc.GroupNorm(2, 4)) == "GroupNorm(2, 4, eps=1e-05, affine=True)"
    assert repr(nnc.MaxPool2d(2)).startswith("MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1")
    assert repr(nnc.AvgPool2d(3, 1)).startswith("AvgPool2d(kernel_size=3, stride=1, padding=0")
