"""Subgraphs converted as one op.

- PyTorch's exact GELU, exported as ``x * 0.5 * (1 + erf(x / sqrt(2)))``: as one ``gelu`` it converts
  to TFLite's builtin GELU kernel; op by op, TFLite has no kernel for Erf.
- PyTorch's GroupNorm below opset 18, exported as ``Reshape [N, G, -1] -> InstanceNormalization ->
  Reshape back``: as one ``GroupNormalization`` it works on channels-last data in place; op by op, the
  first Reshape needs the data in ONNX order (a transpose there and back).
"""
import math

import numpy as np


def fuse(converter) -> None:
    nodes = list(converter.graph.node)
    producers = {name: index for index, node in enumerate(nodes) for name in node.output}
    outputs = {o.name for o in converter.graph.output}

    def const(name):
        value = converter.values.get(name)
        if isinstance(value, np.ndarray):
            return value
        producer = producers.get(name)
        if producer is not None and nodes[producer].op_type == "Constant":
            return converter.probe.constant(name)
        return None

    def only_consumer(name):
        users = converter.consumers.get(name, [])
        if len(users) != 1 or name in outputs:
            return None
        return nodes.index(users[0])

    def other_input(node, name):
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else None

    def is_scalar(name, value):
        c = const(name) if name else None
        return c is not None and c.size == 1 and math.isclose(float(c.reshape(-1)[0]), value, rel_tol=1e-5)

    for e, erf in enumerate(nodes):
        if erf.op_type != "Erf" or erf.input[0] not in producers:
            continue
        d = producers[erf.input[0]]
        scale = nodes[d]
        x = scale.input[0]
        if not ((scale.op_type == "Div" and is_scalar(scale.input[1], math.sqrt(2))) or
                (scale.op_type == "Mul" and is_scalar(scale.input[1], 1 / math.sqrt(2)))):
            continue
        a = only_consumer(erf.output[0])
        if a is None or only_consumer(scale.output[0]) != e:
            continue
        add = nodes[a]
        if add.op_type != "Add" or not is_scalar(other_input(add, erf.output[0]), 1.0):
            continue
        match = _tail(nodes, a, x, only_consumer, other_input, is_scalar, producers)
        if match is None:
            continue
        final, covered = match
        converter.skip.update({d, e, a, *covered})
        converter.replacements[final] = ("Gelu", [x], {"approximate": "none"})
        converter.fused["Gelu"] = converter.fused.get("Gelu", 0) + 1
    _group_norm(converter, nodes, producers, const, only_consumer)


def _group_norm(converter, nodes, producers, const, only_consumer) -> None:
    probe = converter.probe
    for i, norm in enumerate(nodes):
        if norm.op_type != "InstanceNormalization" or norm.input[0] not in producers:
            continue
        first = producers[norm.input[0]]
        last = only_consumer(norm.output[0])
        if nodes[first].op_type != "Reshape" or last is None or nodes[last].op_type != "Reshape" or \
                only_consumer(norm.input[0]) != i:
            continue
        x = nodes[first].input[0]
        if x not in probe.values or norm.input[0] not in probe.values:
            continue
        shape, grouped = probe.shape(x), probe.shape(norm.input[0])
        scale, bias = const(norm.input[1]), const(norm.input[2])
        if len(shape) < 3 or len(grouped) != 3 or None in shape[1:] or None in grouped[1:] or \
                probe.batch_axes(x) != [0] or probe.batch_axes(norm.input[0]) != [0] or \
                probe.shape(nodes[last].output[0]) != shape or scale is None or bias is None:
            continue
        groups = grouped[1]
        if shape[1] % groups or groups * grouped[2] != math.prod(shape[1:]):
            continue
        epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        converter.skip.update({first, i})
        converter.replacements[last] = ("GroupNormalization", [x, norm.input[1], norm.input[2]],
                                        {"num_groups": groups, "epsilon": epsilon})
        converter.fused["GroupNormalization"] = converter.fused.get("GroupNormalization", 0) + 1


def _tail(nodes, a, x, only_consumer, other_input, is_scalar, producers):
    """The rest of the pattern after ``1 + erf``: returns (final node index, other covered nodes)."""
    add_out = nodes[a].output[0]
    m1 = only_consumer(add_out)
    if m1 is None or nodes[m1].op_type != "Mul":
        return None
    partner = other_input(nodes[m1], add_out)
    if partner == x:  # (x * (1 + erf)) * 0.5
        m2 = only_consumer(nodes[m1].output[0])
        tail = nodes[m2] if m2 is not None else None
        if tail is not None and tail.op_type == "Mul" and is_scalar(other_input(tail, nodes[m1].output[0]), 0.5):
            return m2, [m1]
        return None
    if is_scalar(partner, 0.5):  # x * ((1 + erf) * 0.5)
        m2 = only_consumer(nodes[m1].output[0])
        if m2 is not None and nodes[m2].op_type == "Mul" and other_input(nodes[m2], nodes[m1].output[0]) == x:
            return m2, [m1]
        return None
    half = producers.get(partner)  # (x * 0.5) * (1 + erf)
    if half is not None and nodes[half].op_type == "Mul" and x in nodes[half].input and \
            is_scalar(other_input(nodes[half], x), 0.5) and only_consumer(partner) == m1:
        return m1, [half]
    return None
