"""ResNet-18 inference, numbaconv (layer API and compiled graph) and PyTorch, calls alternating.

The pytest-benchmark suite times each implementation in a block of rounds of its own; on a
shared machine whose load drifts over seconds, two blocks a minute apart can differ by more than
the two libraries do. Here every round runs each implementation once (after one untimed call,
so each is timed warm), and the ratio is the median of the per-round ratios.

    python bench/resnet_alternating.py                         # PyTorch imported first
    python bench/resnet_alternating.py --import-order numbaconv

PyTorch first is the suite's conservative default (see bench/README.md, "Import order"):
numbaconv then runs on Numba's workqueue layer and leaves NumPy's BLAS threads spinning. With
numbaconv first it runs its OpenMP layer and quiets them, and PyTorch's OpenMP threads wait
passively as well.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import-order", choices=("torch", "numbaconv"), default="torch")
    parser.add_argument("--rounds", type=int, default=12, help="rounds at batch 1 (a third of them at batch 8)")
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
    from torch_ref import resnet18

    from numbaconv import _threads

    torch.set_num_threads(numba.get_num_threads())  # as many threads each
    numbaconv.manual_seed(0)
    model = numbaconv.models.resnet18().eval()
    compiled = numbaconv.compile(model)
    twin, _ = resnet18()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    twin.eval()
    print(f"import order: {args.import_order} first; numbaconv {_threads.reason}; BLAS: {_threads.blas_reason}")
    print("| batch | nn ms | compiled ms | torch ms | compiled / torch (median of rounds) |")
    print("|--:|--:|--:|--:|--:|")
    for batch, rounds in ((1, args.rounds), (8, max(3, args.rounds // 3))):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        xt = torch.from_numpy(x)

        def theirs():
            with torch.inference_mode():
                return twin(xt)

        calls = {"nn": lambda: model(x), "compiled": lambda: compiled(x), "torch": theirs}
        times = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                call()
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        ratio = statistics.median(c / t for c, t in zip(times["compiled"], times["torch"]))
        ms = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        print(f"| {batch} | {ms['nn']:.1f} | {ms['compiled']:.1f} | {ms['torch']:.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
