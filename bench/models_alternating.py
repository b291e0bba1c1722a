"""Whole models next to PyTorch with the calls alternating: a LeNet-5 training epoch and
ResNet-18 inference (layer API, compiled graph, PyTorch).

The pytest-benchmark suite (``test_models.py``) times each implementation in a block of rounds
of its own; on a shared machine whose load drifts over seconds, two blocks a minute apart can
differ by more than the two libraries do. Here the implementations take turns:

- LeNet-5: each trains one epoch of 60,000 random 32x32 images at batch 64 (SGD with
  momentum, as in ``test_models.py``), in ten alternating tenths. The epoch time is the sum of
  its tenths; the ratio is the median of the tenths' ratios.
- ResNet-18: every round runs each implementation once, after a pause while NumPy's BLAS
  threads may still spin from the last GEMM (``numbaconv.benchmark.runner.blas_wait_s``) and one
  untimed call (so each is timed warm and alone); medians, and the median of the rounds'
  ratios. Without the pause, PyTorch's call right after numbaconv's GEMMs shared the cores with
  OpenBLAS's spinning threads (2^28 cycles with PyTorch imported first).

    python bench/models_alternating.py                         # PyTorch imported first
    python bench/models_alternating.py --import-order numbaconv

PyTorch first is the suite's conservative default (see bench/README.md, "Import order"):
numbaconv then leaves NumPy's BLAS threads spinning, and runs on TBB's threads where the tbb
extra is installed, else on Numba's workqueue layer. With numbaconv first it quiets NumPy's
BLAS threads, and without TBB runs its OpenMP layer, whose threads PyTorch's then share (a
short spin, then sleep).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCH_IMAGES, BATCH, PIECES = 60_000, 64, 10


def _lenet(numbaconv, torch, np):
    from torch_ref import sequential_twin

    rng = np.random.default_rng(0)
    X = rng.standard_normal((EPOCH_IMAGES, 1, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, EPOCH_IMAGES)
    numbaconv.manual_seed(0)
    model = numbaconv.models.lenet5()
    twin = sequential_twin(model)
    loss_fn, opt = numbaconv.nn.CrossEntropyLoss(), numbaconv.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    t_loss, t_opt = torch.nn.CrossEntropyLoss(), torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)

    def ours(a, b):
        numbaconv.fit(model, loss_fn, opt, X[a:b], y[a:b], batch_size=BATCH, shuffle=False, progress=False)

    def theirs(a, b):
        twin.train()
        for start in range(a, b, BATCH):
            loss = t_loss(twin(Xt[start:min(b, start + BATCH)]), yt[start:min(b, start + BATCH)])
            t_opt.zero_grad()
            loss.backward()
            t_opt.step()

    ours(0, 10 * BATCH)  # compiles
    theirs(0, 10 * BATCH)
    piece = EPOCH_IMAGES // PIECES
    times = {"numbaconv": [], "torch": []}
    for i in range(PIECES):
        for name, train in (("numbaconv", ours), ("torch", theirs)):
            start = time.perf_counter()
            train(i * piece, (i + 1) * piece)
            times[name].append(time.perf_counter() - start)
    ratio = statistics.median(o / t for o, t in zip(times["numbaconv"], times["torch"]))
    print("| model | numbaconv | torch | numbaconv / torch (time, median of turns) |")
    print("|---|--:|--:|--:|")
    print(f"| LeNet-5 training epoch | {sum(times['numbaconv']):.2f} s | {sum(times['torch']):.2f} s | {ratio:.2f} |")


def _resnet(numbaconv, torch, np, rounds):
    from torch_ref import resnet18

    from numbaconv.benchmark.runner import FULL, blas_wait_s

    numbaconv.manual_seed(0)
    model = numbaconv.models.resnet18().eval()
    compiled = numbaconv.compile(model)
    twin, _ = resnet18()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    twin.eval()
    print()
    print("| ResNet-18 batch | nn ms | compiled ms | torch ms | compiled / torch | nn / torch |")
    print("|--:|--:|--:|--:|--:|--:|")
    for batch, n in ((1, rounds), (8, max(3, rounds // 3))):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        xt = torch.from_numpy(x)

        def theirs():
            with torch.inference_mode():
                return twin(xt)

        calls = {"nn": lambda: model(x), "compiled": lambda: compiled(x), "torch": theirs}
        reference = theirs().numpy()
        for call in calls.values():  # no figure from a wrong answer
            np.testing.assert_allclose(np.asarray(call()), reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
        times = {name: [] for name in calls}
        for _ in range(n):
            for name, call in calls.items():
                time.sleep(blas_wait_s(FULL))
                call()
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        ratio = {k: statistics.median(c / t for c, t in zip(times[k], times["torch"])) for k in ("compiled", "nn")}
        ms = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        print(f"| {batch} | {ms['nn']:.1f} | {ms['compiled']:.1f} | {ms['torch']:.1f} | {ratio['compiled']:.2f} "
              f"| {ratio['nn']:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import-order", choices=("torch", "numbaconv"), default="torch")
    parser.add_argument("--rounds", type=int, default=12, help="ResNet-18 rounds at batch 1 (a third at batch 8)")
    parser.add_argument("--models", default="lenet,resnet", help="comma-separated: lenet, resnet")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    if args.import_order == "numbaconv":
        import numbaconv
        import torch
    else:
        import torch
        import numbaconv
    import numba
    import numpy as np

    from numbaconv import _threads

    torch.set_num_threads(numba.get_num_threads())  # as many threads each
    print(f"import order: {args.import_order} first; numbaconv: {numba.threading_layer()} ({_threads.reason}); BLAS: {_threads.blas_reason}")
    print()
    models = args.models.split(",")
    if "lenet" in models:
        _lenet(numbaconv, torch, np)
    if "resnet" in models:
        _resnet(numbaconv, torch, np, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
