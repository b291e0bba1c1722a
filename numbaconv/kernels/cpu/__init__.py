"""CPU kernels: ``conv_direct`` (loops over output planes) and ``conv_im2col`` (column buffer
plus BLAS GEMM). Both expose ``forward``, ``grad_input`` and ``grad_weight`` with one signature."""

from . import conv_direct, conv_im2col

ALGORITHMS = {"direct": conv_direct, "im2col": conv_im2col}
