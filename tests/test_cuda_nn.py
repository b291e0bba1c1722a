"""Models on the GPU: Module.to, the optimizers' CUDA kernels, and training that stays there.

Each test runs the same model twice, once on the host and once moved to the GPU (Numba's CUDA
simulator unless NUMBA_ENABLE_CUDASIM=0), from the same weights and data, and compares the
results; the host path is itself tested against PyTorch and finite differences elsewhere.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import nn, optim
from numbaconv._device import is_device_array

pytestmark = pytest.mark.cuda

if not nc.cuda_status()[0]:
    pytest.skip(f"CUDA not available: {nc.cuda_status()[1]}", allow_module_level=True)


def close(got, want, rtol=1e-5):
    got, want = nc.to_host(got), nc.to_host(want)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def twins(build):
    """The same model twice, from one seed: one stays on the host, one moves to the GPU."""
    nc.manual_seed(0)
    host = build()
    nc.manual_seed(0)
    gpu = build().to("cuda")
    return host, gpu


# --------------------------------------------------------------------------- moving


def test_to_moves_floating_parameters_and_buffers_and_back():
    host, gpu = twins(lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)))
    state = gpu.state_dict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            assert isinstance(value, np.ndarray)  # the count stays on the host
        else:
            assert is_device_array(value), key
    assert nn.module.device_of(gpu) == "cuda" and nn.module.device_of(host) == "cpu"
    gpu.to("cpu")
    for key, value in gpu.state_dict().items():
        assert isinstance(value, np.ndarray)
        np.testing.assert_array_equal(value, host.state_dict()[key])


def test_to_changes_dtype_on_the_gpu_and_drops_gradients():
    model = nn.Linear(3, 2).to("cuda")
    model.weight.grad = nc.to_device(np.ones((2, 3), np.float32))
    model.to(np.float64)
    assert is_device_array(model.weight.data) and model.weight.dtype == np.float64
    assert model.weight.grad is None
    model.to("cpu", np.float32)
    assert isinstance(model.weight.data, np.ndarray) and model.weight.dtype == np.float32


def test_layers_built_on_the_gpu_hold_the_host_initialization():
    nc.manual_seed(3)
    host = nn.Conv1d(2, 4, 3)
    nc.manual_seed(3)
    gpu = nn.Conv1d(2, 4, 3, device="cuda")
    assert is_device_array(gpu.weight.data)
    np.testing.assert_array_equal(nc.to_host(gpu.weight.data), host.weight.data)


def test_state_dict_of_a_gpu_model_saves_and_loads(tmp_path):
    host, gpu = twins(lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
    nc.save(gpu, tmp_path / "m.npz")
    loaded = nc.load(tmp_path / "m.npz")
    for key, value in host.state_dict().items():
        np.testing.assert_array_equal(loaded[key], value)
    other = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to("cuda")
    other.load_state_dict(loaded)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(nc.to_host(value), host.state_dict()[key])


def test_gradients_accumulate_and_zero_on_the_gpu():
    p = nn.Parameter(np.zeros(5, np.float32))
    p.data = nc.to_device(p.data)
    p.accumulate(nc.to_device(np.arange(5, dtype=np.float32)))
    p.accumulate(nc.to_device(np.ones(5, np.float32)))
    np.testing.assert_array_equal(nc.to_host(p.grad), np.arange(5) + 1)
    model = nn.Linear(2, 2).to("cuda")
    model.weight.grad = nc.to_device(np.ones((2, 2), np.float32))
    model.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(nc.to_host(model.weight.grad), 0)


def test_mixed_gradient_device_is_an_error():
    p = nn.Parameter(np.zeros(3, np.float32))
    p.data = nc.to_device(p.data)
    p.grad = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="on the GPU has its gradient on the host"):
        optim.SGD([p], lr=0.1).step()


# --------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01),
    lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    lambda ps: optim.Adam(ps, lr=0.01),
    lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
], ids=["sgd", "sgd-momentum", "sgd-nesterov", "adam", "adam-amsgrad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_steps_on_the_gpu_match_the_host(make, dtype):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((3, 7)).astype(dtype)
    host, gpu = nn.Parameter(data), nn.Parameter(data)
    gpu.data = nc.to_device(gpu.data)
    opt_host, opt_gpu = make([host]), make([gpu])
    for _ in range(4):
        grad = rng.standard_normal(data.shape).astype(dtype)
        host.grad, gpu.grad = grad.copy(), nc.to_device(grad)
        opt_host.step()
        opt_gpu.step()
    assert is_device_array(gpu.data)
    close(gpu.data, host.data, 1e-6 if dtype == np.float32 else 1e-12)


# --------------------------------------------------------------------------- whole models


def _small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3 * 3 * 3, 4),
    )


def test_a_training_step_on_the_gpu_matches_the_host():
    host, gpu = twins(_small_cnn)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    y = np.array([1, 3])
    loss_fn_host, loss_fn_gpu = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    opt_host = optim.SGD(host.parameters(), lr=0.1, momentum=0.9)
    opt_gpu = optim.SGD(gpu.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        out_host = host(x)
        out_gpu = gpu(nc.to_device(x))
        assert is_device_array(out_gpu)
        close(out_gpu, out_host, 1e-4)
        close(loss_fn_gpu(out_gpu, nc.to_device(y)), loss_fn_host(out_host, y), 1e-4)
        for model, loss_fn, opt in ((host, loss_fn_host, opt_host), (gpu, loss_fn_gpu, opt_gpu)):
            model.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
    for key, value in host.state_dict().items():
        close(gpu.state_dict()[key], value, 1e-4)


def test_resnet_block_forward_and_backward_on_the_gpu():
    from numbaconv.models.resnet import BasicBlock, conv1x1

    def build():
        return BasicBlock(2, 3, stride=2, downsample=nn.Sequential(conv1x1(2, 3, 2), nn.BatchNorm2d(3)))

    host, gpu = twins(build)
    x = np.random.default_rng(4).standard_normal((2, 2, 5, 5)).astype(np.float32)
    close(gpu(nc.to_device(x)), host(x), 1e-4)
    g = np.random.default_rng(5).standard_normal(host(x).shape).astype(np.float32)
    host(x)
    gpu(nc.to_device(x))
    close(gpu.backward(nc.to_device(g)), host.backward(g), 1e-4)
    close(gpu.conv1.weight.grad, host.conv1.weight.grad, 1e-4)


def test_fit_evaluate_predict_on_the_gpu_match_the_host():
    host, gpu = twins(lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)))
    rng = np.random.default_rng(6)
    X = rng.standard_normal((20, 5)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    histories = [
        nc.fit(m, nn.CrossEntropyLoss(), optim.Adam(m.parameters(), lr=0.01), X, y, epochs=2, batch_size=8,
               validation=(X, y), seed=0, progress=False)
        for m in (host, gpu)
    ]
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(histories[1][name], histories[0][name], rtol=1e-4)
    assert is_device_array(gpu[0].weight.data)  # it stayed there
    pred = nc.predict(gpu, X, batch_size=7)
    assert isinstance(pred, np.ndarray)
    close(pred, nc.predict(host, X), 1e-4)
    ev = nc.evaluate(gpu, nn.CrossEntropyLoss(), X, y)
    np.testing.assert_allclose(ev["loss"], nc.evaluate(host, nn.CrossEntropyLoss(), X, y)["loss"], rtol=1e-4)


# --------------------------------------------------------------------------- without CUDA


def test_asking_for_cuda_without_it_says_why():
    code = (
        "import numpy as np, numbaconv as nc\n"
        "for call in (lambda: nc.nn.Linear(2, 2).to('cuda'), lambda: nc.to_device(np.ones(2)),\n"
        "             lambda: nc.nn.Conv2d(1, 1, 3, device='cuda')):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as e:\n"
        "        print('OK', e)\n"
        "print(nc.cuda_status())\n"
    )
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len([l for l in lines if l.startswith("OK") and "CUDA is not available" in l]) == 3, run.stdout
    assert lines[-1].startswith("(False, ")
