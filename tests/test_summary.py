"""summary(): the lecture's counts (LeNet, AlexNet, the ConvNetJS CIFAR-10 demo), the zoo's
parameter totals, and that a summary leaves the model as it found it."""

import io

import numpy as np
import pytest

import numbaconv
from numbaconv import models, nn
from numbaconv.nn.module import _CALL_HOOKS
from numbaconv.summary import LayerSummary, Summary


def rows_of(result, *types):
    return [row for row in result.rows if row.type in types]


def test_lenet_first_conv_lecture_counts():
    # 32x32x1, six 5x5 filters: 1 + 5*5*1 = 26 weights per filter, 28*28*6 = 4,704 neurons,
    # 4,704 * 26 = 122,304 connections, 6 * 26 = 156 independent parameters
    result = numbaconv.summary(models.lenet5(), (1, 32, 32), print_table=False)
    conv1 = result.rows[0]
    assert (conv1.name, conv1.type) == ("features.0", "Conv2d")
    assert conv1.output_shape == (6, 28, 28)
    assert conv1.outputs == 4704
    assert conv1.params == 156
    assert conv1.connections == 122_304
    assert conv1.macs == 4704 * 25


def test_lenet_shape_chain():
    result = numbaconv.summary(models.lenet5(), (1, 32, 32), print_table=False)
    spatial = [row.output_shape for row in rows_of(result, "Conv2d", "MaxPool2d")]
    assert spatial == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5)]  # 32 -> 28 -> 14 -> 10 -> 5
    assert [row.outputs for row in result.rows if row.type == "Flatten"] == [400]
    fc = rows_of(result, "Linear")
    assert [row.output_shape for row in fc] == [(120,), (84,), (10,)]
    assert [row.params for row in fc] == [400 * 120 + 120, 120 * 84 + 84, 84 * 10 + 10]
    assert [row.params for row in rows_of(result, "MaxPool2d", "ReLU")] == [0] * 6
    assert result.total_params == 156 + 2416 + 48_120 + 10_164 + 850 == 61_706
    assert result.output_shape == (10,)


def test_alexnet_conv1_and_overlapping_pool():
    # 1 + (224 + 2*2 - 11) / 4 = 55; a 3x3 stride-2 max pool then gives 1 + (55 - 3) / 2 = 27
    result = numbaconv.summary(models.alexnet(), (3, 224, 224), print_table=False)
    conv1, relu, lrn, pool = result.rows[:4]
    assert conv1.output_shape == (96, 55, 55)
    assert conv1.outputs == 290_400  # neurons
    assert conv1.params == 96 * (11 * 11 * 3 + 1) == 34_944  # 364 weights per neuron
    assert conv1.connections == 290_400 * 364
    assert (lrn.type, lrn.params) == ("LocalResponseNorm", 0)
    assert pool.type == "MaxPool2d"
    assert pool.output_shape == (96, 27, 27)
    assert pool.params == 0  # no weights to learn, just computing max
    assert [r.output_shape[1] for r in rows_of(result, "MaxPool2d")] == [27, 13, 6]
    assert result.total_params == 62_378_344


def test_convnetjs_cifar10_parameters():
    result = numbaconv.summary(models.convnetjs_cifar10(), (3, 32, 32), print_table=False)
    weighted = rows_of(result, "Conv2d", "Linear")
    assert [row.params for row in weighted] == [1216, 8020, 10_020, 3210]
    assert [row.output_shape for row in weighted] == [(16, 32, 32), (20, 16, 16), (20, 8, 8), (10,)]
    assert result.total_params == result.trainable_params == 22_466


def test_ten_5x5_filters_on_rgb():
    result = numbaconv.summary(nn.Conv2d(3, 10, 5), (3, 32, 32), print_table=False)
    (row,) = result.rows
    assert (row.name, row.type, row.params, row.output_shape) == ("", "Conv2d", 760, (10, 28, 28))
    assert result.total_params == 760
    assert "Conv2d" in str(result)


def test_resnet18_totals():
    result = numbaconv.summary(models.resnet18(), (3, 224, 224), print_table=False)
    assert result.total_params == result.trainable_params == 11_689_512
    assert result.total_macs == 1_814_073_344  # the commonly quoted 1.8 G multiply-adds
    names = [row.name for row in result.rows]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"] and names[-2:] == ["avgpool", "fc"]
    assert "layer2.0.downsample.0" in names
    assert result.rows[-2].output_shape == (512, 1, 1)
    assert result.rows[-1].output_shape == (1000,)


@pytest.mark.parametrize("make, total, conv_indices", [
    (models.vgg11, 132_863_336, (0, 3, 6, 8, 11, 13, 16, 18)),
    (models.vgg16, 138_357_544, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
], ids=["vgg11", "vgg16"])
def test_vgg_parameters_and_keys(make, total, conv_indices):
    # counted from parameters(), without a forward pass at 224x224
    model = make()
    assert sum(p.size for p in model.parameters()) == total
    expected = [f"features.{i}.{p}" for i in conv_indices for p in ("weight", "bias")]
    expected += [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert list(model.state_dict()) == expected  # torchvision's keys


def test_macs_and_connections_of_each_kind():
    conv = numbaconv.summary(nn.Conv2d(4, 8, 3, groups=2), (4, 6, 6), print_table=False).rows[0]
    assert conv.macs == 8 * 4 * 4 * (4 // 2) * 9
    assert conv.connections == conv.macs + 8 * 4 * 4
    no_bias = numbaconv.summary(nn.Conv1d(2, 3, 5, bias=False), (2, 10), print_table=False).rows[0]
    assert no_bias.macs == no_bias.connections == 3 * 6 * 2 * 5
    tconv = numbaconv.summary(nn.ConvTranspose2d(4, 6, 3, stride=2), (4, 5, 5), print_table=False).rows[0]
    assert tconv.output_shape == (6, 11, 11)
    assert tconv.macs == 4 * 5 * 5 * 6 * 9  # every input element meets out_channels * kernel weights
    assert tconv.connections == tconv.macs + 6 * 11 * 11
    linear = numbaconv.summary(nn.Linear(5, 3), (5,), print_table=False)
    assert (linear.rows[0].macs, linear.rows[0].connections, linear.output_shape) == (15, 18, (3,))
    conv3d = numbaconv.summary(nn.Conv3d(1, 2, 3, padding=1), (1, 4, 4, 4), print_table=False).rows[0]
    assert conv3d.macs == 2 * 64 * 27
    pool = numbaconv.summary(nn.MaxPool2d(2, return_indices=True), (1, 4, 4), print_table=False).rows[0]
    assert (pool.output_shape, pool.macs, pool.connections) == ((1, 2, 2), 0, 0)


def test_one_and_three_dimensional_models():
    audio = numbaconv.summary(models.audio_cnn1d(), (1, 16000), print_table=False)
    assert audio.rows[0].output_shape == (32, (16000 - 80) // 16 + 1)
    assert audio.output_shape == (10,)
    volume = numbaconv.summary(models.cnn3d(), (1, 8, 16, 16), print_table=False)
    assert volume.rows[0].output_shape == (16, 8, 16, 16)
    assert volume.output_shape == (10,)


def test_result_and_printing(capsys):
    model = models.lenet5()
    result = numbaconv.summary(model, (1, 32, 32))
    printed = capsys.readouterr().out
    assert printed == str(result) + "\n"
    assert isinstance(result, Summary) and all(isinstance(r, LayerSummary) for r in result.rows)
    assert "features.0 (Conv2d)" in printed and "122,304" in printed and "61,706" in printed
    assert "(6, 28, 28)" in printed and "(400,)" in printed
    assert result.total_macs == sum(r.macs for r in result.rows)
    numbaconv.summary(model, [1, 32, 32], print_table=False)
    assert capsys.readouterr().out == ""
    buffer = io.StringIO()
    numbaconv.summary(model, (1, 32, 32), file=buffer)
    assert buffer.getvalue() == printed
    assert capsys.readouterr().out == ""


def test_frozen_parameters_and_dtype():
    model = models.lenet5(dtype=np.float64)
    model.features.requires_grad_(False)
    result = numbaconv.summary(model, (1, 32, 32), print_table=False)  # float64 zeros for a float64 model
    assert result.trainable_params == result.total_params - 156 - 2416
    assert result.non_trainable_params == 156 + 2416
    assert "Non-trainable params: 2,572" in str(result)
    with pytest.raises(TypeError, match="dtype"):
        numbaconv.summary(model, (1, 32, 32), dtype=np.int16)


def _bn_net():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3)))


def test_model_left_as_it_was():
    numbaconv.manual_seed(0)
    model = _bn_net()
    model.train()
    model[4].eval()  # mixed modes come back as they were
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    y = model(x)  # a forward pass whose backward is still to come
    state = {k: v.copy() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    numbaconv.summary(model, (2, 6, 6), print_table=False)
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():  # running statistics and batch count untouched
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    assert _CALL_HOOKS == []
    # what forward kept for backward survives: backward gives what it gives without a summary
    grad_out = np.ones_like(y)
    grad_x = model.backward(grad_out)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    numbaconv.manual_seed(0)
    twin = _bn_net()
    twin.load_state_dict(state)
    twin.train()
    twin[4].eval()
    twin(x)
    np.testing.assert_array_equal(grad_x, twin.backward(grad_out))
    for a, p in zip(grads, twin.parameters()):
        np.testing.assert_array_equal(a, p.grad)


def test_failed_forward_leaves_no_hook_and_restores_modes():
    model = models.lenet5().train()
    with pytest.raises(ValueError, match="4 dimensions") as info:
        numbaconv.summary(model, (1, 1, 32, 32), print_table=False)  # a batch dimension given
    assert "without the batch dimension" in "".join(getattr(info.value, "__notes__", []))
    assert _CALL_HOOKS == []
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError):
        numbaconv.summary(model, (1, 8, 8), print_table=False)  # too small for LeNet's fc
    assert _CALL_HOOKS == []


@pytest.mark.parametrize("shape, error, match", [
    (32, TypeError, "tuple of ints"),
    ("1,32,32", TypeError, "tuple of ints"),
    (None, TypeError, "tuple of ints"),
    ((), ValueError, "must not be empty"),
    ((1, 0, 32), ValueError, "positive"),
    ((1, -32, 32), ValueError, "positive"),
    ((1.0, 32, 32), TypeError, "ints"),
    ((True, 32, 32), TypeError, "ints"),
])
def test_bad_input_shape(shape, error, match):
    with pytest.raises(error, match=match):
        numbaconv.summary(models.lenet5(), shape, print_table=False)
    assert _CALL_HOOKS == []


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="Module"):
        numbaconv.summary(lambda x: x, (1, 32, 32))
