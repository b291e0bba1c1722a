"""Load-time rewrites of an inference graph: what can be computed once is computed once.

In order:

1. constant folding: a node whose inputs are all constants (Identity on a weight, a Reshape of
   one, a Constant's Unsqueeze) runs now and its outputs become constants;
2. Identity and inference-time Dropout disappear: their readers read the input instead;
3. batch normalization folds into the (transposed) convolution before it: with
   s = scale / sqrt(var + eps), ``W' = W * s`` per output channel and ``b' = (b - mean) * s + bias``
   (computed in float64);
4. an Add of a convolution's output and another value (a residual block's shortcut) becomes the
   convolution's residual input;
5. weights are laid out once as the kernels read them: convolution weights C-contiguous, a
   Gemm with constant B and C becomes a Linear whose weight already holds alpha and B's
   transposition, and whose bias holds beta * C;
6. a ReLU, ReLU6 / Clip with constant bounds, or leaky ReLU after a convolution becomes its
   epilogue (the kernel adds the bias and the residual and applies the activation in one pass),
   and after a Linear, one applied in place to its result (a node less).

A rewrite that merges a node into the one before it (3, 4, 6) happens only when the first node's
output is read by that node alone and is not an output of the graph; the merged node then
produces the second one's output name, so the graph's outputs keep their names.
"""

import numpy as np

from .graph import Node, _topological
from .ops import INTERNAL, OPS, OpError


def optimize(graph):
    fold_constants(graph)
    remove_identities(graph)
    fold_batch_norm(graph)
    fuse_residuals(graph)
    pack_weights(graph)
    fuse_activations(graph)
    return graph


def _run(node, inputs):
    function, _ = {**OPS, **INTERNAL}[node.op]
    return function(*inputs, **node.attrs)


def fold_constants(graph):
    kept = []
    for node in graph.nodes:
        names = [n for n in node.inputs if n]
        if names and all(n in graph.constants for n in names) and len(node.outputs) == 1:
            inputs = [graph.constants[n] if n else None for n in node.inputs]
            try:
                value = _run(node, inputs)
            except (ValueError, TypeError) as e:
                raise OpError(f"{node.describe()}: {e}") from None
            except MemoryError:
                raise OpError(f"{node.describe()}: its constant result does not fit in memory") from None
            graph.constants[node.outputs[0]] = np.array(value)
        else:
            kept.append(node)
    graph.nodes = kept


def _graph_outputs(graph):
    return {info.name for info in graph.outputs}


def _rename_input(graph, old, new):
    for node in graph.nodes:
        node.inputs = [new if n == old else n for n in node.inputs]


def remove_identities(graph):
    outputs = _graph_outputs(graph)
    producers = {name: node for node in graph.nodes for name in node.outputs}
    for node in list(graph.nodes):
        if node.op not in ("Identity", "Dropout") or len([o for o in node.outputs if o]) != 1:
            continue
        source, target = node.inputs[0], node.outputs[0]
        if target not in outputs:
            graph.nodes.remove(node)
            _rename_input(graph, target, source)
        elif source in producers and source not in outputs and len(graph.consumers()[source]) == 1:
            producers[source].outputs = [target if o == source else o for o in producers[source].outputs]
            graph.nodes.remove(node)


def _merge_pairs(graph, first_ops, second_ops, merge):
    """For each node of ``second_ops`` whose first input comes from a node of ``first_ops`` read
    by it alone, ``merge(first, second)``; when that returns True the second node is dropped
    and the first produces its output."""
    outputs = _graph_outputs(graph)
    producers = {name: node for node in graph.nodes for name in node.outputs}
    consumers = graph.consumers()
    for second in list(graph.nodes):
        if second.op not in second_ops:
            continue
        name = second.inputs[0]
        first = producers.get(name)
        if (first is None or first.op not in first_ops or name in outputs or len(consumers.get(name, ())) != 1
                or len(first.outputs) != 1):
            continue
        if merge(first, second):
            first.outputs = [second.outputs[0]]
            producers[second.outputs[0]] = first
            graph.nodes.remove(second)


def fold_batch_norm(graph):
    c = graph.constants

    def merge(conv, bn):
        weight = conv.inputs[1]
        bias = conv.inputs[2] if len(conv.inputs) > 2 else ""
        params = bn.inputs[1:5]
        if weight not in c or (bias and bias not in c) or not all(p in c for p in params):
            return False
        if bn.attrs.get("training_mode", 0) or "epilogue" in conv.attrs:
            return False
        w = c[weight]
        scale, shift, mean, var = (c[p].astype(np.float64) for p in params)
        s = scale / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        b = c[bias].astype(np.float64) if bias else np.zeros(len(s))
        if conv.op == "Conv":  # weight (C_out, C_in / groups, *kernel)
            folded = w.astype(np.float64) * s.reshape(-1, *([1] * (w.ndim - 1)))
        else:  # ConvTranspose, weight (C_in, C_out / groups, *kernel): output channel g * C_out/groups + j
            groups = conv.attrs.get("group", 1)
            w6 = w.astype(np.float64).reshape(groups, w.shape[0] // groups, *w.shape[1:])
            folded = (w6 * s.reshape(groups, 1, -1, *([1] * (w.ndim - 2)))).reshape(w.shape)
        new_w, new_b = f"{weight}/folded:{bn.outputs[0]}", f"{bn.outputs[0]}/bias"
        c[new_w] = folded.astype(w.dtype)
        c[new_b] = ((b - mean) * s + shift).astype(w.dtype)
        conv.inputs = [conv.inputs[0], new_w, new_b]
        return True

    _merge_pairs(graph, {"Conv", "ConvTranspose"}, {"BatchNormalization"}, merge)
    _drop_unused_constants(graph)


def fuse_residuals(graph):
    """Add(conv, shortcut) becomes the convolution's residual input, added in the kernel's last
    pass, before an activation fused after it (a residual block's conv2 + bn2 + add + relu)."""
    outputs = _graph_outputs(graph)
    producers = {name: node for node in graph.nodes for name in node.outputs}
    consumers = graph.consumers()
    for add in list(graph.nodes):
        if add.op != "Add" or add.inputs[0] == add.inputs[1]:
            continue
        for i in (0, 1):
            conv = producers.get(add.inputs[i])
            if (conv is None or conv.op != "Conv" or len(conv.inputs) > 3 or "epilogue" in conv.attrs
                    or add.inputs[i] in outputs or len(consumers.get(add.inputs[i], ())) != 1):
                continue
            bias = conv.inputs[2] if len(conv.inputs) > 2 else ""
            conv.inputs = [conv.inputs[0], conv.inputs[1], bias, add.inputs[1 - i]]
            conv.outputs = [add.outputs[0]]
            producers[add.outputs[0]] = conv
            graph.nodes.remove(add)
            break
    # the shortcut is now read by the convolution: it must run after whatever produces it
    graph.nodes = _topological(graph)


def _epilogue(node, constants):
    """(slope, lo, hi) of the activation ``node``, or None when it is not one the kernel fuses."""
    if node.op == "Relu":
        return (1.0, 0.0, np.inf)
    if node.op == "LeakyRelu":
        return (float(node.attrs.get("alpha", 0.01)), -np.inf, np.inf)
    if node.op == "Clip":
        bounds = [node.inputs[i] if len(node.inputs) > i else "" for i in (1, 2)]
        if any(b and (b not in constants or constants[b].size != 1) for b in bounds):
            return None
        lo, hi = (float(constants[b].reshape(-1)[0]) if b else d for b, d in zip(bounds, (-np.inf, np.inf)))
        return (1.0, lo, hi)
    return None


def fuse_activations(graph):
    def merge(conv, act):
        epilogue = _epilogue(act, graph.constants)
        if epilogue is None or "epilogue" in conv.attrs:
            return False
        conv.attrs["epilogue"] = epilogue
        return True

    _merge_pairs(graph, {"Conv", "Linear"}, {"Relu", "LeakyRelu", "Clip"}, merge)


def pack_weights(graph):
    c = graph.constants
    for i, node in enumerate(graph.nodes):
        if node.op == "Conv" and node.inputs[1] in c:
            c[node.inputs[1]] = np.ascontiguousarray(c[node.inputs[1]])
        if node.op == "Gemm" and node.inputs[1] in c and not node.attrs.get("transA", 0):
            bias = node.inputs[2] if len(node.inputs) > 2 else ""
            b = c[node.inputs[1]]
            n = b.shape[0 if node.attrs.get("transB", 0) else 1] if b.ndim == 2 else -1
            if n < 0 or (bias and (bias not in c or c[bias].shape not in ((), (1,), (n,), (1, 1), (1, n)))):
                continue
            w = b if node.attrs.get("transB", 0) else b.T
            weight = f"{node.inputs[1]}/linear:{node.outputs[0]}"
            c[weight] = np.ascontiguousarray(w * w.dtype.type(node.attrs.get("alpha", 1.0)))
            inputs = [node.inputs[0], weight]
            if bias:
                inputs.append(f"{bias}/linear:{node.outputs[0]}")
                c[inputs[-1]] = np.ascontiguousarray(
                    np.broadcast_to(c[bias].reshape(-1), (w.shape[0],)) * w.dtype.type(node.attrs.get("beta", 1.0)),
                    dtype=w.dtype)
            graph.nodes[i] = Node("Linear", inputs, node.outputs, {}, node.name, source="Gemm")
    _drop_unused_constants(graph)


def _drop_unused_constants(graph):
    read = {n for node in graph.nodes for n in node.inputs} | _graph_outputs(graph)
    for name in [n for n in graph.constants if n not in read]:
        del graph.constants[name]
