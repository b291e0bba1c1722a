"""The benchmark tools (``numbaconv bench``, ``numbaconv.benchmark``) and the autotune mode.

No timing is asserted: the command must produce a well-formed table, JSON and plot, count FLOPs
right and refuse bad options; autotune must give the fixed algorithms' results and time each
shape once (checked through ``numbaconv.autotune_cache``, not through the clock).
"""

import json
import math
import threading

import numpy as np
import pytest
from conftest import assert_close

import naive
import numbaconv
import numbaconv.benchmark as nb
from numbaconv import _device, config
from numbaconv._geometry import conv_geometry
from numbaconv.cli import main

ROW_KEYS = {"suite", "shape", "layer", "ndim", "batch", "direction", "algorithm", "chose", "device", "dtype",
            "flops", "ms", "min_ms", "torch_min_ms", "rounds", "gflops", "peak_pct", "gemm_peak_gflops", "torch_ms", "torch_gflops", "ratio", "min_ratio",
            "peak_bytes", "io_bytes", "workspace_bytes", "bound_bytes", "memory_ratio", "max_error",
            "checked_against", "error"}


# --------------------------------------------------------------------------- shapes and FLOPs


@pytest.mark.parametrize("name, forward", [
    ("lenet-c1-b1", 2 * 1 * 6 * 1 * 5 * 5 * 28 * 28),
    ("lenet-c2-b64", 2 * 64 * 16 * 6 * 5 * 5 * 10 * 10),
    ("alexnet-c1-b8", 2 * 8 * 96 * 3 * 11 * 11 * 55 * 55),
    ("resnet18-l1-b8", 2 * 8 * 64 * 64 * 3 * 3 * 56 * 56),
    ("resnet18-l2-first-b1", 2 * 1 * 128 * 64 * 3 * 3 * 28 * 28),  # stride 2: 56 -> 28
    ("resnet18-l3-down-b1", 2 * 1 * 256 * 128 * 1 * 14 * 14),
    ("depthwise-32x112-b1", 2 * 1 * 32 * 1 * 3 * 3 * 112 * 112),  # one input channel per group
    ("conv1d-audio-k9-b8", 2 * 8 * 64 * 64 * 9 * 16000),
    ("conv3d-video-k3-b2", 2 * 2 * 32 * 32 * 27 * 16 * 56 * 56),
])
def test_flops_hand_counted(name, forward):
    shape = nb.SHAPES[name]
    assert shape.flops("forward") == forward
    assert shape.flops("backward") == 2 * forward  # grad input + grad weight
    with pytest.raises(ValueError, match="direction"):
        shape.flops("sideways")


def test_suites_cover_the_issue_and_shapes_match_numbaconv():
    networks = {"lenet", "alexnet", "vgg16", "resnet18", "depthwise", "pointwise", "conv1d", "conv3d"}
    assert networks | {"tiny", "rules", "all"} == set(nb.SUITES)
    assert set(nb.SUITES["all"]) == {n for n in nb.SHAPES if n.split("-")[0] in networks}
    for suite, names in nb.SUITES.items():
        if suite in networks or suite == "tiny":
            assert len({nb.SHAPES[n].n for n in names}) == 2, f"{suite}: batch 1 and a larger batch"
    assert nb.SHAPES["conv1d-audio-k9-b8"].x_shape == (8, 64, 16000)
    assert nb.SHAPES["conv3d-video-k3-b2"].x_shape == (2, 32, 16, 56, 56)
    for name, shape in nb.SHAPES.items():  # zero-stride arrays: the geometry without the memory
        x = np.broadcast_to(np.float32(0), shape.x_shape)
        w = np.broadcast_to(np.float32(0), shape.weight_shape)
        geom = conv_geometry("test", x, w, None, shape.stride, shape.padding, 1, shape.groups, "zeros", shape.ndim)
        assert geom.spatial(geom.out_size) == shape.out_size, name
        assert geom.flops == shape.flops(), name


# --------------------------------------------------------------------------- the runner


def test_candidates_are_timed_in_bursts_that_start_untimed():
    """After one probe each, the candidates take turns; every turn is a run of calls of one
    candidate, the first ones untimed, and the timed calls add up to what the policy gives."""
    from numbaconv.benchmark import runner

    log = []
    calls = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    policy = runner.Policy(budget_s=0.0, min_rounds=7, max_rounds=7, slow_s=3.0)
    samples = runner._time(calls, policy, lambda: None)
    assert {name: len(s) for name, s in samples.items()} == {"a": 7, "b": 7, "c": 7}
    assert log[:3] == ["a", "b", "c"]  # the probes
    turns = []  # (candidate, calls) of each run of one candidate's calls
    for name in log[3:]:
        if turns and turns[-1][0] == name:
            turns[-1][1] += 1
        else:
            turns.append([name, 1])
    assert len(turns) == 3 * runner.BURSTS
    shares = [7 * (b + 1) // runner.BURSTS - 7 * b // runner.BURSTS for b in range(runner.BURSTS)]
    for b in range(runner.BURSTS):
        first = turns[3 * b][0]
        assert first == "abc"[b % 3]  # a different candidate first each round
        for name, count in turns[3 * b:3 * b + 3]:
            assert count > shares[b]  # untimed calls came first


class _Clock:
    """A simulated ``time`` module for the runner: each call of a candidate takes ``STEP_S``
    and ``sleep`` advances the clock, so the schedule is checked exactly, whatever pauses the
    test process itself (a garbage collection, a busy CI machine)."""
    STEP_S = 0.001

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.mark.parametrize("settle_blas", [True, False])
def test_bursts_settle_while_blas_threads_spin(monkeypatch, settle_blas):
    """Where NumPy's BLAS threads spin after each GEMM, each burst starts after a pause as long
    as that spin (so the next candidate is not timed beside them), unless the policy says not;
    then its untimed calls for ``SETTLE_S``."""
    from numbaconv import _threads
    from numbaconv.benchmark import runner

    clock = _Clock()
    monkeypatch.setattr(runner, "time", clock)
    monkeypatch.setattr(_threads, "blas_spin_cycles", int(0.2 * runner.LOW_CLOCK_HZ))  # 0.2 s
    log = []

    def call(name):
        log.append((name, clock.now))
        clock.now += clock.STEP_S

    calls = {name: (lambda name=name: call(name)) for name in "abc"}
    policy = runner.Policy(budget_s=0.0, min_rounds=2, max_rounds=2, slow_s=3.0, settle_blas=settle_blas)
    samples = runner._time(calls, policy, lambda: None)
    assert {name: len(s) for name, s in samples.items()} == {"a": 2, "b": 2, "c": 2}
    runs = []  # the calls of each turn of one candidate, after the probes
    for name, stamp in log[3:]:
        if runs and runs[-1][0] == name:
            runs[-1][1].append(stamp)
        else:
            runs.append((name, [stamp]))
    assert len(runs) == 3 * 2  # two bursts of three candidates
    step = clock.STEP_S
    for name, stamps in runs:  # untimed calls for the settling time, then one timed call
        assert runner.SETTLE_S - step / 2 < stamps[-1] - stamps[0] < runner.SETTLE_S + 1.5 * step, name
    wait_s = 0.2 if settle_blas else 0.0
    for (_, before), (name, stamps) in zip(runs, runs[1:]):  # the pause between turns
        assert stamps[0] - before[-1] == pytest.approx(step + wait_s), name


def test_run_rows(capfd):
    rows = nb.run(suite="tiny", quick=True, algorithms=("direct", "auto"), directions=("forward", "backward"),
                  progress=False, peak_gflops=100.0)
    assert len(rows) == len(nb.SUITES["tiny"]) * 2 * 2
    for r in rows:
        assert set(r) == ROW_KEYS
        shape = nb.SHAPES[r["shape"]]
        assert r["error"] is None and r["max_error"] <= 1e-4
        assert r["flops"] == shape.flops(r["direction"])
        assert r["rounds"] == 3 and r["ms"] >= r["min_ms"] > 0
        assert math.isclose(r["gflops"], r["flops"] / r["ms"] / 1e6)
        assert math.isclose(r["peak_pct"], r["gflops"])  # % of 100 GFLOP/s
        assert r["chose"] in ("direct", "im2col", "im2col/direct", "direct/im2col")
        out_bytes = 4 * math.prod(shape.out_shape)
        io = 4 * sum(math.prod(s) for s in (shape.x_shape, shape.weight_shape, shape.out_shape))
        assert r["io_bytes"] == (io if r["direction"] == "forward" else 2 * io - out_bytes)
        # the call allocates its outputs, so tracemalloc's peak holds at least them
        outputs = out_bytes if r["direction"] == "forward" else 4 * (math.prod(shape.x_shape)
                                                                      + math.prod(shape.weight_shape))
        assert r["peak_bytes"] >= outputs
        if r["torch_ms"] is not None:
            assert r["checked_against"] == "torch"
            assert math.isclose(r["ratio"], r["ms"] / r["torch_ms"])
            assert math.isclose(r["min_ratio"], r["min_ms"] / r["torch_min_ms"])
    assert capfd.readouterr().err == ""  # progress=False: no bar


def test_summary_best_takes_the_fastest_algorithm_that_ran_each_case():
    """"best" is the fastest of direct, im2col and Winograd's tiles per case; a case Winograd
    cannot run (no row) takes the faster of the other two."""
    def row(shape, algorithm, ratio):
        return {"shape": shape, "direction": "forward", "algorithm": algorithm, "ratio": ratio, "min_ratio": ratio,
                "memory_ratio": None, "error": None}

    rows = [row("resnet18-l1-b1", "direct", 2.0), row("resnet18-l1-b1", "im2col", 1.0),
            row("resnet18-l1-b1", "winograd", 0.5), row("resnet18-l1-b1", "auto", 0.6),
            row("resnet18-l2-down-b1", "direct", 3.0), row("resnet18-l2-down-b1", "im2col", 1.5),
            row("resnet18-l2-down-b1", "auto", 1.5)]
    best = nb.report.summary(rows)["best"]["directions"]["forward"]
    assert best["cases"] == 2 and best["worst"] == 1.5 and best["worst_shape"] == "resnet18-l2-down-b1"
    assert math.isclose(best["geomean"], math.sqrt(0.5 * 1.5))
    assert "best" not in nb.report.summary([r for r in rows if r["algorithm"] in ("direct", "auto")])


def test_run_rejects_bad_arguments():
    with pytest.raises(ValueError, match="suite must be one of .*'resnet18'.*got 'resnet19'"):
        nb.run(suite="resnet19")
    with pytest.raises(ValueError, match="device must be one of"):
        nb.run(suite="tiny", device="tpu")
    with pytest.raises(ValueError, match="algorithms must be .*got \\('fft',\\)"):
        nb.run(suite="tiny", algorithms=("fft",))
    with pytest.raises(ValueError, match="directions"):
        nb.run(suite="tiny", directions=())
    with pytest.raises(ValueError, match="threads"):
        nb.run(suite="tiny", threads=0)
    with pytest.raises(ValueError, match="shapes must be .*'tiny-2d-b1'.*got \\('lenet-c1-b1',\\)"):
        nb.run(suite="tiny", shapes=("lenet-c1-b1",))
    with pytest.raises(ValueError, match="gemm_peak: device"):
        nb.gemm_peak("tpu")


def test_gemm_peak_is_a_rate():
    assert nb.gemm_peak(n=64, repeat=2) > 0


def _no_cuda(monkeypatch):
    monkeypatch.setattr(_device, "cuda_status", lambda: (False, "no CUDA driver or GPU found"))


def test_cuda_unavailable_is_a_clear_error(monkeypatch, capsys):
    _no_cuda(monkeypatch)
    with pytest.raises(RuntimeError, match="CUDA is not available: no CUDA driver or GPU found"):
        nb.run(suite="tiny", device="cuda", quick=True)
    assert main(["bench", "--device", "cuda", "--suite", "tiny", "--quick"]) == 2
    assert "--device cuda: CUDA is not available: no CUDA driver or GPU found" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not _device.cuda_status()[0], reason=f"CUDA: {_device.cuda_status()[1]}")
def test_run_on_the_gpu():
    """The CUDA path end to end: device arrays in, synchronized timings, results checked (against
    PyTorch's CUDA convolution when there is one, else the first algorithm; the simulator's
    PyTorch is CPU-only) and no host memory figures."""
    rows = nb.run(suite="tiny", device="cuda", quick=True, algorithms=("direct", "auto"), directions=("forward",),
                  shapes=("tiny-2d-s2-b1",), progress=False, peak_gflops=1.0)
    assert [r["algorithm"] for r in rows] == ["direct", "auto"]
    for r in rows:
        assert r["device"] == "cuda" and r["error"] is None and r["max_error"] <= 1e-4 and r["ms"] > 0
        assert r["peak_bytes"] is None and r["bound_bytes"] is None


def test_bad_options_are_refused_before_anything_runs(capsys):
    assert main(["bench", "--suite", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert "--suite must be one of" in err and "resnet18" in err and "'resnet19'" in err
    assert main(["bench", "--device", "tpu"]) == 2
    assert "--device must be cpu or cuda, got 'tpu'" in capsys.readouterr().err
    assert main(["bench", "--algorithms", "direct,fft"]) == 2
    assert "--algorithms must be a comma-separated selection of auto, tune, direct, im2col, winograd, blocked, got 'direct,fft'" \
        in capsys.readouterr().err
    assert main(["bench", "--directions", "sideways"]) == 2
    assert "--directions must be" in capsys.readouterr().err
    assert main(["bench", "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib fails
    assert main(["bench", "--suite", "tiny", "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="needs matplotlib"):
        nb.plot([], tmp_path / "p.png")


def test_cli_quick_suite(tmp_path, capfd):
    """The whole command in its own process: table on standard output, JSON, and the plot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plot = None
    else:
        plot = tmp_path / "bench.png"
    out = tmp_path / "bench.json"
    argv = ["bench", "--suite", "tiny", "--quick", "--no-progress", "--json", str(out)]
    assert main(argv + (["--plot", str(plot)] if plot else [])) == 0
    printed = capfd.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| tiny-")]
    assert len(table) == len(nb.SUITES["tiny"]) * 2 * 3  # shapes x directions x (direct, im2col, auto)
    assert "| shape | layer | direction | algorithm | ms | min ms | GFLOP/s | % peak | torch ms |" in printed
    assert "geometric mean" in printed and "Targets" in printed
    data = json.loads(out.read_text())
    assert {"machine", "settings", "gemm_peak_gflops", "rows", "summary", "targets"} <= set(data)
    assert data["settings"] == {"suite": "tiny", "device": "cpu", "quick": True, "threads": None, "import_order": "torch",
                                "algorithms": "direct,im2col,auto", "directions": "forward,backward"}
    assert printed.startswith("# numbaconv bench --suite tiny --device cpu --quick --algorithms direct,im2col,auto")
    assert data["gemm_peak_gflops"] > 0 and data["machine"]["cores"] >= 1
    from numbaconv import _threads  # what numbaconv does about NumPy's BLAS threads, in the header
    assert data["machine"]["blas_threads"] == _threads.blas_reason
    assert f"; NumPy's BLAS: {_threads.blas_reason}" in printed.split("| shape |")[0]
    assert len(data["rows"]) == len(table)
    for row in data["rows"]:
        assert set(row) == ROW_KEYS and row["error"] is None and row["ms"] > 0
        assert row["flops"] == nb.SHAPES[row["shape"]].flops(row["direction"])
    assert {t["target"] for t in data["targets"]} == set(nb.report.TARGETS)
    if plot:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- autotune


@pytest.fixture
def fresh_autotune():
    numbaconv.clear_autotune_cache()
    saved = config.AUTOTUNE
    yield
    config.AUTOTUNE = saved
    numbaconv.clear_autotune_cache()


def _entries(direction=None):
    return {k: v for k, v in numbaconv.autotune_cache().items() if direction in (None, k[1])}


CASES = [  # (conv op, x shape, weight shape, kwargs)
    ("conv2d", (2, 3, 9, 8), (4, 3, 3, 3), dict(padding=1)),
    ("conv2d", (1, 4, 7, 7), (4, 1, 3, 3), dict(groups=4, stride=2)),
    ("conv1d", (2, 2, 15), (3, 2, 4), dict(dilation=2)),
    ("conv3d", (1, 2, 4, 5, 5), (2, 2, 3, 3, 3), dict(padding=1)),
]


@pytest.mark.parametrize("op, xs, ws, kw", CASES)
def test_tune_returns_what_the_chosen_algorithm_returns(fresh_autotune, rng, op, xs, ws, kw):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)  # float64: a tight comparison with naive
    y = getattr(numbaconv, op)(x, w, algorithm="tune", **kw)
    (key, entry), = _entries("forward").items()
    # Winograd's tiles are a candidate for the 3x3 convolution at unit stride and one group only,
    # the blocked loops for one group
    expected = {"direct", "im2col"} | ({"winograd"} if op == "conv2d" and kw == dict(padding=1) else set())
    expected |= {"blocked"} if kw.get("groups", 1) == 1 else set()
    assert key[2] == "float64" and set(entry["ms"]) == expected and entry["hits"] == 0
    np.testing.assert_array_equal(y, getattr(numbaconv, op)(x, w, algorithm=entry["algorithm"], **kw))
    assert_close(y, naive.conv(x, w, **kw))
    go = rng.standard_normal(y.shape)
    grads = getattr(numbaconv, f"{op}_backward")(go, x, w, algorithm="tune", **kw)
    chosen = {k[1]: v["algorithm"] for k, v in _entries().items()}
    assert set(chosen) == {"forward", "grad_input", "grad_weight"}
    gx = getattr(numbaconv, f"{op}_backward")(go, x, w, algorithm=chosen["grad_input"], **kw)[0]
    gw = getattr(numbaconv, f"{op}_backward")(go, x, w, algorithm=chosen["grad_weight"], **kw)[1]
    np.testing.assert_array_equal(grads[0], gx)
    np.testing.assert_array_equal(grads[1], gw)
    ref = naive.conv_backward(go, x, w, **kw)
    assert_close(grads[0], ref[0])
    assert_close(grads[1], ref[1])


def test_tune_transposed_convolution(fresh_autotune, rng):
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    y = numbaconv.conv_transpose2d(x, w, stride=2, algorithm="tune")
    (key, entry), = _entries().items()
    assert key[1] == "grad_input"  # a transposed convolution runs the input-gradient kernels
    np.testing.assert_array_equal(y, numbaconv.conv_transpose2d(x, w, stride=2, algorithm=entry["algorithm"]))
    assert_close(y, naive.conv_transpose(x, w, stride=2))


def test_choice_is_cached_per_shape_and_dtype(fresh_autotune, rng):
    x, w = rng.standard_normal((2, 3, 8, 8)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    numbaconv.conv2d(x, w, algorithm="tune")
    first = numbaconv.autotune_cache()
    for _ in range(3):
        numbaconv.conv2d(x, w, algorithm="tune")
    again = numbaconv.autotune_cache()
    assert again.keys() == first.keys()
    (key,) = again
    assert again[key]["hits"] == 3 and again[key]["ms"] == first[key]["ms"]  # served, not timed again
    numbaconv.conv2d(x[:1], w, algorithm="tune")                 # another batch size
    numbaconv.conv2d(x.astype(np.float64), w.astype(np.float64), algorithm="tune")  # another dtype
    numbaconv.conv2d(x, w, padding=1, algorithm="tune")           # another geometry
    assert len(numbaconv.autotune_cache()) == 4
    assert numbaconv.autotune_cache()[key]["hits"] == 3
    numbaconv.clear_autotune_cache()
    assert numbaconv.autotune_cache() == {}


def test_set_autotune_switches_auto(fresh_autotune, rng):
    x, w = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    numbaconv.set_autotune(False)
    numbaconv.conv2d(x, w)
    assert numbaconv.autotune_cache() == {}  # auto follows the rules
    numbaconv.set_autotune(True)
    assert config.AUTOTUNE is True
    y = numbaconv.conv2d(x, w)
    (entry,) = numbaconv.autotune_cache().values()
    np.testing.assert_array_equal(y, numbaconv.conv2d(x, w, algorithm=entry["algorithm"]))
    numbaconv.set_autotune(False)
    numbaconv.conv2d(x, w)
    assert next(iter(numbaconv.autotune_cache().values()))["hits"] == 0  # "auto" no longer looks it up


def test_tuning_from_several_threads_times_once(fresh_autotune, rng):
    x, w = rng.standard_normal((2, 3, 10, 10)), rng.standard_normal((5, 3, 3, 3))
    expected = naive.conv(x, w)
    results, start = [], threading.Barrier(4)

    def call():
        start.wait()
        results.append(numbaconv.conv2d(x, w, algorithm="tune"))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (entry,) = numbaconv.autotune_cache().values()
    assert entry["hits"] == 3 and len(results) == 4
    for y in results:
        assert_close(y, expected)


@pytest.mark.parametrize("value", ["yes", 1, 0, None, np.bool_(True)])
def test_set_autotune_refuses_non_bool(value):
    with pytest.raises(TypeError, match=r"set_autotune: enabled must be True or False, got"):
        numbaconv.set_autotune(value)


def test_unknown_algorithm_names_the_choices(rng):
    x, w = rng.standard_normal((1, 1, 4, 4)), rng.standard_normal((1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"algorithm must be one of 'auto', 'tune', 'direct', 'im2col', 'winograd', 'blocked', got 'tuned'"):
        numbaconv.conv2d(x, w, algorithm="tuned")


def test_run_reports_what_tune_chose(fresh_autotune):
    rows = nb.run(suite="tiny", quick=True, algorithms=("tune",), directions=("backward",), torch=False,
                  memory=False, progress=False, peak_gflops=1.0)
    cache = numbaconv.autotune_cache()
    for r in rows:
        assert all(part in ("direct", "im2col") for part in r["chose"].split("/"))
    assert len(cache) == 2 * len(rows)  # grad_input and grad_weight of each shape
