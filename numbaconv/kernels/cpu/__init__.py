"""CPU kernels: ``conv_direct`` (loops over output planes), ``conv_im2col`` (column buffer
plus BLAS GEMM) and ``conv_winograd`` (Winograd's F(4x4, 3x3) tiles plus BLAS GEMMs, for 3x3
convolutions at unit stride). Each exposes ``forward``, ``grad_input`` and ``grad_weight`` with
one signature. ``conv_blocked`` (vectors along output channels, the algorithm "blocked") runs
forward passes of one group only."""

from . import conv_blocked, conv_direct, conv_im2col, conv_winograd

#: The algorithms that run every direction of a convolution (Winograd's where it applies).
ALGORITHMS = {"direct": conv_direct, "im2col": conv_im2col, "winograd": conv_winograd}

#: Every algorithm a call may name or "auto" may choose: those and the blocked loops, forward
#: passes only.
ALL_ALGORITHMS = {**ALGORITHMS, "blocked": conv_blocked.PACKING_EACH_CALL}


def candidates(geom, direction):
    """The algorithms that run ``direction`` of this convolution by their own method (what the
    autotune mode times): every one but Winograd's outside the 3x3 stride-1 convolutions, and
    for the weight gradient, which it leaves to im2col; the blocked loops for a forward pass
    with one group (``conv_blocked.applies``)."""
    return {name: module for name, module in ALL_ALGORITHMS.items()
            if (name != "winograd" or conv_winograd.applies(geom, direction))
            and (name != "blocked" or conv_blocked.applies(geom, direction))}
