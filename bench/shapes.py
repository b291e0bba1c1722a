"""The named convolution shapes and their FLOP counts: defined once, in numbaconv.benchmark.shapes
(so that ``numbaconv bench`` and the notebooks use the same ones), and re-exported here."""

from numbaconv.benchmark.shapes import DIRECTIONS, SHAPES, SUITES, ConvShape, flops, suite  # noqa: F401
