"""An inference graph: nodes of ``ops.OPS`` over named values, and the checks that make it runnable.

Values are named by strings, as in ONNX: the graph's inputs, its constants (weights) and every
node's outputs. Each name is produced once; a node reads names produced before it. ``check``
orders the nodes and refuses what could not run: a name read but never produced (a dangling
input), a name produced twice, a cycle, an output nobody produces, an op or arity numbaconv
does not know.
"""

from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np

from .ops import ARITY, INTERNAL, OPS

#: A graph input or output: its name, shape (None for a size fixed only at run time, such as the
#: batch) and dtype.
TensorInfo = namedtuple("TensorInfo", ["name", "shape", "dtype"])


class GraphError(ValueError):
    """A graph that cannot run; the message names the node and the value at fault."""


@dataclass
class Node:
    op: str
    inputs: list  # value names; "" for an omitted optional input
    outputs: list
    attrs: dict = field(default_factory=dict)
    name: str = ""
    source: str = ""  # the op the file gave, when the optimizer replaced it (a Gemm run as Linear)

    def describe(self):
        op = self.source or self.op
        return f"node {self.name!r} ({op})" if self.name else f"a {op} node"


@dataclass
class Graph:
    nodes: list
    inputs: list  # TensorInfo
    outputs: list  # TensorInfo (shape and dtype may be None: unknown until the graph runs)
    constants: dict  # name -> ndarray

    def consumers(self):
        """name -> the nodes that read it."""
        readers = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    readers.setdefault(name, []).append(node)
        return readers


def check(graph):
    """Order ``graph.nodes`` so each node comes after what it reads, or raise GraphError."""
    known = {**OPS, **INTERNAL}
    produced = {}
    for info in graph.inputs:
        if info.name in graph.constants:
            raise GraphError(f"graph input {info.name!r} is also a constant")
        produced[info.name] = "the graph's inputs"
    for name, value in graph.constants.items():
        if not isinstance(value, np.ndarray):
            raise GraphError(f"constant {name!r} must be a numpy.ndarray, got {type(value).__name__}")
        produced[name] = "the graph's constants"
    for node in graph.nodes:
        if node.op not in known:
            raise GraphError(f"{node.describe()}: unsupported op {node.op!r}")
        least, most = ARITY.get(node.op, (1, 1))
        given = len(node.inputs)
        if given < least or (most is not None and given > most) or (least and not node.inputs[0]):
            raise GraphError(f"{node.describe()}: takes {least} to {most if most is not None else 'any number of'} "
                             f"inputs, got {given}")
        for name in node.outputs:
            if not name:
                continue
            if name in produced:
                raise GraphError(f"{node.describe()}: output {name!r} is already produced by {produced[name]}")
            produced[name] = node.describe()
    for node in graph.nodes:
        for name in node.inputs:
            if name and name not in produced:
                raise GraphError(f"{node.describe()}: input {name!r} is not produced by any node, graph input "
                                 "or constant (a dangling input)")
    for info in graph.outputs:
        if info.name not in produced:
            raise GraphError(f"graph output {info.name!r} is not produced by any node, input or constant")
    graph.nodes = _topological(graph)
    return graph


def _topological(graph):
    """Kahn's order; what is left over when no node is ready lies on a cycle."""
    ready_names = {info.name for info in graph.inputs} | set(graph.constants)
    waiting = {id(node): sum(1 for n in set(node.inputs) if n and n not in ready_names) for node in graph.nodes}
    readers = {}
    for node in graph.nodes:
        for name in set(node.inputs):
            if name and name not in ready_names:
                readers.setdefault(name, []).append(node)
    queue = [node for node in graph.nodes if waiting[id(node)] == 0]
    order = []
    while queue:
        node = queue.pop(0)
        order.append(node)
        for name in node.outputs:
            for reader in readers.get(name, ()):
                waiting[id(reader)] -= 1
                if waiting[id(reader)] == 0:
                    queue.append(reader)
    if len(order) != len(graph.nodes):
        stuck = [node.describe() for node in graph.nodes if waiting[id(node)] > 0]
        raise GraphError(f"the graph has a cycle through {', '.join(stuck[:5])}"
                         + (f" and {len(stuck) - 5} more" if len(stuck) > 5 else ""))
    return order
