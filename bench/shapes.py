"""Named conv2d shapes from well-known networks, and the arithmetic they cost."""

from typing import NamedTuple


class Shape(NamedTuple):
    """A square conv2d layer: input (n, c, size, size), weight (k, c // groups, kernel, kernel)."""

    n: int
    c: int
    size: int
    k: int
    kernel: int
    stride: int
    padding: int
    groups: int = 1

    @property
    def out_size(self):
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def x_shape(self):
        return (self.n, self.c, self.size, self.size)

    @property
    def weight_shape(self):
        return (self.k, self.c // self.groups, self.kernel, self.kernel)

    @property
    def out_shape(self):
        return (self.n, self.k, self.out_size, self.out_size)


SHAPES = {
    "lenet-c1": Shape(64, 1, 32, 6, 5, 1, 0),
    "lenet-c2": Shape(64, 6, 14, 16, 5, 1, 0),
    "alexnet-c1": Shape(8, 3, 227, 96, 11, 4, 0),
    "vgg-3x3": Shape(1, 128, 112, 128, 3, 1, 1),
    "resnet-layer1": Shape(8, 64, 56, 64, 3, 1, 1),
    "resnet-1x1": Shape(8, 256, 28, 512, 1, 1, 0),
}

DIRECTIONS = ("forward", "backward")


def flops(shape, direction="forward"):
    """Floating-point operations, counting a multiply-add as two.

    Forward is 2*N*K*(C/groups)*kh*kw*Ho*Wo. Backward means grad input plus grad weight,
    each the same count as forward, so twice forward.
    """
    forward = (
        2 * shape.n * shape.k * (shape.c // shape.groups) * shape.kernel**2 * shape.out_size**2
    )
    if direction == "forward":
        return forward
    if direction == "backward":
        return 2 * forward
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
