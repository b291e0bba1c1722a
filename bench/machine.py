"""Facts about the machine a benchmark runs on: defined once, in numbaconv.benchmark.machine."""

from numbaconv.benchmark.machine import cpu_flags, cpu_model, load_average  # noqa: F401
