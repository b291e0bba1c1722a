"""Inference graphs: checked, optimized, planned, and safe to call from many threads.

``numbaconv.onnx.load`` reads one from an ONNX file; ``numbaconv.compile`` makes one from a
numbaconv ``nn`` model. Both give an :class:`InferenceModel`. The modules, in the order a
graph meets them: ``ops`` (what each node computes), ``graph`` (nodes and the checks that
order them), ``optimize`` (folding, fusion, weight packing), ``model`` (the run plan and the
executor), ``from_nn`` (``compile``).
"""

from .graph import Graph, GraphError, Node, TensorInfo
from .model import InferenceModel

__all__ = ["Graph", "GraphError", "Node", "TensorInfo", "InferenceModel"]
