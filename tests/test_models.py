"""The model zoo: every model runs forward and backward; ResNet-18 and its BasicBlock against a
torchvision-style ResNet-18 written with torch.nn here, and BasicBlock's backward against
central finite differences."""

import numpy as np
import pytest

import numbaconv
from conftest import numerical_grad
from numbaconv import models, nn

# (constructor, kwargs, input shape): small inputs the architectures allow
ZOO = {
    "lenet5": (models.lenet5, {}, (2, 1, 32, 32)),
    "lenet5_rgb": (models.lenet5, {"in_channels": 3}, (2, 3, 32, 32)),
    "convnetjs_cifar10": (models.convnetjs_cifar10, {}, (2, 3, 32, 32)),
    "resnet18": (models.resnet18, {"in_channels": 2}, (2, 2, 32, 32)),
    "audio_cnn1d": (models.audio_cnn1d, {}, (2, 1, 400)),
    "audio_cnn1d_stereo": (models.audio_cnn1d, {"in_channels": 2, "channels": 8}, (3, 2, 81)),
    "cnn3d": (models.cnn3d, {}, (2, 1, 5, 6, 7)),
    "cnn3d_rgb": (models.cnn3d, {"in_channels": 3, "channels": 4}, (2, 3, 1, 9, 9)),  # a one-frame clip
}

# the big ones are built once: their 4096-wide linears take seconds to initialize
@pytest.fixture(scope="module")
def alexnet7():
    return models.alexnet(num_classes=7, rng=0)


@pytest.fixture(scope="module")
def vgg11_bn7():
    return models.vgg11(num_classes=7, batch_norm=True, rng=0)


def run_forward_backward(model, shape, num_classes=7):
    """Forward and backward in train mode, then eval mode; every parameter gets a gradient."""
    model.train().zero_grad()
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    y = model(x)
    assert y.shape == (shape[0], num_classes) and y.dtype == np.float32
    assert np.isfinite(y).all()
    grad_x = model.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert grad_x.shape == x.shape and grad_x.dtype == np.float32
    assert np.isfinite(grad_x).all() and np.any(grad_x != 0)
    for key, param in model.named_parameters():
        assert param.grad is not None, f"{key} has no gradient"
        assert param.grad.shape == param.shape and param.grad.dtype == np.float32, key
        assert np.isfinite(param.grad).all(), key
    # eval mode runs too, and the first layer can skip its input gradient
    model.eval().zero_grad()
    y = model(x)
    assert model.backward(np.ones_like(y), input_grad=False) is None
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ZOO)
def test_forward_and_backward(name):
    make, kwargs, shape = ZOO[name]
    run_forward_backward(make(num_classes=7, rng=0, **kwargs), shape)


def test_alexnet_forward_and_backward(alexnet7):
    run_forward_backward(alexnet7, (1, 3, 63, 63))  # 63x63 is the smallest AlexNet takes


def test_vgg11_bn_forward_and_backward(vgg11_bn7):
    run_forward_backward(vgg11_bn7, (1, 3, 32, 32))  # the adaptive pool takes 1x1 maps to 7x7


@pytest.mark.parametrize("name", ["lenet5", "convnetjs_cifar10", "resnet18", "audio_cnn1d", "cnn3d"])
def test_float64_and_seeds(name):
    make, kwargs, shape = ZOO[name]
    model = make(dtype=np.float64, rng=3, **kwargs)
    # the same seed gives the same weights; one seed still gives every layer its own draws
    again = make(dtype=np.float64, rng=3, **kwargs).state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, again[key], err_msg=key)
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert all(b.dtype in (np.float64, np.int64) for b in model.buffers())
    x = np.random.default_rng(0).standard_normal(shape)
    y = model(x)
    assert y.dtype == np.float64
    assert model.backward(np.ones_like(y)).dtype == np.float64
    weights = [p.data for p in model.parameters() if p.ndim > 1]
    for a, b in zip(weights, weights[1:]):
        if a.shape == b.shape:
            assert not np.array_equal(a, b)
    with pytest.raises(TypeError, match="dtype"):
        make(dtype=np.int32, **kwargs)


def test_manual_seed_reproduces_default_init():
    numbaconv.manual_seed(5)
    a = models.lenet5().state_dict()
    numbaconv.manual_seed(5)
    b = models.lenet5().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_lenet5_shapes():
    model = models.lenet5()
    x = np.zeros((1, 1, 32, 32), np.float32)
    sizes = []
    for layer in model.features:
        x = layer(x)
        sizes.append(x.shape[1:])
    assert sizes == [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 10, 10), (16, 5, 5)]
    assert list(model.state_dict()) == [f"{part}.{i}.{p}" for part, idx in (("features", (0, 3)),
                                                                             ("classifier", (0, 2, 4)))
                                        for i in idx for p in ("weight", "bias")]


def test_alexnet_layout(alexnet7):
    model = alexnet7
    expected = [f"features.{i}.{p}" for i in (0, 4, 8, 10, 12) for p in ("weight", "bias")]
    expected += [f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")]
    assert list(model.state_dict()) == expected
    assert [model.features[i].out_channels for i in (0, 4, 8, 10, 12)] == [96, 256, 384, 384, 256]
    lrn = [m for m in model.features if isinstance(m, nn.LocalResponseNorm)]
    assert [(m.size, m.alpha, m.beta, m.k) for m in lrn] == [(5, 1e-4, 0.75, 2.0)] * 2
    conv1 = model.features[0]
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((11, 11), (4, 4), (2, 2))
    assert sum(p.size for p in model.parameters()) == 62_378_344 - 4_097_000 + 4096 * 7 + 7


def test_vgg_batch_norm_keys(vgg11_bn7):
    model = vgg11_bn7
    keys = list(model.state_dict())
    assert keys[:7] == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                        "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked"]
    assert "features.25.weight" in keys and "features.28.weight" not in keys  # 8 convs, 8 BNs, 8 ReLUs, 5 pools
    assert sum(p.size for p in model.parameters()) == 132_868_840 - 4_097_000 + 4096 * 7 + 7
    assert model.classifier[0].in_features == 25088


# --------------------------------------------------------------------------- against torch.nn


def _torch_resnet18(num_classes, in_channels):
    pytest.importorskip("torch")
    from torch_ref import resnet18

    return resnet18(num_classes, in_channels)


def _randomize_batch_norms(model, rng):
    """Non-trivial BN affine parameters and running statistics, so eval mode tests them."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.data[...] = rng.uniform(0.5, 1.5, c)
            module.bias.data[...] = rng.uniform(-0.5, 0.5, c)
            module.running_mean[...] = rng.uniform(-0.2, 0.2, c)
            module.running_var[...] = rng.uniform(0.5, 1.5, c)


def _to_torch(module, tmodule, dtype):
    import torch
    tmodule.to(torch.float64 if dtype == np.float64 else torch.float32)
    tmodule.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in module.state_dict().items()})


def _compare(module, tmodule, x, dtype, train, rtol):
    """Forward, input gradient, parameter gradients and (train) running statistics agree."""
    import torch
    module.train(train)
    tmodule.train(train)
    module.zero_grad()
    y = module(x)
    grad_out = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    grad_x = module.backward(grad_out)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tmodule(xt)
    yt.backward(torch.from_numpy(grad_out))

    def close(got, ref, what):
        ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
        scale = max(1.0, float(np.max(np.abs(ref))))
        np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * scale, err_msg=what)

    close(y, yt, "output")
    close(grad_x, xt.grad, "input gradient")
    tparams = dict(tmodule.named_parameters())
    for key, param in module.named_parameters():
        close(param.grad, tparams[key].grad, f"gradient of {key}")
    tstate = tmodule.state_dict()
    for key, value in module.state_dict().items():  # running statistics moved alike in training
        close(value, tstate[key], key)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)], ids=["float64", "float32"])
def test_resnet18_matches_torch(dtype, rtol, train):
    pytest.importorskip("torch")
    model = models.resnet18(num_classes=10, in_channels=3, dtype=dtype, rng=0)
    _randomize_batch_norms(model, np.random.default_rng(1))
    tmodel, _ = _torch_resnet18(10, 3)
    assert list(model.state_dict()) == list(tmodel.state_dict())
    _to_torch(model, tmodel, dtype)
    x = np.random.default_rng(2).standard_normal((2, 3, 40, 40)).astype(dtype)
    _compare(model, tmodel, x, dtype, train, rtol)


def test_resnet18_state_dict_keys():
    pytest.importorskip("torch")
    model = models.resnet18()
    tmodel, _ = _torch_resnet18(1000, 3)
    keys = list(model.state_dict())
    assert keys == list(tmodel.state_dict())
    assert {"layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
            "bn1.num_batches_tracked", "fc.bias"} <= set(keys)
    assert "layer1.0.downsample.0.weight" not in keys
    assert sum(p.size for p in model.parameters()) == 11_689_512
    assert [name for name, _ in model.named_children()] == [name for name, _ in tmodel.named_children()]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("inplanes, planes, stride", [(2, 4, 2), (4, 4, 1)], ids=["downsample", "identity"])
def test_basic_block_matches_torch(inplanes, planes, stride, train):
    pytest.importorskip("torch")
    _, TorchBasicBlock = _torch_resnet18(10, 3)
    import torch
    downsample = tdownsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(models.conv1x1(inplanes, planes, stride, dtype=np.float64),
                                   nn.BatchNorm2d(planes, dtype=np.float64))
        tdownsample = torch.nn.Sequential(torch.nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                          torch.nn.BatchNorm2d(planes))
    block = models.BasicBlock(inplanes, planes, stride, downsample, dtype=np.float64, rng=4)
    _randomize_batch_norms(block, np.random.default_rng(5))
    tblock = TorchBasicBlock(inplanes, planes, stride, tdownsample)
    assert list(block.state_dict()) == list(tblock.state_dict())
    _to_torch(block, tblock, np.float64)
    x = np.random.default_rng(6).standard_normal((3, inplanes, 6, 6))
    _compare(block, tblock, x, np.float64, train, 1e-11)


# --------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_basic_block_finite_differences(train):
    rng = np.random.default_rng(11)
    downsample = nn.Sequential(models.conv1x1(2, 4, 2, dtype=np.float64, rng=rng),
                               nn.BatchNorm2d(4, dtype=np.float64))
    block = models.BasicBlock(2, 4, stride=2, downsample=downsample, dtype=np.float64, rng=rng)
    _randomize_batch_norms(block, rng)
    block.train(train)
    x = rng.standard_normal((2, 2, 4, 4))
    grad_out = rng.standard_normal((2, 4, 2, 2))

    def loss():
        return float(np.sum(block(x) * grad_out))

    loss()
    grad_x = block.backward(grad_out)
    analytic = {key: p.grad.copy() for key, p in block.named_parameters()}
    np.testing.assert_allclose(grad_x, numerical_grad(loss, x), rtol=1e-6, atol=1e-7, err_msg="input")
    for key, param in block.named_parameters():
        np.testing.assert_allclose(analytic[key], numerical_grad(loss, param.data), rtol=1e-6, atol=1e-7,
                                   err_msg=key)


def test_basic_block_rejects_bad_downsample():
    with pytest.raises(TypeError, match="downsample"):
        models.BasicBlock(2, 4, 2, downsample=lambda x: x)


def test_models_exported():
    assert numbaconv.models is models
    for name in models.__all__:
        assert hasattr(models, name)
    assert {"lenet5", "alexnet", "vgg11", "vgg16", "resnet18", "convnetjs_cifar10", "audio_cnn1d",
            "cnn3d"} <= set(models.__all__)
