"""TensorFlow's own FLOP counter, as the independent check of :mod:`morphsparse.costs`.

The model is traced to a concrete function with a fully defined input signature (batch 1), its variables are
frozen into constants, and ``tf.compat.v1.profiler`` counts the float operations of each op type.

The profiler registers no FLOP statistics for ``Einsum`` ops (Keras's attention scores and their weighted sum
run as einsums; its projections run as BatchMatMul). Those are counted here from the same frozen graph: 2 x the
product of the sizes of every index of the op's equation, read from its static input shapes.
"""

from __future__ import annotations

import collections

#: op types whose FLOPs are 2 x MACs of a layer morphsparse counts (the rest is BN, bias, element-wise, ...).
MAC_OP_TYPES = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3",
                "Conv2DBackpropInput", "Conv3D", "Einsum")


def profiler_flops(model, batch_size=1):
    """FLOPs per TensorFlow op type of one forward pass (inference mode) of ``batch_size`` examples."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2_as_graph)

    specs = []
    for tensor in model.inputs:
        shape = (batch_size,) + tuple(tensor.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(f"input '{tensor.name}' of model '{model.name}' has an unknown dimension {shape}; "
                             "the profiler needs a fully defined input shape")
        specs.append(tf.TensorSpec(shape, tensor.dtype))

    @tf.function
    def forward(*args):
        return model(keras.tree.pack_sequence_as(model.input, list(args)), training=False)

    concrete = forward.get_concrete_function(*specs)
    _, graph_def = convert_variables_to_constants_v2_as_graph(concrete)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        options = tf.compat.v1.profiler.ProfileOptionBuilder(
            tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
        profile = tf.compat.v1.profiler.profile(graph, cmd="scope", options=options)
        per_type = collections.Counter()
        pending = list(profile.children)
        while pending:
            node = pending.pop()
            pending.extend(node.children)
            if node.float_ops:
                per_type[graph.get_operation_by_name(node.name).type] += node.float_ops
        if "Einsum" not in per_type:
            for op in graph.get_operations():
                if op.type == "Einsum":
                    per_type["Einsum"] += _einsum_flops(op)
    return {k: v for k, v in per_type.items() if v}


def _einsum_flops(op):
    from morphsparse.handlers.ops import einsum_macs
    equation = op.get_attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    shapes = [tuple(t.shape.as_list()) for t in op.inputs]
    return 2 * einsum_macs(equation, shapes)


def profiler_mac_flops(model, batch_size=1):
    """The profiler's FLOPs of the op types that correspond to morphsparse's counted layers."""
    per_type = profiler_flops(model, batch_size)
    return sum(v for k, v in per_type.items() if k in MAC_OP_TYPES)
