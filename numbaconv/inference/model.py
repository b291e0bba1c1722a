"""InferenceModel: a checked, optimized graph and the plan that runs it.

The plan is made once, at load time. The nodes run in a fixed order; each value lives in a
slot, and a slot is emptied right after its last reader has run, so an activation's memory
returns to the allocator as soon as nothing needs it and the live set stays near the largest
pair of activations (a residual block's shortcut adds a third). An element-wise op whose first
input dies at that op writes its result over that input instead of allocating (ReLU after a
residual addition, the addition itself). Views are accounted for: Reshape, Flatten, Squeeze and
Unsqueeze return views of their input, so a buffer counts as dead only when every value that
shares it is. A Conv node's constant weight is held by its ``ops.ConvWeight`` (in the graph's
constants too, in place of the array, when no other node reads it), which trades it for the
blocked loops' packed layout at the first call that runs them: a weight is held once, in one
layout, unless calls of different batch sizes want it both ways.

A call owns all of its state (the slot list), and the kernels keep their scratch per thread, so
one model serves many threads at once. Before the model is returned it runs once on a batch of
one (when the inputs' other sizes are known): every shape is checked then, and a model that
cannot run fails at load time, with the node that cannot run named.
"""

import numpy as np

from .graph import GraphError, TensorInfo, check
from .ops import IN_PLACE, INTERNAL, OPS, ConvWeight
from .optimize import optimize

#: The load-time run is skipped for inputs larger than this (elements of a batch of one), so a
#: file declaring enormous inputs cannot make loading allocate them; such models are checked
#: on each call instead.
CHECK_MAX_ELEMENTS = 1 << 26

#: Ops whose output may be a view of their first input.
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}


class InferenceModel:
    """A model ready to run: ``model(x)`` for one input and one output, ``model.run(feeds)``
    for a dict of every output; ``model.inputs`` and ``model.outputs`` list
    ``TensorInfo(name, shape, dtype)``, None in a shape for a size chosen at run time (the batch).
    """

    def __init__(self, graph, check_shapes=True):
        check(graph)
        optimize(graph)
        check(graph)
        self.graph = graph
        self.inputs = list(graph.inputs)
        self._plan()
        self.outputs = list(graph.outputs)
        if check_shapes:
            self._dry_run()

    # ------------------------------------------------------------------ plan

    def _plan(self):
        g = self.graph
        names = [info.name for info in g.inputs] + list(g.constants)
        for node in g.nodes:
            names += [o for o in node.outputs if o]
        slot = {name: i for i, name in enumerate(names)}
        self._slot = slot
        self._template = [None] * len(names)
        for name, value in g.constants.items():
            self._template[slot[name]] = value
        self._fixed = {slot[info.name] for info in g.inputs} | {slot[n] for n in g.constants}
        self._input_slots = [(info, slot[info.name]) for info in g.inputs]
        self._output_slots = [(info.name, slot[info.name]) for info in g.outputs]
        end = len(g.nodes)
        # the buffer each value lives in: a view shares its input's
        root = {i: i for i in range(len(names))}
        for node in g.nodes:
            if node.op in VIEW_OPS:
                root[slot[node.outputs[0]]] = root[slot[node.inputs[0]]]
        last, readers = {}, {name: 1 for name, _ in self._output_slots}
        for step, node in enumerate(g.nodes):
            for name in node.inputs:
                if name:
                    last[slot[name]] = step
                    readers[name] = readers.get(name, 0) + 1
        for _, s in self._output_slots:
            last[s] = end
        root_last = {}
        for s, step in last.items():
            root_last[root[s]] = max(root_last.get(root[s], -1), step)
        self._steps = []
        for step, node in enumerate(g.nodes):
            function = {**OPS, **INTERNAL}[node.op][0]
            ins = [slot[n] if n else None for n in node.inputs]
            outs = [slot[n] if n else None for n in node.outputs]
            release = [s for s in {s for s in ins if s is not None} if last.get(s) == step and s not in self._fixed]
            first = ins[0]
            in_place = (node.op in IN_PLACE and root[first] not in self._fixed
                        and root_last.get(root[first]) == step)
            if in_place:  # the output takes over the input's buffer
                root[outs[0]] = root[first]
                root_last[root[first]] = max(step, *(last.get(o, step) for o in outs if o is not None))
            # lists as tuples: the ops take an attribute that is already a tuple of ints as it is
            attrs = {k: tuple(v) if type(v) is list else v for k, v in node.attrs.items()}
            if node.op == "Conv" and node.inputs[1] in g.constants:
                name = node.inputs[1]
                attrs["weight"] = ConvWeight(g.constants[name], owned=readers[name] == 1)
                if readers[name] == 1:  # the ConvWeight alone holds it, and may trade it for the packed one
                    g.constants[name] = attrs["weight"]
                    self._template[slot[name]] = None
            self._steps.append((node, function, attrs, ins, outs, release, in_place))
            for o in outs:  # an output nobody reads is dropped at once
                if o is not None and o not in last:
                    release.append(o)
        # the load-time check does not pack: packing is for the calls that take the blocked
        # loops (a model served at batch 8 never packs its 14x14 layers)
        self._check_steps = [(node, function, {**attrs, "pack": False} if "weight" in attrs else attrs, *rest)
                             for node, function, attrs, *rest in self._steps]
        # an output that shares its buffer with an input, a weight or another output is copied
        out_roots = [root[s] for _, s in self._output_slots]
        self._copy_out = {s for (_, s), r in zip(self._output_slots, out_roots)
                          if r in self._fixed or out_roots.count(r) > 1}

    # ------------------------------------------------------------------ running

    def _execute(self, values, steps):
        for node, function, attrs, ins, outs, release, in_place in steps:
            args = [None if s is None else values[s] for s in ins]
            try:
                if in_place and _fits(args):
                    result = function(*args, out=args[0], **attrs)
                else:
                    result = function(*args, **attrs)
            except (ValueError, TypeError) as e:
                raise type(e)(f"{node.describe()}: {e}") from e
            values[outs[0]] = result
            for s in release:
                values[s] = None
        return values

    def _feeds(self, feeds):
        if not isinstance(feeds, dict):
            raise TypeError(f"run: feeds must be a dict of input name to numpy.ndarray, got {type(feeds).__name__}")
        expected = [info.name for info, _ in self._input_slots]
        missing = [n for n in expected if n not in feeds]
        unknown = [n for n in feeds if n not in expected]
        if missing or unknown:
            raise ValueError(f"run: feeds must give the inputs {expected}; missing {missing}, unknown {unknown}")
        values = list(self._template)
        for info, s in self._input_slots:
            values[s] = _check_input(info, feeds[info.name])
        return values

    def run(self, feeds):
        """Run on ``feeds`` ({input name: array}); returns {output name: array}, C-contiguous
        arrays that the caller owns. Inputs are never modified."""
        return self._run(feeds, self._steps)

    def _run(self, feeds, steps):
        values = self._execute(self._feeds(feeds), steps)
        result = {}
        for name, s in self._output_slots:
            v = values[s]
            result[name] = np.array(v, order="C") if s in self._copy_out else np.ascontiguousarray(v)
        return result

    def __call__(self, x):
        """The single output for the single input ``x``."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise TypeError(f"calling the model needs one input and one output, it has {len(self.inputs)} inputs and "
                            f"{len(self.outputs)} outputs; use model.run({{name: array}})")
        return self.run({self.inputs[0].name: x})[self.outputs[0].name]

    # ------------------------------------------------------------------ load-time check

    def _dry_run(self):
        """Run once on zeros (a batch of one where the batch is free) to check every shape now;
        fills in the outputs' shapes."""
        feeds = {}
        for info in self.inputs:
            if info.shape is None or any(d is None for d in info.shape[1:]):
                return  # sizes known only at run time: shapes are checked on each call instead
            shape = (info.shape[0] or 1, *info.shape[1:]) if info.shape else ()
            if np.prod(shape, dtype=np.float64) > CHECK_MAX_ELEMENTS:
                return
            feeds[info.name] = np.zeros(shape, dtype=info.dtype)
        try:
            results = self._run(feeds, self._check_steps)
        except (ValueError, TypeError) as e:
            raise GraphError(f"the model cannot run on inputs of the declared shapes: {e}") from e
        except MemoryError:
            raise GraphError("the model cannot run on inputs of the declared shapes: it needs more memory than "
                             "this machine has (a node makes an enormous array)") from None
        batch_free = any(info.shape and info.shape[0] is None for info in self.inputs)
        outputs = []
        for info in self.outputs:
            got = results[info.name]
            shape = tuple(got.shape)
            if batch_free and shape:
                shape = (None, *shape[1:])
            if info.shape is not None:
                declared = tuple(info.shape)
                if len(declared) != len(shape) or any(d is not None and s is not None and d != s
                                                      for d, s in zip(declared[1:], shape[1:])):
                    raise GraphError(f"graph output {info.name!r} is declared with shape {declared} but the graph "
                                     f"computes {got.shape} for a batch of one")
            outputs.append(TensorInfo(info.name, shape, got.dtype))
        self.outputs = outputs

    def __repr__(self):
        ins = ", ".join(f"{i.name}: {i.shape}" for i in self.inputs)
        outs = ", ".join(f"{o.name}: {o.shape}" for o in self.outputs)
        return f"InferenceModel({len(self.graph.nodes)} nodes; inputs {ins}; outputs {outs})"


def _fits(args):
    """The result of an element-wise op on ``args`` has the first argument's shape and dtype."""
    first = args[0]
    if not isinstance(first, np.ndarray) or not first.flags.c_contiguous or not first.flags.writeable:
        return False
    others = [a for a in args[1:] if a is not None]
    if not others:
        return True
    b = others[0]
    return (isinstance(b, np.ndarray) and np.result_type(first, b) == first.dtype
            and np.broadcast_shapes(first.shape, b.shape) == first.shape)


def _check_input(info, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"input {info.name!r} must be a numpy.ndarray, got {type(x).__name__}")
    if info.dtype is not None and x.dtype != info.dtype:
        raise TypeError(f"input {info.name!r} must have dtype {np.dtype(info.dtype)}, got {x.dtype}")
    if info.shape is not None:
        if x.ndim != len(info.shape) or any(d is not None and d != s for d, s in zip(info.shape, x.shape)):
            raise ValueError(f"input {info.name!r} must have shape {_spell(info.shape)}, got {x.shape}")
    return x


def _spell(shape):
    return "(" + ", ".join("N" if d is None and i == 0 else "?" if d is None else str(d)
                           for i, d in enumerate(shape)) + ("," if len(shape) == 1 else "") + ")"
