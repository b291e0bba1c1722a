"""The rows of :func:`numbaconv.benchmark.run` as a Markdown table, a summary and a PNG plot."""

import math

from .runner import FULL, LOW_CLOCK_HZ, SETTLE_S

#: The issue's targets for numbaconv's time / PyTorch's (float32, CPU), read by :func:`targets`.
TARGETS = {
    "forward geometric mean": 1.0,
    "forward worst shape": 1.5,
    "backward geometric mean": 1.25,
    "depthwise, every shape": 1.0,
    "conv1d, every shape": 1.0,
    "LeNet at batch 1, every shape": 1.0,
    "peak memory / bound, worst": 2.0,
}

#: The algorithms "best" chooses among, per case: Winograd's tiles have rows only where they run.
FIXED = ("direct", "im2col", "winograd")


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _mib(nbytes):
    return None if nbytes is None else nbytes / 2**20


def header(machine, peak_gflops=None, device="cpu", quick=False, run=True):
    """A few lines that say where and how the figures were measured (without ``run``: only where)."""
    m = machine
    cpu = m.get("cpu_model", "unknown") + (f", {m['cpu_vector']}" if m.get("cpu_vector") else "")
    load = m.get("load_average")
    busy = load is not None and m.get("cores") and load > 0.5 * m["cores"]
    lines = [
        f"- Machine: {cpu}, {m.get('cores', '?')} logical cores"
        + (f", load average {load:.2f} when the run started" if load is not None else ""),
        f"- numbaconv {m.get('numbaconv')} ({m.get('source') or 'not a git checkout'}), Python {m.get('python')}, NumPy {m.get('numpy')} ({m.get('blas')}), Numba {m.get('numba')}, "
        f"PyTorch {m.get('torch') or 'not installed'}",
        f"- Threads: Numba {m.get('numba_threads')} ({m.get('threading_layer') or 'layer not started'}: "
        f"{m.get('threading_reason') or '-'}), PyTorch {m.get('torch_threads') or '-'}"
        + (f"; NumPy's BLAS: {m['blas_threads']}" if m.get("blas_threads") else ""),
    ]
    if run:
        wait = FULL.settle_blas * (m.get("blas_spin_cycles") or 0) / LOW_CLOCK_HZ
        pause = f"a {wait * 1e3:.0f} ms pause while NumPy's BLAS threads spin, then " if wait else ""
        lines.append(f"- Device {device}; GEMM peak {_fmt(peak_gflops, '.1f')} GFLOP/s (float32 matmul, measured at "
                     "the start); " + ("quick run: 3 timed rounds per case" if quick
                                       else "median of 3-50 timed calls per case (about 1 s each, in bursts after "
                                            f"{pause}{SETTLE_S * 1e3:.0f} ms untimed)"))
    if busy:
        lines.append(f"- NOTE: the machine was busy (load {load:.1f} on {m['cores']} cores): other processes "
                     "took time slices, threads that wait for each other waited for them too, and these figures "
                     "are noisy; rerun on a quiet machine before quoting them")
    return lines


def table(rows):
    """One Markdown table: a line per shape, direction and algorithm."""
    lines = [
        "| shape | layer | direction | algorithm | ms | min ms | GFLOP/s | % peak | torch ms | torch min ms "
        "| time / torch | peak MiB | bound MiB |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        algorithm = r["algorithm"] if r["chose"] == r["algorithm"] else f"{r['algorithm']} ({r['chose']})"
        ms = "wrong result" if r["error"] else _fmt(r["ms"], ".3f")
        lines.append(
            f"| {r['shape']} | {r['layer']} | {r['direction']} | {algorithm} | {ms} | {_fmt(r['min_ms'], '.3f')} "
            f"| {_fmt(r['gflops'], '.1f')} | {_fmt(r['peak_pct'], '.0f')} | {_fmt(r['torch_ms'], '.3f')} "
            f"| {_fmt(r['torch_min_ms'], '.3f')} | {_fmt(r['ratio'], '.2f')} "
            f"| {_fmt(_mib(r['peak_bytes']), '.2f')} | {_fmt(_mib(r['bound_bytes']), '.2f')} |"
        )
    return lines


def _geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _ratios(rows, algorithm, field="ratio"):
    """{(shape, direction): ratio} of one algorithm; "best" takes the fastest fixed algorithm."""
    found = {}
    for r in rows:
        if r[field] is None:
            continue
        key = (r["shape"], r["direction"])
        if r["algorithm"] == algorithm:
            found[key] = r[field]
        elif algorithm == "best" and r["algorithm"] in FIXED:
            found[key] = min(found.get(key, math.inf), r[field])
    return found


def summary(rows):
    """Per algorithm (and "best": the fastest of the fixed algorithms per case, when the run timed
    at least two of them): the geometric mean and the worst of time / PyTorch's per direction and
    per suite, and the worst memory ratio."""
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    if sum(a in algorithms for a in FIXED) >= 2:
        algorithms.append("best")
    out = {}
    for a in algorithms:
        ratios, fastest = _ratios(rows, a), _ratios(rows, a, "min_ratio")
        entry = {"directions": {}, "suites": {}}
        for direction in dict.fromkeys(d for _, d in ratios):
            mine = {s: v for (s, d), v in ratios.items() if d == direction}
            worst = max(mine, key=mine.get)
            entry["directions"][direction] = {
                "geomean": _geomean(mine.values()), "worst": mine[worst], "worst_shape": worst, "cases": len(mine),
                "geomean_fastest_rounds": _geomean(v for (s, d), v in fastest.items() if d == direction)}
            for suite in dict.fromkeys(s.split("-")[0] for s in mine):
                of_suite = {s: v for s, v in mine.items() if s.split("-")[0] == suite}
                entry["suites"].setdefault(suite, {})[direction] = {
                    "geomean": _geomean(of_suite.values()), "worst": max(of_suite.values())}
        memory = [(r["memory_ratio"], r["shape"], r["direction"]) for r in rows
                  if r["algorithm"] == a and r["memory_ratio"] is not None]
        if memory:
            ratio, shape, direction = max(memory)
            entry["memory"] = {"worst": ratio, "shape": shape, "direction": direction}
        out[a] = entry
    out["wrong"] = [f"{r['shape']} {r['direction']} {r['algorithm']}: {r['error']}" for r in rows if r["error"]]
    return out


def targets(rows, algorithm="auto"):
    """[(target, measured, limit, met)] for the issue's targets, from ``algorithm``'s rows;
    measured is None where the run did not cover a target (or had no PyTorch to compare)."""
    ratios = _ratios(rows, algorithm)

    def worst(select):
        values = [v for (s, d), v in ratios.items() if select(s)]
        return max(values) if values else None

    def direction(d):
        return [v for (_, dd), v in ratios.items() if dd == d]

    memory = [r["memory_ratio"] for r in rows if r["algorithm"] == algorithm and r["memory_ratio"] is not None]
    measured = {
        "forward geometric mean": _geomean(direction("forward")),
        "forward worst shape": max(direction("forward"), default=None),
        "backward geometric mean": _geomean(direction("backward")),
        "depthwise, every shape": worst(lambda s: s.startswith("depthwise-")),
        "conv1d, every shape": worst(lambda s: s.startswith("conv1d-")),
        "LeNet at batch 1, every shape": worst(lambda s: s.startswith("lenet-") and s.endswith("-b1")),
        "peak memory / bound, worst": max(memory, default=None),
    }
    return [(name, measured[name], limit, None if measured[name] is None else measured[name] <= limit)
            for name, limit in TARGETS.items()]


def summary_lines(rows):
    """The summary in words: per algorithm and direction the geometric mean and the worst shape
    of time / PyTorch's, then the issue's targets for "auto"."""
    s = summary(rows)
    lines = []
    for a, entry in s.items():
        if a == "wrong":
            continue
        for d, v in entry["directions"].items():
            lines.append(f"- {a} {d}: time / PyTorch's, geometric mean {v['geomean']:.2f} over {v['cases']} "
                         f"shapes (of the fastest rounds: {_fmt(v['geomean_fastest_rounds'], '.2f')}), "
                         f"worst {v['worst']:.2f} ({v['worst_shape']})")
        if "memory" in entry:
            m = entry["memory"]
            lines.append(f"- {a}: peak memory of one call at most {m['worst']:.2f}x (input + output + weight + "
                         f"workspace bound), at {m['shape']} {m['direction']}")
    if any(r["algorithm"] == "auto" for r in rows):
        lines.append("")
        lines.append("Targets (auto; time / PyTorch's unless said):")
        for name, measured, limit, met in targets(rows):
            verdict = "not measured" if met is None else ("met" if met else "MISSED")
            lines.append(f"- {name} <= {limit:g}: {_fmt(measured, '.2f')} ({verdict})")
    for wrong in s["wrong"]:
        lines.append(f"- WRONG RESULT, not timed: {wrong}")
    return lines


def compile_table(rows):
    lines = ["| what | cold cache s | warm cache s |", "|---|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['cold_s']:.2f} | {r['warm_s']:.2f} |")
    return lines


def plot(rows, path):
    """A PNG: per direction, a bar per shape and algorithm of time / PyTorch's on a log scale
    (GFLOP/s where PyTorch was not there). Needs matplotlib (``pip install numbaconv[bench]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'numbaconv[bench]'") from exc
    versus_torch = any(r["ratio"] is not None for r in rows)
    key = "ratio" if versus_torch else "gflops"
    directions = list(dict.fromkeys(r["direction"] for r in rows))
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    height = 1.0 + 0.12 * len(shapes) * len(algorithms)
    fig, axes = plt.subplots(1, len(directions), figsize=(6 * len(directions), height), squeeze=False, sharey=True)
    bar = 0.8 / len(algorithms)
    for ax, direction in zip(axes[0], directions):
        for i, a in enumerate(algorithms):
            values = {r["shape"]: r[key] for r in rows if r["direction"] == direction and r["algorithm"] == a}
            ys = [j + i * bar for j in range(len(shapes))]
            ax.barh(ys, [values.get(s) or 0 for s in shapes], height=bar, label=a)
        if versus_torch:
            ax.set_xscale("log")
            ax.axvline(1.0, color="black", linewidth=0.8)
            ax.set_xlabel("time / PyTorch's (below 1: numbaconv faster)")
        else:
            ax.set_xlabel("GFLOP/s")
        ax.set_title(direction)
        ax.set_yticks([j + 0.4 - bar / 2 for j in range(len(shapes))], shapes, fontsize=7)
        ax.legend(fontsize=7)
    axes[0][0].set_ylim(len(shapes) - 0.1, -0.1 - bar / 2)  # first shape on top (the axes share y)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
