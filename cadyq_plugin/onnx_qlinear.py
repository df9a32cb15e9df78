"""The image-wise ONNX graph of an int8 network with ``QLinearConv`` wherever it can compute a conv exactly.

``basicsr export --onnx`` writes every integer conv as ``ConvInteger`` followed by a float rescale, because most
of CADyQ's integer convs must give a float output (a bit selector reads the float statistics of its input, a
residual sum is float) and ``QLinearConv`` only writes 8-bit codes. onnxruntime runs ``ConvInteger`` on a slow
path (onnxruntime#12854) and ``QLinearConv`` on its fast one; ``QLinearConv`` needs one input scale per tensor,
which a batch of one image has (a selector's choice is then one number). So for batch 1 this rewrite replaces
each integer conv whose float output is requantized by a fixed quantizer, i.e. the chain

    codes -> ConvInteger -> Cast -> Mul(scale) [-> Add(bias)] [-> Relu] [-> DepthToSpace]
          -> Div(a) -> Clip(-1, 1) -> Mul(q) -> Round -> Add(128) -> Cast(uint8) -> next codes

(the shape :func:`~cadyq_plugin.deploy.export_onnx` gives it; the exporter may merge a ReLU into the Clip; the
order ``Clip(-a, a) -> Div(a)`` of earlier versions is recognised too), by ``QLinearConv`` with the quantizer's
``a / q`` as output scale, a ``Clip`` of the codes to the float Clip's bounds as codes (``128 +- q``, not below 128
after a ReLU) and the pixel shuffle on the codes. The bias becomes int32 at the
input x weight scale (a rounding of the bias far below one output level). The other convs keep ``ConvInteger``.
"""
import numpy as np


def _maps(graph):
    producer = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def _only_consumer(consumers, name, op_type):
    nodes = consumers.get(name, [])
    return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op_type else None


def _quantization_inputs(producer, codes):
    """``(alpha, q)`` tensor names of the quantization that made ``codes`` (Div by alpha, Mul by q), or None."""
    cast = producer.get(codes)
    add = producer.get(cast.input[0]) if cast is not None and cast.op_type == 'Cast' else None
    rnd = producer.get(add.input[0]) if add is not None and add.op_type == 'Add' else None
    mul = producer.get(rnd.input[0]) if rnd is not None and rnd.op_type == 'Round' else None
    div = producer.get(mul.input[0]) if mul is not None and mul.op_type == 'Mul' else None
    if div is not None and div.op_type == 'Clip':  # x / a clipped to [-1, 1], then * q
        div = producer.get(div.input[0])
    if div is None or div.op_type != 'Div':
        return None
    return div.input[1], mul.input[1]


def rewrite_qlinear(model, net):
    """Rewrite ``model`` (the ONNX graph of ``net``, exported for batch 1) in place; returns how many convs became
    ``QLinearConv``."""
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    producer, consumers = _maps(graph)
    modules = dict(net.named_modules())
    new_nodes, removed, count = [], set(), 0
    initializers = []

    def const(name, array):
        initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    made = {}  # codes this rewrite made -> (alpha, q) of their quantizer
    for conv in [n for n in graph.node if n.op_type == 'ConvInteger']:
        quant_in = made.get(conv.input[0]) or _quantization_inputs(producer, conv.input[0])
        chain = _float_chain(consumers, conv.output[0])
        weight_name = conv.input[1]
        module = modules.get(weight_name.rpartition('.lifted_tensor')[0].removeprefix('net.'))
        packed = getattr(getattr(module, 'int8_kernel', None), '_weight', None)
        if quant_in is None or chain is None or packed is None:
            continue
        nodes, relu, shuffle, (alpha_out, q_out), codes_out, (clip_min, clip_max), in_alphas = chain
        prefix = f'qlinear_{count}'
        alpha_in, q_in = quant_in
        integer = packed.integer
        w_scale = const(f'{prefix}_w_scale', packed.step.numpy().astype(np.float32))
        w_zero = const(f'{prefix}_w_zero', np.zeros(packed.step.numel(), np.int8))
        zero = const(f'{prefix}_zero', np.array(128, np.uint8))
        shape = const(f'{prefix}_scalar', np.zeros(0, np.int64))
        bias = integer.per_channel(module.bias)
        new_nodes += [
            helper.make_node('Div', [alpha_in, q_in], [f'{prefix}_x_step']),
            helper.make_node('Reshape', [f'{prefix}_x_step', shape], [f'{prefix}_x_scale']),
            helper.make_node('Div', [alpha_out, q_out], [f'{prefix}_y_step']),
            helper.make_node('Reshape', [f'{prefix}_y_step', shape], [f'{prefix}_y_scale']),
        ]
        inputs = [conv.input[0], f'{prefix}_x_scale', zero, weight_name, w_scale, w_zero, f'{prefix}_y_scale', zero]
        if bias is not None:
            bias_name = const(f'{prefix}_bias', bias.detach().numpy().astype(np.float32))
            new_nodes += [
                helper.make_node('Mul', [f'{prefix}_x_scale', w_scale], [f'{prefix}_bias_step']),
                helper.make_node('Div', [bias_name, f'{prefix}_bias_step'], [f'{prefix}_bias_levels']),
                helper.make_node('Round', [f'{prefix}_bias_levels'], [f'{prefix}_bias_round']),
                helper.make_node('Cast', [f'{prefix}_bias_round'], [f'{prefix}_bias_int'], to=TensorProto.INT32),
            ]
            inputs.append(f'{prefix}_bias_int')
        new_nodes.append(helper.make_node('QLinearConv', inputs, [f'{prefix}_codes'], strides=integer.stride,
                                          pads=list(integer.padding) * 2, dilations=integer.dilation,
                                          group=integer.groups))
        # the float Clip's bounds (the quantizer's range, maybe merged with a ReLU) as codes: round(b / a * q) + 128
        # (round(b * q) + 128 for bounds in units of a),
        # and not below 128 after a ReLU
        half = const(f'{prefix}_128', np.array(128, np.float32))
        bounds = []
        for which, bound in (('lo', clip_min), ('hi', clip_max)):
            unit = bound if in_alphas else f'{prefix}_{which}_u'
            if not in_alphas:
                new_nodes.append(helper.make_node('Div', [bound, alpha_out], [unit]))
            new_nodes += [helper.make_node('Mul', [unit, q_out], [f'{prefix}_{which}_l']),
                          helper.make_node('Round', [f'{prefix}_{which}_l'], [f'{prefix}_{which}_r']),
                          helper.make_node('Add', [f'{prefix}_{which}_r', half], [f'{prefix}_{which}_c'])]
            code = f'{prefix}_{which}_c'
            if relu and which == 'lo':
                new_nodes.append(helper.make_node('Max', [code, half], [f'{prefix}_{which}_relu']))
                code = f'{prefix}_{which}_relu'
            new_nodes.append(helper.make_node('Cast', [code], [f'{prefix}_{which}'], to=TensorProto.UINT8))
            bounds.append(f'{prefix}_{which}')
        clipped = f'{prefix}_clipped'
        new_nodes.append(helper.make_node('Clip', [f'{prefix}_codes'] + bounds, [clipped]))
        final = clipped
        if shuffle is not None:
            final = f'{prefix}_shuffled'
            blocksize = next(a.i for a in shuffle.attribute if a.name == 'blocksize')
            new_nodes.append(helper.make_node('DepthToSpace', [clipped], [final], blocksize=blocksize, mode='CRD'))
        for node in consumers.get(codes_out, []):
            for i, name in enumerate(node.input):
                if name == codes_out:
                    node.input[i] = final
        removed |= {id(n) for n in [conv] + nodes}
        made[final] = (alpha_out, q_out)
        count += 1
    kept = [n for n in graph.node if id(n) not in removed]
    graph.initializer.extend(initializers)
    ordered = _topological(kept + new_nodes, graph)
    del graph.node[:]
    graph.node.extend(ordered)
    return count


def _float_chain(consumers, name):
    """The nodes from a ConvInteger's output to the codes of the quantizer that requantizes it (see the module
    docstring): ``(nodes, relu, depth_to_space node, (alpha, q), codes, (clip min, clip max), whether the bounds are
    in units of alpha)``, or None for any other consumer."""
    nodes = []
    node = _only_consumer(consumers, name, 'Cast')
    if node is None:
        return None
    nodes.append(node)
    node = _only_consumer(consumers, node.output[0], 'Mul')
    if node is None:
        return None
    nodes.append(node)
    relu, shuffle = False, None
    for optional in ('Add', 'Relu', 'DepthToSpace'):
        follower = consumers.get(nodes[-1].output[0], [])
        if len(follower) != 1:
            return None
        if follower[0].op_type == optional:
            nodes.append(follower[0])
            relu = relu or optional == 'Relu'
            shuffle = follower[0] if optional == 'DepthToSpace' else shuffle
    clip = _only_consumer(consumers, nodes[-1].output[0], 'Clip')
    if clip is not None:  # Clip(-a, a) -> Div(a): bounds in the input's unit
        div = _only_consumer(consumers, clip.output[0], 'Div')
        after_clip, in_alphas = div, False
    else:  # Div(a) -> Clip(-1, 1): bounds in units of a
        div = _only_consumer(consumers, nodes[-1].output[0], 'Div')
        clip = _only_consumer(consumers, div.output[0], 'Clip') if div is not None else None
        after_clip, in_alphas = clip, True
    mul = _only_consumer(consumers, after_clip.output[0], 'Mul') if after_clip is not None else None
    rnd = _only_consumer(consumers, mul.output[0], 'Round') if mul is not None else None
    add = _only_consumer(consumers, rnd.output[0], 'Add') if rnd is not None else None
    cast = _only_consumer(consumers, add.output[0], 'Cast') if add is not None else None
    if cast is None or len(clip.input) < 3 or not clip.input[1] or not clip.input[2]:
        return None
    nodes += [clip, div, mul, rnd, add, cast] if not in_alphas else [div, clip, mul, rnd, add, cast]
    return (nodes, relu, shuffle, (div.input[1], mul.input[1]), cast.output[0], (clip.input[1], clip.input[2]),
            in_alphas)


def _topological(nodes, graph):
    """``nodes`` ordered so that every input is made before it is used (ONNX requires it)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {''}
    ordered, pending = [], list(nodes)
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise ValueError(f'the rewritten graph has a cycle or a missing input at {rest[0].op_type} '
                             f'{list(rest[0].input)}')
        pending = rest
    return ordered
