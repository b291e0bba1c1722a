"""Turn a pytest-benchmark JSON file of the bench/ suite into Markdown tables.

    python bench/report.py results.json > bench/results/<name>.md
    python bench/report.py results.json -o bench/results/<name>.md

Times are medians. The convolution table's last two columns are numbaconv's time divided by
PyTorch's, for the faster of direct and im2col and for "auto": below 1 numbaconv is faster (the
issue's targets are written this way). The other tables give speed ratios, numbaconv's speed /
PyTorch's, above 1 when numbaconv is faster.
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402
from shapes import DIRECTIONS, SHAPES, flops  # noqa: E402

IMPLEMENTATIONS = ("direct", "im2col", "auto", "torch")


def _versions_here():
    versions = {}
    for module in ("numpy", "numba", "torch"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return versions


def machine_header(data):
    """Machine and versions: as recorded with the run, else read from the machine running this."""
    machine = data.get("machine_info", {})
    facts = machine.get("numbaconv")
    if facts is None:
        facts = {"cpu_model": cpu_model(), "cores": os.cpu_count(), **_versions_here()}
        source = " (read when the report was made: the JSON did not record it)"
    else:
        source = ""
    cpu = facts.get("cpu_model", "unknown")
    if facts.get("cpu_vector"):
        cpu += f", {facts['cpu_vector']}"
    lines = [
        f"- Machine{source}: {cpu}, {facts.get('cores', '?')} logical cores",
        f"- Python {machine.get('python_version', platform.python_version())}, "
        f"NumPy {facts.get('numpy')}, Numba {facts.get('numba')}, "
        f"PyTorch {facts.get('torch') or 'not installed'}",
    ]
    if "numba_threads" in facts:
        lines.append(
            f"- Threads: Numba {facts['numba_threads']} "
            f"({facts.get('threading_layer') or 'layer unknown'}), "
            f"PyTorch {facts.get('torch_threads') or '-'}"
        )
    commit = data.get("commit_info", {})
    if commit.get("id"):
        dirty = " with uncommitted changes" if commit.get("dirty") else ""
        lines.append(f"- Commit {commit['id'][:10]}{dirty}, run {data.get('datetime', '')[:19]}")
    return lines


def collect(data, memory_bound=False):
    """{(case, direction): {impl: (median seconds, extra_info)}} from benchmarks that carry our
    extra_info: the convolutions (FLOP-bound), or with ``memory_bound`` the cases that record the
    bytes they move (pooling, element-wise ops, normalization)."""
    table = {}
    for bench in data.get("benchmarks", []):
        extra = bench.get("extra_info", {})
        case = extra.get("shape", extra.get("op"))
        if case is None or not {"direction", "impl"} <= extra.keys():
            continue
        if ("bytes" in extra) != memory_bound:
            continue
        table.setdefault((case, extra["direction"]), {})[extra["impl"]] = (bench["stats"]["median"], extra)
    return table


def _ms(seconds):
    return f"{seconds * 1e3:.2f}" if seconds else "-"


def _gflops(n, seconds):
    return f"{n / seconds / 1e9:.1f}" if seconds else "-"


def markdown(data):
    table = collect(data)
    lines = ["# numbaconv on CPU next to PyTorch, float32", ""]
    lines += machine_header(data)
    if table:
        lines += ["", "## Convolutions"]
    lines += [
        "",
        "Median times; backward is grad input + grad weight. "
        "Last columns: numbaconv's time / PyTorch's, for the faster of direct and im2col and for auto "
        "(below 1: numbaconv faster).",
        "",
        "| shape | direction | GFLOP | direct ms | im2col ms | auto ms | torch ms "
        "| direct GFLOP/s | im2col GFLOP/s | auto GFLOP/s | torch GFLOP/s | best / torch time | auto / torch time |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ] if table else []
    order = [(name, d) for name in SHAPES for d in DIRECTIONS]
    order += sorted(key for key in table if key not in order)
    for key in order:
        if key not in table:
            continue
        name, direction = key
        times = {impl: seconds for impl, (seconds, _) in table[key].items()}
        n = flops(SHAPES[name], direction) if name in SHAPES else 0
        ours = [times[impl] for impl in ("direct", "im2col") if times.get(impl)]
        ratio = f"{min(ours) / times['torch']:.2f}" if ours and times.get("torch") else "-"
        auto = f"{times['auto'] / times['torch']:.2f}" if times.get("auto") and times.get("torch") else "-"
        cells = [name, direction, f"{n / 1e9:.3f}" if n else "-"]
        cells += [_ms(times.get(impl)) for impl in IMPLEMENTATIONS]
        cells += [_gflops(n, times.get(impl)) if n else "-" for impl in IMPLEMENTATIONS]
        cells += [ratio, auto]
        lines.append("| " + " | ".join(cells) + " |")
    memory = collect(data, memory_bound=True)
    if memory:
        lines += [
            "",
            "## Memory-bound ops",
            "",
            "GB/s counts the bytes each call must read and write once. "
            "Last column: numbaconv's speed / PyTorch's.",
            "",
            "| case | direction | numbaconv ms | torch ms | numbaconv GB/s | torch GB/s | numbaconv / torch |",
            "|---|---|--:|--:|--:|--:|--:|",
        ]
        for (case, direction), impls in memory.items():
            ours, theirs = impls.get("numbaconv"), impls.get("torch")
            gbps = [f"{impl[1]['bytes'] / impl[0] / 1e9:.1f}" if impl else "-" for impl in (ours, theirs)]
            ratio = f"{theirs[0] / ours[0]:.2f}" if ours and theirs else "-"
            lines.append(f"| {case} | {direction} | {_ms(ours and ours[0])} | {_ms(theirs and theirs[0])} | "
                         f"{gbps[0]} | {gbps[1]} | {ratio} |")
    models, inference = {}, {}
    for bench in data.get("benchmarks", []):
        extra = bench.get("extra_info", {})
        if "median_ms" in extra or "peak_mib" in extra:  # test_inference.py: figures of its own
            inference.setdefault(extra["model"], {}).setdefault(extra["impl"], {}).update(extra)
        elif "model" in extra and "impl" in extra:
            models.setdefault((extra["model"], extra.get("direction", "")), {})[extra["impl"]] = bench["stats"]["median"]
    if inference:
        impls = ("numbaconv", "onnxruntime", "torch")
        lines += [
            "",
            "## Inference next to ONNX Runtime and PyTorch",
            "",
            "Latency: median (p95) of single calls, ms. Time ratios: numbaconv's time / the other's "
            "(below 1: numbaconv faster). Peak: the resident-set high-water mark over loading and four "
            "calls, above what the imports took, MiB, in a fresh process per case.",
            "",
            "| model | " + " | ".join(f"{i} ms" for i in impls) + " | / onnxruntime | / torch | "
            + " | ".join(f"{i} peak MiB" for i in impls) + " |",
            "|---|" + "--:|" * (2 * len(impls) + 2),
        ]
        for model, by_impl in inference.items():
            def get(impl, key):
                return by_impl.get(impl, {}).get(key)
            cells = [f"{get(i, 'median_ms'):.2f} ({get(i, 'p95_ms'):.2f})" if get(i, "median_ms") else "-"
                     for i in impls]
            ours = get("numbaconv", "median_ms")
            cells += [f"{ours / get(i, 'median_ms'):.2f}" if ours and get(i, "median_ms") else "-"
                      for i in impls[1:]]
            cells += [f"{get(i, 'peak_mib'):.1f}" if get(i, "peak_mib") is not None else "-" for i in impls]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if models:
        lines += [
            "",
            "## Whole models",
            "",
            "lenet5-epoch: one training epoch, 60,000 images of 32x32 at batch 64 (numbaconv through "
            "`numbaconv.fit`); resnet18-bN: eval-mode inference on N images of 224x224. "
            "Last column: numbaconv's speed / PyTorch's.",
            "",
            "| model | what | numbaconv ms | torch ms | numbaconv / torch |",
            "|---|---|--:|--:|--:|",
        ]
        for (model, direction), times in models.items():
            ours, theirs = times.get("numbaconv"), times.get("torch")
            ratio = f"{theirs / ours:.2f}" if ours and theirs else "-"
            lines.append(f"| {model} | {direction} | {_ms(ours)} | {_ms(theirs)} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("json", help="file written by pytest --benchmark-json")
    parser.add_argument("-o", "--output", help="write the Markdown here instead of standard output")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        text = markdown(json.load(f))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
