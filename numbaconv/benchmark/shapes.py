"""Named convolution shapes from well-known networks, and the arithmetic they cost.

Each suite is a network (or a family of layers) at batch 1 and at a larger batch; a shape's
name says both, e.g. ``resnet18-l2-down-b8``. ``SHAPES`` holds every shape of every suite;
``SUITES[name]`` the names of one suite; ``"all"`` is every network suite, leaving out ``"tiny"``
(a handful of small shapes, seconds to run, for smoke tests) and ``"rules"`` (the shapes
``bench/algorithms.py`` measures for ``choose_algorithm``'s rules).
"""

import math
from typing import NamedTuple

DIRECTIONS = ("forward", "backward")


class ConvShape(NamedTuple):
    """A convolution layer: input (n, c, *size), weight (k, c // groups, kernel, ...).

    ``kernel``, ``stride`` and ``padding`` apply to every spatial dimension; ``len(size)`` is
    the dimensionality (1, 2 or 3).
    """

    n: int
    c: int
    size: tuple
    k: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    @property
    def ndim(self):
        return len(self.size)

    @property
    def out_size(self):
        return tuple((s + 2 * self.padding - self.kernel) // self.stride + 1 for s in self.size)

    @property
    def x_shape(self):
        return (self.n, self.c, *self.size)

    @property
    def weight_shape(self):
        return (self.k, self.c // self.groups, *(self.kernel,) * self.ndim)

    @property
    def out_shape(self):
        return (self.n, self.k, *self.out_size)

    def flops(self, direction="forward"):
        """Floating-point operations, counting a multiply-add as two.

        Forward is 2*N*K*(C/groups)*taps*out_positions. Backward means grad input plus grad
        weight (no grad bias), each the same count as forward, so twice forward.
        """
        forward = 2 * self.n * self.k * (self.c // self.groups) * self.kernel**self.ndim * math.prod(self.out_size)
        if direction == "forward":
            return forward
        if direction == "backward":
            return 2 * forward
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")

    def describe(self):
        """``(N, C, HxW) -> K, kxk/s, p, g``: the shape in one short line."""
        size = "x".join(map(str, self.size))
        groups = f", groups {self.groups}" if self.groups > 1 else ""
        return (f"({self.n}, {self.c}, {size}) -> {self.k}, {'x'.join([str(self.kernel)] * self.ndim)}"
                f"/{self.stride}, pad {self.padding}{groups}")


def flops(shape, direction="forward"):
    """``shape.flops(direction)``: the same count, as a function."""
    return shape.flops(direction)


def _layers(net, batches, layers):
    """{f"{net}-{layer}-b{n}": ConvShape} for each batch size and layer (c, size, k, kernel,
    stride, padding[, groups]); size is an int for a square image, else a tuple (one entry per
    spatial dimension)."""
    shapes = {}
    for n in batches:
        for layer, (c, size, k, kernel, stride, padding, *groups) in layers.items():
            size = size if isinstance(size, tuple) else (size, size)
            shapes[f"{net}-{layer}-b{n}"] = ConvShape(n, c, size, k, kernel, stride, padding, *groups)
    return shapes


# name: (batches, {layer: (C, size, K, kernel, stride, padding[, groups])})
_NETWORKS = {
    # LeNet-5 on 32x32 images
    "lenet": ((1, 64), {
        "c1": (1, 32, 6, 5, 1, 0),
        "c2": (6, 14, 16, 5, 1, 0),
    }),
    # AlexNet as in numbaconv.models.alexnet (224x224 input, conv1 padding 2)
    "alexnet": ((1, 8), {
        "c1": (3, 224, 96, 11, 4, 2),
        "c2": (96, 27, 256, 5, 1, 2),
        "c3": (256, 13, 384, 3, 1, 1),
        "c4": (384, 13, 384, 3, 1, 1),
        "c5": (384, 13, 256, 3, 1, 1),
    }),
    # VGG-16: its nine distinct 3x3 convolutions (13 layers, 224x224 input)
    "vgg16": ((1, 8), {
        "c1_1": (3, 224, 64, 3, 1, 1),
        "c1_2": (64, 224, 64, 3, 1, 1),
        "c2_1": (64, 112, 128, 3, 1, 1),
        "c2_2": (128, 112, 128, 3, 1, 1),
        "c3_1": (128, 56, 256, 3, 1, 1),
        "c3_2": (256, 56, 256, 3, 1, 1),
        "c4_1": (256, 28, 512, 3, 1, 1),
        "c4_2": (512, 28, 512, 3, 1, 1),
        "c5": (512, 14, 512, 3, 1, 1),
    }),
    # ResNet-18: every distinct convolution (stem, the blocks' 3x3s, the 1x1 shortcut projections)
    "resnet18": ((1, 8), {
        "stem": (3, 224, 64, 7, 2, 3),
        "l1": (64, 56, 64, 3, 1, 1),
        "l2-first": (64, 56, 128, 3, 2, 1),
        "l2": (128, 28, 128, 3, 1, 1),
        "l2-down": (64, 56, 128, 1, 2, 0),
        "l3-first": (128, 28, 256, 3, 2, 1),
        "l3": (256, 14, 256, 3, 1, 1),
        "l3-down": (128, 28, 256, 1, 2, 0),
        "l4-first": (256, 14, 512, 3, 2, 1),
        "l4": (512, 7, 512, 3, 1, 1),
        "l4-down": (256, 14, 512, 1, 2, 0),
    }),
    # MobileNet-style depthwise 3x3 (groups == channels), stride 1 and 2
    "depthwise": ((1, 8), {
        "32x112": (32, 112, 32, 3, 1, 1, 32),
        "64x112-s2": (64, 112, 64, 3, 2, 1, 64),
        "128x56": (128, 56, 128, 3, 1, 1, 128),
        "256x28": (256, 28, 256, 3, 1, 1, 256),
        "512x14": (512, 14, 512, 3, 1, 1, 512),
        "1024x7": (1024, 7, 1024, 3, 1, 1, 1024),
    }),
    # 1x1 (pointwise) convolutions: MobileNet's after each depthwise layer, a ResNet bottleneck's
    "pointwise": ((1, 8), {
        "32-64x112": (32, 112, 64, 1, 1, 0),
        "128x56": (128, 56, 128, 1, 1, 0),
        "256x28": (256, 28, 256, 1, 1, 0),
        "256-512x28": (256, 28, 512, 1, 1, 0),
        "512x14": (512, 14, 512, 1, 1, 0),
        "1024x7": (1024, 7, 1024, 1, 1, 0),
    }),
    # conv1d on one second of 16 kHz audio
    "conv1d": ((1, 8), {
        "audio-k9": (64, (16000,), 64, 9, 1, 4),
        "audio-in-k9": (1, (16000,), 64, 9, 1, 4),
    }),
    # conv3d on short video clips: 16 frames of 56x56
    "conv3d": ((1, 2), {
        "video-k3": (32, (16, 56, 56), 32, 3, 1, 1),
    }),
    # small shapes that run in seconds, every dimensionality and a depthwise one
    "tiny": ((1, 2), {
        "2d": (3, 12, 4, 3, 1, 1),
        "2d-s2": (4, 9, 6, 3, 2, 0),
        "depthwise": (4, 10, 4, 3, 1, 1, 4),
        "1d": (3, (20,), 5, 3, 1, 1),
        "3d": (2, (4, 5, 5), 3, 3, 1, 1),
    }),
}

# The shapes behind choose_algorithm's rules (bench/algorithms.py): where direct, im2col and
# Winograd's tiles trade places, by channels per group, stride, batch and (Winograd's) tiles.
# name: (N, C, H=W or the spatial size, K, kernel, stride, padding, groups)
_RULES = {
    "lenet-c1": (64, 1, 32, 6, 5, 1, 0, 1),
    "lenet-c2": (64, 6, 14, 16, 5, 1, 0, 1),
    "lenet-c2-b1": (1, 6, 14, 16, 5, 1, 0, 1),
    "cifar-3-16-5x5": (64, 3, 32, 16, 5, 1, 2, 1),
    "cifar-16-20-5x5": (64, 16, 16, 20, 5, 1, 2, 1),
    "small-16-16": (8, 16, 32, 16, 3, 1, 1, 1),
    "small-32-32": (8, 32, 32, 32, 3, 1, 1, 1),
    "resnet-l1": (8, 64, 56, 64, 3, 1, 1, 1),
    "resnet-l1-b1": (1, 64, 56, 64, 3, 1, 1, 1),
    "resnet-l2-b1": (1, 128, 28, 128, 3, 1, 1, 1),
    "resnet-l3": (8, 256, 14, 256, 3, 1, 1, 1),
    "resnet-l3-b1": (1, 256, 14, 256, 3, 1, 1, 1),
    "resnet-l4": (8, 512, 7, 512, 3, 1, 1, 1),
    "vgg": (1, 128, 112, 128, 3, 1, 1, 1),
    "stride2-64-128": (8, 64, 56, 128, 3, 2, 1, 1),
    "stride2-64-128-b1": (1, 64, 56, 128, 3, 2, 1, 1),
    "stride2-256-512-b1": (1, 256, 14, 512, 3, 2, 1, 1),
    "resnet-stem-b1": (1, 3, 224, 64, 7, 2, 3, 1),
    "vgg-512-14-b1": (1, 512, 14, 512, 3, 1, 1, 1),
    "alexnet-c3-b1": (1, 192, 13, 384, 3, 1, 1, 1),
    "pointwise-256-14-b1": (1, 256, 14, 256, 1, 1, 0, 1),
    "alexnet-c1": (8, 3, 227, 96, 11, 4, 0, 1),
    "depthwise-3x3": (8, 64, 56, 64, 3, 1, 1, 64),
    "depthwise-3x3-s2": (8, 32, 112, 32, 3, 2, 1, 32),
    "groups-cg4": (8, 64, 28, 64, 3, 1, 1, 16),
    "groups-cg8": (8, 64, 28, 64, 3, 1, 1, 8),
    "groups-cg16": (8, 64, 28, 64, 3, 1, 1, 4),
    "vgg-c1_1": (1, 3, 224, 64, 3, 1, 1, 1),
    "audio-64-64": (1, 64, (16000,), 64, 9, 1, 4, 1),
    "audio-64-64-b8": (8, 64, (16000,), 64, 9, 1, 4, 1),
    "audio-8-64": (1, 8, (16000,), 64, 9, 1, 4, 1),
    "audio-128-128": (1, 128, (4000,), 128, 9, 1, 4, 1),
    "video-32-32": (1, 32, (16, 56, 56), 32, 3, 1, 1, 1),
}

SUITES = {}
SHAPES = {}
for _net, (_batches, _layer_table) in _NETWORKS.items():
    _shapes = _layers(_net, _batches, _layer_table)
    SUITES[_net] = tuple(_shapes)
    SHAPES.update(_shapes)
SUITES["all"] = tuple(name for net, names in SUITES.items() if net != "tiny" for name in names)
_shapes = {f"rules-{name}": ConvShape(n, c, h if isinstance(h, tuple) else (h, h), k, kernel, s, p, g)
           for name, (n, c, h, k, kernel, s, p, g) in _RULES.items()}
SUITES["rules"] = tuple(_shapes)
SHAPES.update(_shapes)


def suite(name):
    """{shape name: ConvShape} of suite ``name``, else ValueError listing the suites."""
    if name not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(map(repr, SUITES))}, got {name!r}")
    return {shape: SHAPES[shape] for shape in SUITES[name]}
