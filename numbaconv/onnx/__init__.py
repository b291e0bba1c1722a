"""ONNX models in numbaconv: ``numbaconv.onnx.load(path_or_bytes)`` returns an InferenceModel.

The ``onnx`` package (the ``onnx`` extra) is the protobuf parser and nothing else: it is
imported when a model is loaded, never by ``import numbaconv``, and nothing from it runs the
model. See ``reader.py`` for what is accepted and refused.
"""

from .reader import SUPPORTED_OPS, load, read_graph

__all__ = ["load", "read_graph", "SUPPORTED_OPS"]
