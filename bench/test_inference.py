"""Inference next to ONNX Runtime and PyTorch, float32: latency (median and p95), throughput,
peak memory.

Each model is built in PyTorch with random weights and batch-norm statistics (the builders of
tests/onnx_models.py, the same seed everywhere), exported once to ONNX, and run three ways in the
same process: ``numbaconv.onnx.load`` of the bytes, an ONNX Runtime session on the same bytes
(as many intra-op threads as Numba has), and the PyTorch module under ``inference_mode`` (as
many threads). Before any timing the outputs are checked to agree with ONNX Runtime's: no figure
comes from a wrong answer.

- ``test_latency``: median and p95 of single calls, and samples per second at the median,
  in ``extra_info`` (``median_ms``, ``p95_ms``, ``samples_per_s``).
- ``test_peak_memory``: in a fresh interpreter per case (numpy, numba, onnxruntime, torch and
  numbaconv all imported first), the resident-set high-water mark above what the imports took,
  over loading the model and four calls: weights, working memory and whatever the runtime
  keeps (ONNX Runtime's arena, numbaconv's compiled kernels and scratch): ``peak_mib``; what is
  resident after loading and one call: ``loaded_mib``; and what one more call adds above what is
  resident then (the high-water mark reset through /proc/self/clear_refs): ``call_mib``.

    pytest bench/test_inference.py --benchmark-only                # the figures
    pytest bench/test_inference.py --benchmark-disable             # each case once: a smoke run
"""

import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests"))

ort = pytest.importorskip("onnxruntime")

#: name: (builder in tests/onnx_models.py, one sample's shape, batch sizes)
CASES = {
    "resnet18": ("torch_resnet18", (3, 224, 224), (1, 8)),
    "lenet5": ("lenet", (1, 32, 32), (1, 64)),
    "vgg_style": ("vgg_style", (3, 32, 32), (1, 64)),
    "mobilenet_block": ("mobilenet_block", (3, 112, 112), (1, 8)),
    "conv1d": ("conv1d_net", (2, 64), (1, 64)),
    "conv3d": ("conv3d_net", (1, 8, 12, 8), (1, 16)),
}
PARAMS = [(name, batch) for name, (_, _, batches) in CASES.items() for batch in batches]
IMPLS = ("numbaconv", "onnxruntime", "torch")
ROUND_BUDGET_S, MIN_ROUNDS, MAX_ROUNDS = 2.0, 5, 200


def _build(name):
    """The PyTorch module of case ``name``, eval mode, weights from seed 0."""
    import torch

    import onnx_models

    torch.manual_seed(0)
    return onnx_models.randomize(getattr(onnx_models, CASES[name][0])()).eval()


@functools.lru_cache(maxsize=None)
def _exported(name):
    import onnx_models

    module = _build(name)
    return onnx_models.export(module, np.zeros((1, *CASES[name][1]), np.float32)), module


def _runner(impl, name, torch):
    data, module = _exported(name)
    if impl == "numbaconv":
        import numbaconv.onnx

        model = numbaconv.onnx.load(data)
        return lambda x: model(x)
    if impl == "onnxruntime":
        options = ort.SessionOptions()
        options.intra_op_num_threads = numba.get_num_threads()
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"x": x})[0]

    def run_torch(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    return run_torch


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name, batch", PARAMS, ids=[f"{n}-b{b}" for n, b in PARAMS])
def test_latency(benchmark, torch, name, batch, impl):
    x = np.random.default_rng(batch).standard_normal((batch, *CASES[name][1])).astype(np.float32)
    fn = _runner(impl, name, torch)
    reference = _runner("onnxruntime", name, torch)(x)
    got = fn(x)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    benchmark.extra_info.update(model=f"{name}-b{batch}", direction="inference", impl=impl, samples=batch)
    if benchmark.disabled:
        benchmark.pedantic(fn, args=(x,), rounds=1, iterations=1)
        return
    start = time.perf_counter()
    fn(x)
    probe = time.perf_counter() - start
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, ROUND_BUDGET_S / max(probe, 1e-9))))
    benchmark.pedantic(fn, args=(x,), rounds=rounds, iterations=1, warmup_rounds=1)
    times = np.array(benchmark.stats.stats.data)
    median = float(np.median(times))
    benchmark.extra_info.update(median_ms=1e3 * median, p95_ms=1e3 * float(np.percentile(times, 95)),
                                samples_per_s=batch / median)


_MEMORY_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/bench")
import numba, numpy as np, onnxruntime as ort, torch
import numbaconv, numbaconv.onnx

def rss(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) * 1024

name, batch, impl, path = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
import test_inference as bench
torch.set_num_threads(numba.get_num_threads())
x = np.random.default_rng(batch).standard_normal((batch, *bench.CASES[name][1])).astype(np.float32)
base = rss("VmRSS")
if impl == "numbaconv":
    model = numbaconv.onnx.load(path)
    fn = lambda: model(x)
elif impl == "onnxruntime":
    options = ort.SessionOptions()
    options.intra_op_num_threads = numba.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    fn = lambda: session.run(None, {"x": x})
else:
    module = bench._build(name)
    def fn():
        with torch.inference_mode():
            return module(torch.from_numpy(x))
fn()
loaded = rss("VmRSS")
for _ in range(3):
    fn()
peak = rss("VmHWM")
try:  # reset the high-water mark to what is resident now: what one more call adds
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    resident = rss("VmRSS")
    fn()
    call = rss("VmHWM") - resident
except OSError:
    call = None
print(json.dumps({"peak": peak - base, "loaded": loaded - base, "call": call}))
"""


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name, batch", PARAMS, ids=[f"{n}-b{b}" for n, b in PARAMS])
def test_peak_memory(benchmark, torch, name, batch, impl):
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc (Linux)")
    data, _ = _exported(name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        path.write_bytes(data)
        done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(ROOT), name, str(batch), impl, str(path)],
                              capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    benchmark.extra_info.update(model=f"{name}-b{batch}", direction="memory", impl=impl, samples=batch,
                                **{f"{k}_mib": v / 2**20 for k, v in figures.items() if v is not None})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the figure is peak_mib, not a time
