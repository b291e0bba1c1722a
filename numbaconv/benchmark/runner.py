"""Time numbaconv's convolutions on the named shapes, next to PyTorch in the same process.

For each shape and direction: the inputs are made once; every candidate (each numbaconv
algorithm asked for, and PyTorch when importable) is called once untimed (compilation, first
touch) and its result checked against PyTorch's (or, without PyTorch, the first algorithm's)
before anything is timed, so no figure comes from a wrong answer. Then the candidates take
turns, each running a burst of calls per turn whose first ``SETTLE_S`` go untimed (``_time``),
so that load which comes and goes on the machine touches all of them alike while no timed call
shares the cores with the other library's still-spinning threads; each reports the median of
its timed calls. The peak memory of one call is measured
apart, untimed, with tracemalloc (NumPy reports its allocations to it), in a new thread so that
a workspace the kernels keep per thread is counted as allocated by the call.
"""

import contextlib
import math
import statistics
import sys
import threading
import time
import tracemalloc

import numpy as np

import numbaconv
from .. import _threads, config
from .._device import require_cuda
from .._geometry import conv_geometry
from ..functional.conv import ALGORITHM_CHOICES, choose_algorithm
from ..kernels.cpu import candidates, conv_blocked, conv_im2col, conv_winograd
from . import shapes as _shapes

DEVICES = ("cpu", "cuda")


class Policy:
    """How many timed calls ("rounds") a candidate gets: enough to fill ``budget_s`` (between
    ``min_rounds`` and ``max_rounds``), a single one when one call takes longer than ``slow_s``;
    and whether each burst settles for as long as NumPy's BLAS threads spin (``_time``)."""

    def __init__(self, budget_s, min_rounds, max_rounds, slow_s, settle_blas=True):
        self.budget_s, self.min_rounds, self.max_rounds, self.slow_s = budget_s, min_rounds, max_rounds, slow_s
        self.settle_blas = settle_blas

    def rounds(self, probe_s):
        if probe_s > self.slow_s:
            return 1
        return int(min(self.max_rounds, max(self.min_rounds, self.budget_s / max(probe_s, 1e-9))))


FULL = Policy(budget_s=1.0, min_rounds=3, max_rounds=50, slow_s=3.0)
QUICK = Policy(budget_s=0.0, min_rounds=3, max_rounds=3, slow_s=3.0, settle_blas=False)

#: A result agrees with the reference when its largest error is within this fraction of the
#: reference's largest magnitude (float32 sums of up to ~10**5 terms stay far inside it; a wrong
#: index or a missing term does not).
RTOL = 1e-4


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def gemm_peak(device="cpu", n=2048, repeat=5):
    """This machine's float32 GEMM rate in GFLOP/s: the best of ``repeat`` n x n x n products
    after a warm-up, by NumPy's BLAS (``device="cpu"``) or by PyTorch on the GPU (``"cuda"``,
    TF32 off; None when PyTorch has no CUDA). The reference the "% of peak" columns divide by."""
    if device not in DEVICES:
        raise ValueError(f"gemm_peak: device must be one of {DEVICES}, got {device!r}")
    if device == "cuda":
        torch = torch_or_none()
        if torch is None or not torch.cuda.is_available():
            return None
        torch.backends.cuda.matmul.allow_tf32 = False
        a = torch.randn(n, n, device="cuda")
        matmul, sync = (lambda: a @ a), torch.cuda.synchronize
    else:
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        matmul, sync = (lambda: a @ a), (lambda: None)
    matmul()
    sync()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        matmul()
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------- one case


def _geometry(shape, x, w):
    return conv_geometry("benchmark", x, w, None, shape.stride, shape.padding, 1, shape.groups, "zeros", shape.ndim)


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape.x_shape, dtype=np.float32)
    w = rng.standard_normal(shape.weight_shape, dtype=np.float32)
    grad_out = rng.standard_normal(shape.out_shape, dtype=np.float32)
    return x, w, grad_out


def numbaconv_call(shape, direction, algorithm, arrays):
    """A no-argument function running ``direction`` of ``shape`` with numbaconv; it returns the
    outputs as a tuple (forward: the output; backward: grad input and grad weight)."""
    x, w, grad_out = arrays
    kw = dict(stride=shape.stride, padding=shape.padding, groups=shape.groups, algorithm=algorithm)
    conv = getattr(numbaconv, f"conv{shape.ndim}d")
    if direction == "forward":
        return lambda: (conv(x, w, **kw),)
    backward = getattr(numbaconv, f"conv{shape.ndim}d_backward")
    return lambda: backward(grad_out, x, w, needs=(True, True, False), **kw)[:2]


def torch_call(torch, shape, direction, arrays):
    """The same as :func:`numbaconv_call`, by PyTorch (the kernels autograd runs for backward)."""
    x, w, grad_out = arrays
    nd = shape.ndim
    stride, padding, dilation = [shape.stride] * nd, [shape.padding] * nd, [1] * nd
    if direction == "forward":
        conv = getattr(torch.nn.functional, f"conv{nd}d")

        def forward():
            with torch.inference_mode():
                return (conv(x, w, None, stride, padding, dilation, shape.groups),)

        return forward

    def backward():
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out, x, w, None, stride, padding, dilation, False, [0] * nd, shape.groups, [True, True, False])
        return grad_x, grad_w

    return backward


def _chosen(algorithm, geom, direction):
    """The kernel(s) ``algorithm`` runs: "direct" / "im2col", "grad_input/grad_weight" choices
    joined by "/" for a backward."""
    kernels = ("forward",) if direction == "forward" else ("grad_input", "grad_weight")
    if algorithm == "winograd":  # its weight gradient is im2col's
        names = ["winograd" if k != "grad_weight" else "im2col" for k in kernels]
    elif algorithm in ("direct", "im2col"):
        names = [algorithm] * len(kernels)
    elif algorithm == "auto" and not config.AUTOTUNE:
        names = [choose_algorithm(geom, k) for k in kernels]
    elif algorithm in ("auto", "tune"):
        cache = numbaconv.autotune_cache()
        names = [cache.get((geom, k, "float32"), {}).get("algorithm", "?") for k in kernels]
    return "/".join(dict.fromkeys(names))


def _workspace_bound(geom, algorithm, itemsize):
    """The most workspace one kernel may hold: none for the direct loops; im2col's chunk of
    buffers, which ``config.WORKSPACE_BYTES`` bounds, one sample at the least
    (``kernels.cpu.conv_im2col.workspace_bytes``); Winograd's and the blocked loops' own."""
    if algorithm == "winograd":
        return conv_winograd.workspace_bytes(geom, itemsize, config.WORKSPACE_BYTES)
    if algorithm == "blocked":
        return conv_blocked.workspace_bytes(geom, itemsize)
    if algorithm != "im2col":
        return 0
    return conv_im2col.workspace_bytes(geom, itemsize, config.WORKSPACE_BYTES)


def _io_bytes(shape, direction, itemsize):
    x, w, out = (math.prod(s) for s in (shape.x_shape, shape.weight_shape, shape.out_shape))
    count = x + w + out if direction == "forward" else out + x + w + x + w  # grad_out, x, w, grad_x, grad_w
    return count * itemsize


def _peak_bytes(fn):
    """Bytes allocated at the peak of one call, above what was allocated before it."""
    found = {}

    def measure():
        already = tracemalloc.is_tracing()  # e.g. python -X tracemalloc: leave it tracing
        if not already:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            result = fn()
            found["peak"] = tracemalloc.get_traced_memory()[1] - before
            del result
        finally:
            if not already:
                tracemalloc.stop()

    thread = threading.Thread(target=measure)
    thread.start()
    thread.join()
    return found.get("peak")


def _max_error(got, want):
    """Largest |got - want| over the outputs, as a fraction of want's largest magnitude."""
    worst = 0.0
    for g, r in zip(got, want):
        g, r = np.asarray(g, dtype=np.float64), np.asarray(r, dtype=np.float64)
        if g.shape != r.shape:
            return math.inf
        scale = max(float(np.max(np.abs(r), initial=0.0)), 1e-30)
        worst = max(worst, float(np.max(np.abs(g - r), initial=0.0)) / scale)
    return worst


#: Each burst of calls starts with untimed calls for this long. A library's idle threads keep
#: spinning for milliseconds after it returns, and the other library's first calls after a
#: switch share the cores with them (LeNet c2 at batch 64, 2 cores, medians: PyTorch's forward
#: 0.64 ms as the first call after numbaconv's, 0.25 from the third on; numbaconv's 2.9 ms
#: right after PyTorch's, 0.86 after about 10 ms). Timing single calls in alternation measured
#: mostly those switches. NumPy's OpenBLAS threads spin far longer after each GEMM (2^28
#: cycles unless numbaconv quieted them: ``_threads.check_blas``), so where they do, each burst
#: first sleeps for as long as they spin, at ``LOW_CLOCK_HZ``: the candidate after im2col shared
#: the cores with them otherwise ("auto" running the direct loops on (1, 64, 16000) -> 64,
#: k = 9, right after im2col: median 7.9 ms, against 6.6 for the same loops as "direct"; and
#: PyTorch, which ran after numbaconv's "auto", read 1.5x its own time over the whole suite).
SETTLE_S = 0.02

#: A low clock rate, at which a spin of so many cycles lasts longest.
LOW_CLOCK_HZ = 2e9

#: The timed calls of a candidate are spread over at most this many bursts, the candidates
#: taking turns, so that load which comes and goes on the machine touches all of them alike.
BURSTS = 5


def blas_wait_s(policy):
    """How long to pause before timing a candidate: as long as NumPy's BLAS threads may still
    spin after the last GEMM (``_threads.blas_spin_cycles`` at ``LOW_CLOCK_HZ``), where the
    policy settles for them; else 0."""
    return policy.settle_blas * _threads.blas_spin_cycles / LOW_CLOCK_HZ


def _time(calls, policy, sync):
    """{name: [seconds per timed call]}: each call once to probe, then rounds in which every
    candidate in turn runs a burst (a different one first each round): a sleep while NumPy's
    BLAS threads may spin (``Policy.settle_blas``), untimed calls for ``SETTLE_S``, then its
    share of the timed calls."""
    def once(fn):
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    wait_s = blas_wait_s(policy)
    probes = {name: once(fn) for name, fn in calls.items()}
    counts = {name: policy.rounds(probe) for name, probe in probes.items()}
    bursts = min(BURSTS, max(counts.values(), default=1))
    samples = {name: [] for name in calls}
    names = list(calls)
    for b in range(bursts):
        for name in names[b % len(names):] + names[:b % len(names)]:
            fn, todo = calls[name], counts[name] * (b + 1) // bursts - counts[name] * b // bursts
            if todo == 0:
                continue
            time.sleep(wait_s)
            settle = time.perf_counter() + SETTLE_S
            if probes[name] < SETTLE_S:
                while time.perf_counter() < settle:
                    once(fn)
            samples[name].extend(once(fn) for _ in range(todo))
    return samples


class _Device:
    """Moving arrays and waiting for results on one device."""

    def __init__(self, device, torch):
        self.name, self.torch = device, torch
        if device == "cuda":
            self.cuda = require_cuda("numbaconv.benchmark (device 'cuda')")
            if torch is not None and not torch.cuda.is_available():
                self.torch = None  # a CPU-only PyTorch has nothing to compare on the GPU
            if self.torch is not None:
                self.torch.backends.cudnn.allow_tf32 = False  # float32 against float32
                self.torch.backends.cuda.matmul.allow_tf32 = False

    def ours(self, arrays):
        if self.name == "cpu":
            return arrays
        return tuple(numbaconv.to_device(a) for a in arrays)

    def theirs(self, arrays):
        tensors = tuple(self.torch.from_numpy(a) for a in arrays)
        return tensors if self.name == "cpu" else tuple(t.cuda() for t in tensors)

    def sync(self):
        if self.name == "cuda":
            self.cuda.synchronize()
            if self.torch is not None:
                self.torch.cuda.synchronize()

    def host(self, outputs):
        if self.name == "cpu":
            return outputs
        return tuple(numbaconv.to_host(o) for o in outputs)

    def torch_host(self, outputs):
        return tuple(t.detach().cpu().numpy() for t in outputs)


def measure_case(name, shape, direction, algorithms, device, policy, peak_gflops, memory=True):
    """The rows of one shape and direction, one per algorithm (see :func:`run` for the keys)."""
    arrays = _inputs(shape)
    geom = _geometry(shape, arrays[0], arrays[1])
    # Winograd's tiles run 3x3 convolutions at unit stride on the CPU only: no row elsewhere
    kernel = "forward" if direction == "forward" else "grad_input"
    algorithms = [a for a in algorithms if a != "winograd" or device.name == "cpu" and a in candidates(geom, kernel)]
    ours = device.ours(arrays)
    calls = {a: numbaconv_call(shape, direction, a, ours) for a in algorithms}
    results = {a: device.host(fn()) for a, fn in calls.items()}
    device.sync()
    if device.torch is not None:
        theirs = torch_call(device.torch, shape, direction, device.theirs(arrays))
        reference, against = device.torch_host(theirs()), "torch"
        calls["torch"] = theirs
    else:
        reference, against = results[algorithms[0]], algorithms[0]
    errors = {a: _max_error(results[a], reference) for a in algorithms}
    wrong = {a for a, e in errors.items() if not e <= RTOL}
    samples = _time({a: fn for a, fn in calls.items() if a not in wrong}, policy, device.sync)
    torch_s = statistics.median(samples["torch"]) if "torch" in samples else None
    flop = shape.flops(direction)
    io = _io_bytes(shape, direction, 4)
    rows = []
    for a in algorithms:
        chose = _chosen(a, geom, direction) if device.name == "cpu" else a
        seconds = statistics.median(samples[a]) if a in samples else None
        known = device.name == "cpu" and "?" not in chose.split("/")  # the GPU's workspace is its own
        workspace = max(_workspace_bound(geom, k, 4) for k in chose.split("/")) if known else None
        peak_bytes = _peak_bytes(calls[a]) if memory and device.name == "cpu" and a not in wrong else None
        bound = io + workspace if workspace is not None else None
        rows.append({
            "suite": name.split("-")[0], "shape": name, "layer": shape.describe(), "ndim": shape.ndim,
            "batch": shape.n, "direction": direction, "algorithm": a, "chose": chose, "device": device.name,
            "dtype": "float32", "flops": flop,
            "ms": None if seconds is None else 1e3 * seconds,
            "min_ms": 1e3 * min(samples[a]) if a in samples else None,
            "rounds": len(samples.get(a, ())),
            "gflops": None if seconds is None else flop / seconds / 1e9,
            "peak_pct": None if seconds is None or not peak_gflops else 100 * flop / seconds / 1e9 / peak_gflops,
            "gemm_peak_gflops": peak_gflops,
            "torch_ms": None if torch_s is None else 1e3 * torch_s,
            "torch_min_ms": 1e3 * min(samples["torch"]) if "torch" in samples else None,
            "torch_gflops": None if torch_s is None else flop / torch_s / 1e9,
            "ratio": None if seconds is None or torch_s is None else seconds / torch_s,
            "min_ratio": min(samples[a]) / min(samples["torch"]) if a in samples and "torch" in samples else None,
            "peak_bytes": peak_bytes, "io_bytes": io, "workspace_bytes": workspace, "bound_bytes": bound,
            "memory_ratio": None if peak_bytes is None or not bound else peak_bytes / bound,
            "max_error": errors[a], "checked_against": against,
            "error": (f"max error {errors[a]:.3g} of the largest magnitude exceeds {RTOL:g} against {against}"
                      if a in wrong else None),
        })
    return rows


# --------------------------------------------------------------------------- the suite


class _Progress:
    """tqdm on standard error when it is installed and wanted; nothing otherwise."""

    def __init__(self, show, total, desc):
        self._bar = None
        if show is None:
            show = sys.stderr.isatty()
        if show:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=desc, unit="case", file=sys.stderr, leave=False, dynamic_ncols=True)

    def step(self, label):
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _check_choices(name, values, choices):
    values = (values,) if isinstance(values, str) else tuple(values)
    bad = [v for v in values if v not in choices]
    if not values or bad:
        raise ValueError(f"{name} must be a non-empty selection of {', '.join(map(repr, choices))}, got {values!r}")
    return tuple(dict.fromkeys(values))


def run(suite="resnet18", device="cpu", quick=False, algorithms=("direct", "im2col", "auto"),
        directions=_shapes.DIRECTIONS, torch=True, memory=True, progress=None, peak_gflops=None, threads=None,
        shapes=None):
    """Benchmark the convolutions of ``suite`` (a name of ``numbaconv.benchmark.SUITES``).

    Returns a list of dicts, one per shape, direction and algorithm, with: ``shape``, ``suite``,
    ``layer`` (the shape in words), ``ndim``, ``batch``, ``direction`` ("forward", or "backward"
    = grad input + grad weight), ``algorithm`` and ``chose`` (the kernel it ran: what "auto" or
    "tune" picked), ``flops``, ``ms`` (median), ``rounds``, ``gflops``, ``peak_pct`` (% of
    ``gemm_peak_gflops``), ``min_ms`` and ``torch_min_ms`` (the fastest round: on a busy
    machine the least disturbed one), ``torch_ms``, ``torch_gflops`` and ``ratio`` (numbaconv's time /
    PyTorch's: below 1 numbaconv is faster; None without PyTorch) and ``min_ratio`` (the same of
    the fastest rounds), ``peak_bytes`` (of one call,
    CPU only), ``io_bytes`` (inputs + outputs + weight), ``workspace_bytes``, ``bound_bytes`` (their
    sum) and ``memory_ratio``, ``max_error`` and ``checked_against``, and ``error`` (None, or why the
    result was wrong; a wrong case is not timed).

    shapes: only these shape names of the suite (all when None).
    quick: three timed rounds per candidate instead of filling about a second. torch: compare
    with PyTorch when it is importable (it is given as many threads as Numba). threads: set
    Numba's and PyTorch's thread counts first (a machine shared with other busy processes gives
    steadier figures with 1: threads that wait for each other there wait for a time slice too),
    and NumPy's BLAS's for the run when threadpoolctl is installed. peak_gflops: the GEMM rate
    to quote percentages of; measured now with :func:`gemm_peak` when None.
    progress: a bar on standard error (tqdm); None shows it when standard error is a terminal.
    device="cuda" runs on the GPU (``numbaconv.to_device`` arrays, PyTorch's CUDA convolution
    with TF32 off) and raises RuntimeError, saying why, where CUDA is not available.

    For figures PyTorch would also see, import torch before numbaconv (as ``numbaconv bench``
    and ``bench/`` do): both load one OpenMP runtime, which keeps the settings of whoever loads
    it first.
    """
    cases = _shapes.suite(suite)
    if shapes is not None:
        names = _check_choices("shapes", shapes, tuple(cases))
        cases = {name: cases[name] for name in names}
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    algorithms = _check_choices("algorithms", algorithms, ALGORITHM_CHOICES)
    directions = _check_choices("directions", directions, _shapes.DIRECTIONS)
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    torch_module = torch_or_none() if torch else None
    target = _Device(device, torch_module)
    import numba

    if threads is not None:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if target.torch is not None and device == "cpu":
        target.torch.set_num_threads(numba.get_num_threads())
    _raise_allocator_threshold()
    with _blas_threads(threads):
        if peak_gflops is None:
            peak_gflops = gemm_peak(device, n=1024 if quick else 2048, repeat=3 if quick else 5)
        return _run(cases, directions, algorithms, target, QUICK if quick else FULL, peak_gflops, memory,
                    _Progress(progress, len(cases) * len(directions), f"bench {suite}"))


def _raise_allocator_threshold():
    """Free one large block first, so that every case runs in the same allocator state.

    glibc's malloc serves blocks past its mmap threshold (128 KiB at start) with fresh pages,
    a page fault per 4 KiB on first touch, on every call; freeing a large block raises the
    threshold to its size (up to 32 MiB), after which such blocks are reused. Both libraries
    allocate their outputs this way: PyTorch's depthwise (8, 1024, 7x7) forward took 1.5-3 ms
    before and 0.23 ms after, so without this step the figures depended on whether an earlier
    step (such as the GEMM peak measurement) happened to free a large array."""
    block = np.empty(24 << 20, dtype=np.uint8)
    block[::4096] = 0  # touch its pages: an untouched block may never be mapped
    del block


def _blas_threads(threads):
    """NumPy's BLAS limited to ``threads`` threads meanwhile (threadpoolctl), if asked and possible."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def _run(cases, directions, algorithms, target, policy, peak_gflops, memory, bar):
    rows = []
    try:
        for name, shape in cases.items():
            for direction in directions:
                rows += measure_case(name, shape, direction, algorithms, target, policy, peak_gflops, memory)
                bar.step(f"{name} {direction}")
    finally:
        bar.close()
    return rows
