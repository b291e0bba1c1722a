"""Benchmarks of numbaconv's convolutions next to PyTorch: the library behind ``numbaconv bench``.

    import numbaconv.benchmark as nb
    rows = nb.run(suite="lenet", quick=True)        # a list of dicts, one per shape x direction x algorithm
    print("\n".join(nb.table(rows) + nb.summary_lines(rows)))
    nb.gemm_peak()                                  # this machine's float32 GEMM GFLOP/s

``SUITES`` names the shape sets (LeNet, AlexNet, VGG-16, ResNet-18, depthwise, pointwise,
conv1d, conv3d, each at batch 1 and a larger batch; "all"; "tiny" for smoke tests), ``SHAPES``
holds every shape. See :func:`run` for what a row holds and how it is measured.
"""

from .compile_times import compile_times
from .machine import machine_info
from .report import plot, summary, summary_lines, table, targets
from .runner import gemm_peak, run
from .shapes import DIRECTIONS, SHAPES, SUITES, ConvShape, suite

__all__ = ["run", "gemm_peak", "table", "summary", "summary_lines", "targets", "plot", "compile_times",
           "machine_info", "SUITES", "SHAPES", "DIRECTIONS", "ConvShape", "suite"]
