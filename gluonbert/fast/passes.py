"""Pure graph passes for inference: trace a classifier into a symbol, fold its
parameter-only subgraphs, partition it for oneDNN. Nothing here changes a block or
global state; each returns new symbols and parameter dicts.
"""
import json

import numpy as np
import mxnet as mx
from mxnet.gluon import SymbolBlock

from .._env import quiet_native_stderr
from ..engine import mxnet_internals as internals

__all__ = ['INPUT_NAMES', 'trace', 'param_values', 'inference_graph', 'fold_constants',
           'partition']

INPUT_NAMES = ('data0', 'data1', 'data2')  # words, segments, valid_length (Gluon's names)


def trace(net, inputs, *, builtin=True):
    """(input names, output symbol) of ``net``'s inference graph.

    The graph is traced from a copy of ``net`` on the same parameters
    (:func:`gluonbert.model.with_kernels`) with the additive attention mask, the faster
    one for inference, MXNet's dropout (an identity in inference, with no mask to make)
    and attention products and, with ``builtin``, MXNet's LayerNorm too, so that AMP, the
    quantizer and plain MXNet know every operator. ``net`` itself is not touched.
    """
    from ..model import with_kernels
    if isinstance(net, SymbolBlock):
        data, sym = net._cached_graph  # noqa: SLF001  a SymbolBlock's graph: no public getter
        return [d.name for d in data], sym
    # SLF001, why: Parameter has no public "initialisation deferred to the first call"
    if any(p._deferred_init for p in net.collect_params().values()):  # noqa: SLF001
        net(*inputs)  # one forward gives the deferred parameters their shapes
        mx.nd.waitall()
    choices = dict(attention_mask='additive', dropout_kernels='mxnet', attention_kernels='mxnet')
    if builtin:
        choices['layer_norm_kernels'] = 'mxnet'
    sym = with_kernels(net, **choices)(*[mx.sym.var(name) for name in INPUT_NAMES])
    return list(INPUT_NAMES), sym


def param_values(net, sym):
    """(arg_params, aux_params) of ``sym`` from ``net``'s parameters, on the CPU."""
    args, aux = set(sym.list_arguments()), set(sym.list_auxiliary_states())
    arg_params, aux_params = {}, {}
    for param in net.collect_params().values():
        value = internals.reduced_data(param)
        if param.name in args:
            arg_params[param.name] = value
        elif param.name in aux:
            aux_params[param.name] = value
    return arg_params, aux_params


def inference_graph(net, example, *, builtin=True):
    """(input names, symbol, arg_params, aux_params) of ``net`` traced on ``example``, with
    its parameter-only subgraphs folded (:func:`fold_constants`)."""
    names, sym = trace(net, example, builtin=builtin)
    arg_params, aux_params = param_values(net, sym)
    sym, arg_params, _ = fold_constants(sym, arg_params)
    return names, sym, arg_params, aux_params


def fold_constants(sym, arg_params):
    """Precompute the parts of a graph that depend on parameters only.

    gluonbert's attention builds its fused query/key/value weight from the three
    projections on every call (a concat and reshapes); for inference that weight is a
    constant. Each maximal parameter-only subgraph whose value feeds the rest of the graph
    is evaluated once and replaced by a variable named ``<node>_folded`` (with a
    ``_weight``/``_bias`` suffix when it is a dense layer's weight or bias).

    Returns ``(folded symbol, its arg_params, names of the folded nodes)``.
    The folded graph computes exactly the same values.
    """
    graph = json.loads(sym.tojson())
    nodes = graph['nodes']
    constant = []
    for node in nodes:
        if node['op'] == 'null':
            constant.append(node['name'] in arg_params)
        else:
            constant.append(bool(node['inputs']) and
                            all(constant[i] for i, _, _ in node['inputs']))
    frontier = set()
    uses, roles = {}, {}  # node -> output indices read; node -> how consumers use it
    for node in nodes:
        for position, (i, out, _) in enumerate(node['inputs']):
            uses.setdefault(i, set()).add(out)
            role = ({1: 'weight', 2: 'bias'}.get(position, 'value')
                    if node['op'] in ('FullyConnected', 'Convolution') else 'value')
            roles.setdefault(i, set()).add(role)
    for idx, node in enumerate(nodes):
        if constant[idx]:
            continue
        for i, _, _ in node['inputs']:
            if constant[i] and nodes[i]['op'] != 'null':
                frontier.add(i)
    for i, _, _ in graph['heads']:
        if constant[i] and nodes[i]['op'] != 'null':
            frontier.add(i)
    internals = sym.get_internals()
    output_index = {name: k for k, name in enumerate(internals.list_outputs())}
    params = dict(arg_params)
    folded_names = []
    for i in sorted(frontier):
        node = nodes[i]
        key = node['name'] + '_output'
        if key not in output_index or uses.get(i, {0}) != {0}:
            continue  # a multi-output node: leave it
        part = internals[output_index[key]]
        with quiet_native_stderr():  # "Subgraph backend MKLDNN is activated", at each bind
            value = part.eval(ctx=mx.cpu(),
                              **{n: arg_params[n] for n in part.list_arguments()})[0]
        # MXNet's quantizer quantizes parameters named *weight / *bias offline
        role = roles.get(i, {'value'})
        name = node['name'] + ('_folded_' + role.pop() if len(role) == 1 and 'value' not in role
                               else '_folded')
        nodes[i] = {'op': 'null', 'name': name, 'inputs': []}
        params[name] = value
        folded_names.append(node['name'])
    graph['arg_nodes'] = [i for i, node in enumerate(nodes) if node['op'] == 'null']
    folded = mx.sym.load_json(json.dumps(graph))
    used = set(folded.list_arguments())
    return folded, {k: v for k, v in params.items() if k in used}, folded_names


def partition(sym, names, example, arg_params, aux_params, ctx):
    """``sym`` partitioned for the oneDNN subgraph backend ('MKLDNN'): each Dense layer fused
    with the element-wise work around it (bias, GELU), the self-attention kernels replaced
    by oneDNN's. Partitioning infers shapes, so it needs the inputs' shapes and types."""
    with quiet_native_stderr():  # "Subgraph backend MKLDNN is activated", at each bind
        return sym.optimize_for('MKLDNN', arg_params, aux_params, ctx=ctx,
                                shape_dict={n: x.shape for n, x in zip(names, example)},
                                type_dict={n: np.float32 for n in names})
