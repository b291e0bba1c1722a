"""Whole models next to PyTorch, float32: a LeNet-5 training epoch and ResNet-18 inference.

- ``lenet5-epoch``: one epoch of 60,000 random 32x32 images (MNIST's size) at batch 64, SGD
  with momentum: numbaconv through ``numbaconv.fit`` (what a user runs, its bookkeeping
  included), PyTorch through the usual loop (forward, loss, zero_grad, backward, step).
- ``resnet18-b1`` / ``resnet18-b8``: eval-mode inference on 224x224 images, batch 1 and 8.

Both sides start from the same weights (numbaconv's, copied into the torch twin), and before
any timing the forward outputs are checked to agree: no figure comes from a wrong answer.
"""

import functools
import sys

import numpy as np
import pytest
from conftest import ROOT, run

import numbaconv
from numbaconv import models, nn, optim

sys.path.insert(0, str(ROOT / "tests"))

EPOCH_IMAGES, BATCH = 60_000, 64
RESNET_BATCHES = (1, 8)


@functools.lru_cache(maxsize=None)
def _lenet_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((EPOCH_IMAGES, 1, 32, 32), dtype=np.float32), rng.integers(0, 10, EPOCH_IMAGES)


def _lenet_pair(torch):
    from torch_ref import sequential_twin

    numbaconv.manual_seed(0)
    model = models.lenet5()
    twin = sequential_twin(model)
    x = _lenet_data()[0][:BATCH]
    with torch.no_grad():
        np.testing.assert_allclose(model(x), twin(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    return model, twin


def _time_epoch(benchmark, fn, images):
    """An epoch takes seconds: a short warm-up (compiles), then three timed epochs."""
    fn(images // 100)
    benchmark.extra_info.update(model="lenet5-epoch", direction="train", samples=images)
    return benchmark.pedantic(fn, args=(images,), rounds=3, iterations=1)


@pytest.mark.parametrize("impl", ["numbaconv", "torch"])
def test_lenet5_training_epoch(benchmark, torch, impl):
    X, y = _lenet_data()
    model, twin = _lenet_pair(torch)
    benchmark.extra_info["impl"] = impl
    if impl == "numbaconv":
        loss_fn, opt = nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def epoch(n):
            numbaconv.fit(model, loss_fn, opt, X[:n], y[:n], batch_size=BATCH, shuffle=False, progress=False)
    else:
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        loss_fn, opt = torch.nn.CrossEntropyLoss(), torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)

        def epoch(n):
            twin.train()
            for start in range(0, n, BATCH):
                loss = loss_fn(twin(Xt[start:start + BATCH]), yt[start:start + BATCH])
                opt.zero_grad()
                loss.backward()
                opt.step()
    _time_epoch(benchmark, epoch, len(X))


@pytest.fixture(scope="module")
def resnet_pair(torch):
    from torch_ref import resnet18

    numbaconv.manual_seed(0)
    model = models.resnet18().eval()
    twin, _ = resnet18()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    twin.eval()
    return model, twin


@pytest.mark.parametrize("impl", ["numbaconv", "torch"])
@pytest.mark.parametrize("batch", RESNET_BATCHES)
def test_resnet18_inference(benchmark, torch, resnet_pair, batch, impl):
    model, twin = resnet_pair
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    xt = torch.from_numpy(x)

    def ours():
        return model(x)

    def theirs():
        with torch.inference_mode():
            return twin(xt)

    reference = theirs().numpy()
    np.testing.assert_allclose(ours(), reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
    benchmark.extra_info.update(model=f"resnet18-b{batch}", direction="inference", impl=impl, samples=batch)
    run(benchmark, ours if impl == "numbaconv" else theirs, 2 * 1_814_073_344 * batch)
