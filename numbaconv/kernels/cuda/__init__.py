"""CUDA kernels, twins of ``kernels/cpu``: ``conv_direct`` (a block per tile of outputs, its
input tile in shared memory) and ``conv_im2col`` (an unfolding kernel plus the tiled GEMM of
``gemm``). Both expose ``forward``, ``grad_input`` and ``grad_weight`` with the CPU signatures,
on C-contiguous 5-D device arrays. Imported only when an op is called on GPU arrays."""

from . import conv_direct, conv_im2col

ALGORITHMS = {"direct": conv_direct, "im2col": conv_im2col}
