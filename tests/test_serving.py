"""One inference model called from many threads at once: every result right, and no abort.

Numba's workqueue threading layer aborts the process when two threads enter parallel kernels at
once, and numbaconv picks its layer when it is imported (``numbaconv/_threads.py``): OpenMP when
numbaconv loads it, workqueue with serialized kernels when another library (torch) loaded OpenMP
first; TBB before either when it is installed. Each case runs in a fresh interpreter, so the layer is the one that import order gives,
and an abort fails the test instead of taking pytest down.
"""

import os
import subprocess
import sys

import pytest

from conftest import NO_TBB, has_gomp, skip_without_tbb

SCRIPT = r"""
import sys, threading
if sys.argv[2] == "no-tbb":
    NO_TBB
if sys.argv[1] == "torch-first":
    import torch  # loads OpenMP before numbaconv does
import numba
import numpy as np
import numbaconv as nc
from numbaconv import _threads, nn

nc.manual_seed(0)
rng = np.random.default_rng(0)
model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),          # direct kernel, parallel
    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),  # im2col and BLAS
    nn.MaxPool2d(2), nn.Conv2d(32, 8, 1), nn.Sigmoid(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10), nn.Softmax(1))
for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
        m.running_mean[:] = rng.uniform(-1, 1, m.num_features)
        m.running_var[:] = rng.uniform(0.5, 2, m.num_features)
model.eval()
served = nc.compile(model, (3, 32, 32))
inputs = [rng.standard_normal((1 + i % 4, 3, 32, 32)).astype(np.float32) for i in range(16)]
expected = [model(x) for x in inputs]  # the layers' own forward, one call at a time

THREADS, CALLS = 8, 50
failures, done = [], [0] * THREADS
start = threading.Barrier(THREADS)

def serve(t):
    start.wait()
    for i in range(CALLS):
        k = (7 * t + i) % len(inputs)
        y = served(inputs[k])
        if y.shape != expected[k].shape or not np.allclose(y, expected[k], rtol=1e-4, atol=1e-6):
            failures.append((t, i, k, float(np.max(np.abs(y - expected[k])))))
        done[t] += 1

threads = [threading.Thread(target=serve, args=(t,)) for t in range(THREADS)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print("layer", numba.threading_layer(), "serialized", _threads.serialize)
print("calls", sum(done), "failures", len(failures), failures[:3])
"""


def _serve(mode, tbb):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", SCRIPT.replace("NO_TBB", NO_TBB), mode, tbb], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"return code {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    return lines


@pytest.mark.parametrize("tbb", ["tbb", "no-tbb"])
@pytest.mark.parametrize("mode", ["numbaconv-first", "torch-first"])
def test_eight_threads_fifty_calls_each(mode, tbb):
    if mode == "torch-first":
        pytest.importorskip("torch")
    if tbb == "tbb":
        skip_without_tbb()
    lines = _serve(mode, tbb)
    assert lines["calls"].startswith("400 failures 0 "), lines["calls"]
    layer, _, serialized = lines["layer"].partition(" serialized ")
    # a layer that is not thread-safe is only ever entered one kernel at a time
    assert layer in ("omp", "tbb") or serialized == "True", lines["layer"]
    # TBB whatever came first; else OpenMP where numbaconv loads it, the workqueue where not
    expected = "tbb" if tbb == "tbb" else "omp" if mode == "numbaconv-first" and has_gomp() else "workqueue"
    assert layer == expected, lines["layer"]


FORK = r"""
import multiprocessing as mp
import numba, numpy as np, numbaconv as nc
x = np.random.default_rng(0).standard_normal((8, 16, 64, 64)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)
ref = nc.conv2d(x, w, padding=1)  # the parent runs parallel kernels before it forks

def child(q):
    q.put(float(np.abs(nc.conv2d(x, w, padding=1) - ref).max()))

if __name__ == "__main__":
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    children = [ctx.Process(target=child, args=(q,)) for _ in range(2)]
    for c in children:
        c.start()
    errors = [q.get(timeout=120) for _ in children]
    for c in children:
        c.join(60)
    print(numba.threading_layer(), errors, [c.exitcode for c in children])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_forked_children_run_kernels_on_tbb(tmp_path):
    """TBB's layer survives fork: children of a process that ran parallel kernels run them too
    (GNU OpenMP's threads do not survive a fork, which is one reason TBB comes first)."""
    skip_without_tbb()
    script = tmp_path / "fork.py"
    script.write_text(FORK)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["tbb", "[0.0,", "0.0]", "[0,", "0]"], done.stdout
