"""Compile, for a real GPU, every CUDA kernel the simulator ran.

Numba's CUDA simulator runs a kernel's Python body as Python: it types nothing, so a kernel
that Numba cannot compile (a variable that takes two types, an unsupported call, a float64
literal that makes a float32 kernel mixed) passes every simulated test and fails on the first
real GPU. Nor does it know launch limits: registers per thread times threads per block, shared
memory per block. This module closes that gap on a machine with no GPU, in two halves:

* In the simulated test process, ``Recorder.install()`` notes every kernel launch: which kernel
  (a module-level ``@cuda.jit`` function, or what a kernel factory such as
  ``conv_direct._forward_kernel(dtype, KB, staged)`` made from which arguments), the Numba types
  of its arguments, and the largest block, grid and dynamic shared memory it was launched with.
* ``python tests/cuda_compile.py RECORDS.json`` then runs with the simulator off: it rebuilds
  each kernel the same way (importing the module, calling the same factory with the same
  arguments), compiles it to PTX for compute capability 9.0 with NVVM, the compiler a real GPU
  run uses, has ``ptxas`` assemble the PTX and report registers, shared memory and spills, and
  checks those against the launches recorded. It prints one JSON object: ``compiled``,
  ``failures`` and ``resources``, or ``missing`` when the compiler is not installed (``numba-cuda[cu13]`` brings
  NVVM; ``cuda-toolkit[nvcc]`` brings ptxas).

The launch check covers what the tests launched (small shapes); kernels whose block size grows
with the problem are checked at the sizes the tests reached. Records are JSON (no pickle).
"""

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

#: The GPU the PTX is built for: Hopper (H100/H200), the GPUs the real-GPU runs use.
CC = (9, 0)

#: Launch limits of every GPU from compute capability 7.0 to 9.0.
MAX_THREADS = 1024
MAX_GRID_YZ = 65535
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256  # a warp's registers are allocated in units of 256
STATIC_SHARED = 48 * 1024  # what a block gets without the opt-in carve-out, which numbaconv never asks for

KERNEL_PACKAGE = "numbaconv.kernels.cuda"


# --------------------------------------------------------------------------- recording (simulator)


def _arg_type(a):
    """A launch argument's type as JSON: what Numba's typeof gives for the same argument on a GPU."""
    a = getattr(a, "_ary", a)  # the simulator's device arrays wrap a NumPy array
    if isinstance(a, np.ndarray):
        layout = "C" if a.flags.c_contiguous else "F" if a.flags.f_contiguous else "A"
        return {"array": a.dtype.str, "ndim": a.ndim, "layout": layout}
    if isinstance(a, (bool, np.bool_)):
        return "boolean"
    if isinstance(a, int):
        return "int64"
    if isinstance(a, float):
        return "float64"
    if isinstance(a, np.generic):
        return a.dtype.str
    if isinstance(a, tuple):
        return {"tuple": [_arg_type(v) for v in a]}
    raise TypeError(f"cannot record a kernel argument of type {type(a).__name__}")


def _factory_arg(a):
    if isinstance(a, (bool, int, float, str)) or a is None:
        return a
    if isinstance(a, tuple):
        return {"tuple": [_factory_arg(v) for v in a]}
    try:
        return {"dtype": np.dtype(a).str}
    except TypeError:
        raise TypeError(f"cannot record a kernel factory argument of type {type(a).__name__}") from None


class Recorder:
    """Notes the simulator's kernel launches; ``records()`` gives them as JSON-ready dicts."""

    def __init__(self):
        self.made = {}  # id(kernel) -> (module, factory, args), for kernels a factory made
        self.launches = {}  # (kernel, argument types) -> record
        self.errors = []
        self._kernels = []  # keeps the recorded kernels alive, so their ids stay theirs

    def install(self, package=KERNEL_PACKAGE):
        """Wrap the simulator's launch, and every kernel factory of ``package``'s modules (a
        ``functools.cache`` function or a ``per_dtype`` one) so that what it returns is known."""
        import pkgutil

        from numba.cuda.simulator import kernel as sim

        def is_factory(obj):
            return callable(obj) and (hasattr(obj, "cache_info")
                                      or getattr(obj, "__qualname__", "").startswith("per_dtype."))

        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{package}.{info.name}")
            for name, obj in list(vars(module).items()):
                if is_factory(obj):
                    setattr(module, name, self._factory(module.__name__, name, obj))
        launch = sim.FakeCUDAKernel.__call__

        def call(kernel, *args):
            if not kernel._device and not sim._kernel_context:  # a launch, not a device function's call
                self._launch(kernel, args)
            return launch(kernel, *args)

        sim.FakeCUDAKernel.__call__ = call
        return self

    def _factory(self, module, name, make):
        from numba.cuda.simulator.kernel import FakeCUDAKernel

        def factory(*args):
            made = make(*args)
            if isinstance(made, FakeCUDAKernel) and id(made) not in self.made:
                try:
                    self.made[id(made)] = (module, name, [_factory_arg(a) for a in args])
                    self._kernels.append(made)
                except TypeError as e:
                    self.errors.append(f"{module}.{name}: {e}")
            return made

        factory.__wrapped__ = make
        for attr in ("cache_info", "cache_clear"):
            if hasattr(make, attr):
                setattr(factory, attr, getattr(make, attr))
        return factory

    def _launch(self, kernel, args):
        fn = kernel.fn
        if id(kernel) in self.made:
            module, factory, fargs = self.made[id(kernel)]
            origin = {"module": module, "factory": factory, "args": fargs}
        elif "<locals>" not in fn.__qualname__:
            origin = {"module": fn.__module__, "name": fn.__qualname__}
        else:
            self.errors.append(f"{fn.__module__}.{fn.__qualname__}: made by no factory the recorder knows")
            return
        try:
            types = [_arg_type(a) for a in args]
        except TypeError as e:
            self.errors.append(f"{fn.__module__}.{fn.__qualname__}: {e}")
            return
        key = json.dumps([origin, types], sort_keys=True)
        record = self.launches.setdefault(key, {
            "kernel": origin, "types": types, "qualname": fn.__qualname__,
            "block": [0, 0, 0], "grid": [0, 0, 0], "threads": 0, "dynamic_shared": 0})
        block, grid = kernel.block_dim, kernel.grid_dim
        record["block"] = [max(a, int(b)) for a, b in zip(record["block"], block)]
        record["grid"] = [max(a, int(b)) for a, b in zip(record["grid"], grid)]
        record["threads"] = max(record["threads"], int(block[0] * block[1] * block[2]))
        record["dynamic_shared"] = max(record["dynamic_shared"], int(kernel.dynshared_size))

    def records(self):
        return list(self.launches.values())


RECORDER = Recorder()


def run_compiler(records, timeout=900, processes=None):
    """Compile ``records`` with the simulator off, in fresh processes (one per core, records dealt
    round-robin: NVVM is single-threaded and the check is the test run's longest); their merged
    JSON report."""
    processes = max(1, min(processes or os.cpu_count() or 1, len(records)))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING="1")
    with tempfile.TemporaryDirectory() as tmp:
        running = []
        for i in range(processes):
            path = os.path.join(tmp, f"records{i}.json")
            with open(path, "w") as f:
                json.dump(records[i::processes], f)
            running.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), path], env=env, text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        reports = []
        for process in running:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                for p in running:
                    p.kill()
                raise
            if process.returncode:
                raise RuntimeError(f"the compiler process failed ({process.returncode}):\n{stderr[-4000:]}")
            reports.append(json.loads(stdout.strip().splitlines()[-1]))
    missing = [r for r in reports if "missing" in r]
    if missing:
        return missing[0]
    return {key: sum((r[key] for r in reports), 0 if key == "compiled" else [])
            for key in ("compiled", "failures", "resources")}


# --------------------------------------------------------------------------- compiling (no simulator)


def _numba_type(t):
    import numba
    from numba import types

    if isinstance(t, str):
        return types.boolean if t == "boolean" else types.int64 if t == "int64" else numba.from_dtype(np.dtype(t))
    if "array" in t:
        return types.Array(numba.from_dtype(np.dtype(t["array"])), t["ndim"], t["layout"])
    return types.BaseTuple.from_types([_numba_type(v) for v in t["tuple"]])


def _python_arg(a):
    if isinstance(a, dict):
        return tuple(_python_arg(v) for v in a["tuple"]) if "tuple" in a else np.dtype(a["dtype"])
    return a


def _kernel(origin):
    module = importlib.import_module(origin["module"])
    if "factory" in origin:
        make = getattr(module, origin["factory"])
        return make(*[_python_arg(a) for a in origin["args"]])
    kernel = module
    for part in origin["name"].split("."):
        kernel = getattr(kernel, part)
    return kernel


def _resources(ptx, ptxas):
    """(registers, static shared bytes, spill bytes) of the PTX's kernel, from ``ptxas -v``."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        done = subprocess.run([ptxas, f"-arch=sm_{CC[0]}{CC[1]}", "-v", f.name, "-o", os.devnull],
                              capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if done.returncode:
        raise RuntimeError(f"ptxas: {done.stderr.strip()}")
    info = done.stderr

    def number(pattern):
        m = re.search(pattern, info)
        return int(m.group(1)) if m else 0

    return number(r"Used (\d+) registers"), number(r"(\d+) bytes smem"), number(r"(\d+) bytes spill stores")


def launch_problems(record, registers, static_shared):
    """What in the recorded launches a real GPU would refuse, in words."""
    problems = []
    threads, block, grid = record["threads"], record["block"], record["grid"]
    if threads > MAX_THREADS or block[2] > 64:
        problems.append(f"block {tuple(block)} exceeds {MAX_THREADS} threads (or 64 in z)")
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        problems.append(f"grid {tuple(grid)} exceeds {MAX_GRID_YZ} in y or z")
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    if warps * per_warp > REGISTERS_PER_SM:
        problems.append(f"{registers} registers x {threads} threads need {warps * per_warp} "
                        f"of the SM's {REGISTERS_PER_SM}")
    shared = static_shared + record["dynamic_shared"]
    if shared > STATIC_SHARED:
        problems.append(f"{shared} bytes of shared memory ({static_shared} static + "
                        f"{record['dynamic_shared']} dynamic) exceed {STATIC_SHARED}")
    return problems


def _missing_library(e):
    """Whether ``e`` says the compiler's libraries (NVVM, NVRTC) are not installed, rather than
    that a kernel does not compile."""
    text = str(e)
    return (type(e).__name__ in ("DynamicLibNotFoundError", "NvvmSupportError")
            or "Failure finding" in text or "libNVVM cannot be found" in text)


def compile_records(records):
    from numba import cuda

    try:
        from cuda.pathfinder import find_nvidia_binary_utility
        ptxas = find_nvidia_binary_utility("ptxas")
    except ImportError:  # numba-cuda without NVIDIA's path finder: no wheels to look in
        ptxas = None
    if ptxas is None:
        return {"missing": "ptxas (the cuda-toolkit[nvcc] wheel)"}
    failures, compiled, resources = [], 0, []
    for record in records:
        name = f"{record['kernel']['module']}.{record['qualname']}"
        sig = tuple(_numba_type(t) for t in record["types"])
        try:
            kernel = _kernel(record["kernel"])
            options = getattr(kernel, "targetoptions", {})
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, device=False, cc=CC, fastmath=bool(options.get("fastmath")))
        except Exception as e:
            if _missing_library(e):
                return {"missing": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
            failures.append({"kernel": name, "signature": str(sig), "error": f"{type(e).__name__}: {e}"[:3000]})
            continue
        compiled += 1
        try:
            registers, shared, spills = _resources(ptx, ptxas)
        except RuntimeError as e:
            failures.append({"kernel": name, "signature": str(sig), "error": str(e)[:3000]})
            continue
        resources.append({"kernel": name, "registers": registers, "static_shared": shared, "spills": spills,
                          "threads": record["threads"]})
        problems = launch_problems(record, registers, shared)
        if problems:
            failures.append({"kernel": name, "signature": str(sig), "error": "; ".join(problems)})
    return {"compiled": compiled, "failures": failures, "resources": resources}


def main(argv):
    try:
        from numba import cuda
        cuda.compile_ptx  # noqa: B018 (the real compiler, not the simulator's)
    except (ImportError, AttributeError) as e:
        print(json.dumps({"missing": f"numba-cuda: {e}"}))
        return 0
    with open(argv[1]) as f:
        records = json.load(f)
    print(json.dumps(compile_records(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
