"""The CUDA kernels compile for a real GPU and fit its launch limits, checked without one.

The simulator runs kernels as Python, so the other CUDA tests cannot see a kernel that Numba
cannot type, nor a launch that asks for more registers or shared memory than a GPU has. conftest
installs ``cuda_compile.RECORDER`` under the simulator; the check below (which conftest runs
after every other test, so that it sees their launches) compiles each recorded kernel and
argument-type signature with NVVM for compute capability 9.0, and every variant of the kernel
factories whose choice depends on the problem's size (VARIANTS), and checks ptxas's registers
and shared memory against the recorded launches (each variant at its largest). On a real GPU
(NUMBA_ENABLE_CUDASIM=0) the other tests compile every kernel for real, and this file skips.
"""

import json
import os

import numpy as np
import pytest

import cuda_compile
import numbaconv as nc

pytestmark = pytest.mark.cuda

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
    pytest.skip("on a real GPU the CUDA tests compile every kernel themselves", allow_module_level=True)
if not nc.cuda_status()[0]:
    pytest.skip(f"CUDA: {nc.cuda_status()[1]}", allow_module_level=True)

from numba import cuda  # noqa: E402 (the simulator's, once the checks above passed)

import cuda_unfit_kernels as unfit  # noqa: E402


def report_for(records):
    report = cuda_compile.run_compiler(records)
    if "missing" in report:
        message = f"the GPU compiler is missing ({report['missing']}); the test extra brings it (not on macOS)"
        if os.environ.get("CI"):  # CI installs the test extra: a missing compiler is a broken install there
            pytest.fail(message)
        pytest.skip(message)
    return report


def exercise():
    """A few launches of numbaconv's own kernels, so that the check has work when it runs alone:
    convolution forward and backward through both algorithms."""
    rng = np.random.default_rng(0)
    x = nc.to_device(rng.standard_normal((2, 3, 6, 5)).astype(np.float32))
    w = nc.to_device(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    for algorithm in ("direct", "im2col"):
        y = nc.conv2d(x, w, padding=1, algorithm=algorithm)
        nc.conv2d_backward(y, x, w, padding=1, algorithm=algorithm)


def numbaconvs(records):
    return [r for r in records if r["kernel"]["module"].startswith("numbaconv.")]


def _direct_forward(record):
    """Every (KB, staged) the direct forward kernel is made with, at its largest launch: THREADS
    threads, and (staged) all the shared memory a block may take."""
    from numbaconv.kernels.cuda import _launch, conv_direct
    dtype = record["kernel"]["args"][0]
    for KB in (2 ** i for i in range(conv_direct.MAX_KB.bit_length())):  # forward() takes powers of two
        for staged in (True, False):
            yield [dtype, KB, staged], _launch.THREADS, _launch.SHARED_BYTES if staged else 0


def _gemm(record):
    """Every transposition and tile of the GEMM kernel, each at its tile's block."""
    from numbaconv.kernels.cuda import gemm
    dtype = record["kernel"]["args"][0]
    for trans_a in (False, True):
        for trans_b in (False, True):
            for tile in gemm.TILES:
                yield [dtype, trans_a, trans_b, {"tuple": list(tile)}], (tile.BN // tile.TN) * (tile.BM // tile.TM), 0


#: Kernel factories whose variants depend on the problem's size: the tests' tiny shapes make only
#: some of them (a ResNet layer takes KB = 8 and the largest GEMM tile; a 3-channel test does not).
VARIANTS = {
    ("numbaconv.kernels.cuda.conv_direct", "_forward_kernel"): _direct_forward,
    ("numbaconv.kernels.cuda.gemm", "_kernel"): _gemm,
}


def with_variants(records):
    """``records`` plus, for each factory of VARIANTS, every variant it can make, with the
    argument types recorded and the largest block that variant is launched with."""
    out = {json.dumps([r["kernel"], r["types"]], sort_keys=True): r for r in records}
    for r in records:
        origin = r["kernel"]
        make = VARIANTS.get((origin["module"], origin.get("factory")))
        for args, threads, shared in make(r) if make else ():
            variant = dict(r, kernel=dict(origin, args=args), block=[threads, 1, 1], threads=threads,
                           dynamic_shared=shared)
            out.setdefault(json.dumps([variant["kernel"], r["types"]], sort_keys=True), variant)
    return list(out.values())


@pytest.mark.last
def test_every_kernel_the_simulated_tests_launched_compiles_for_a_gpu():
    exercise()
    assert not cuda_compile.RECORDER.errors, cuda_compile.RECORDER.errors
    launched = numbaconvs(cuda_compile.RECORDER.records())
    kernels = {r["qualname"] for r in launched}
    assert {"_forward_kernel.<locals>.forward", "_im2col", "_kernel.<locals>.gemm"} <= kernels, kernels
    records = with_variants(launched)
    assert len(records) > len(launched)
    report = report_for(records)
    failures = "\n\n".join(f"{f['kernel']}{f['signature']}:\n{f['error']}" for f in report["failures"])
    assert not report["failures"], f"{len(report['failures'])} of {len(records)} launches fail on a GPU:\n{failures}"
    assert report["compiled"] == len(records)
    assert len(report["resources"]) == len(records)


# --------------------------------------------------------------------------- the check can fail


def test_the_check_rejects_kernels_the_simulator_runs():
    out = cuda.device_array(4, np.float32)
    unfit.two_types[1, 4](out)  # neither raises here: the simulator judges neither
    unfit.too_much_shared[1, 4](out)
    records = [r for r in cuda_compile.RECORDER.records() if r["kernel"]["module"] == unfit.__name__]
    assert sorted(r["qualname"] for r in records) == ["too_much_shared", "two_types"]
    report = report_for(records)
    errors = {f["kernel"].rsplit(".", 1)[1]: f["error"] for f in report["failures"]}
    assert set(errors) == {"too_much_shared", "two_types"}, report
    assert "TypingError" in errors["two_types"] and "unify" in errors["two_types"].lower(), errors["two_types"]
    assert "shared" in errors["too_much_shared"], errors["too_much_shared"]


@pytest.mark.parametrize("registers, threads, fits", [
    (64, 1024, True), (65, 1024, False),  # 64 x 1024 is the whole register file
    (255, 256, True),  # 255 rounds up to 256 per thread per warp: 8 warps x 8192
    (128, 512, True), (129, 512, False),
    (254, 288, False),  # a ninth warp
])
def test_register_limit(registers, threads, fits):
    record = {"threads": threads, "block": [threads, 1, 1], "grid": [1, 1, 1], "dynamic_shared": 0}
    assert (not cuda_compile.launch_problems(record, registers, 0)) == fits


def test_shared_and_grid_limits():
    record = {"threads": 32, "block": [32, 1, 1], "grid": [1, 65535, 1], "dynamic_shared": 16 * 1024}
    assert not cuda_compile.launch_problems(record, 32, 32 * 1024)
    assert "shared" in " ".join(cuda_compile.launch_problems(record, 32, 32 * 1024 + 4))
    record["grid"] = [1, 65536, 1]
    assert "grid" in " ".join(cuda_compile.launch_problems(record, 32, 0))
