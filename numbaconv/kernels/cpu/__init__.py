"""CPU kernels: ``conv_direct`` (loops over output planes), ``conv_im2col`` (column buffer
plus BLAS GEMM) and ``conv_winograd`` (Winograd's F(4x4, 3x3) tiles plus BLAS GEMMs, for 3x3
convolutions at unit stride). Each exposes ``forward``, ``grad_input`` and ``grad_weight`` with
one signature."""

from . import conv_direct, conv_im2col, conv_winograd

ALGORITHMS = {"direct": conv_direct, "im2col": conv_im2col, "winograd": conv_winograd}


def candidates(geom, direction):
    """The algorithms that run ``direction`` of this convolution by their own method (what the
    autotune mode times): every one but Winograd's outside the 3x3 stride-1 convolutions, and
    for the weight gradient, which it leaves to im2col."""
    return {name: module for name, module in ALGORITHMS.items()
            if name != "winograd" or conv_winograd.applies(geom, direction)}
