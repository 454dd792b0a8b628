"""gluonbert's self-attention products (gluonbert_selfatt_qk / _valatt): parity with
MXNet's interleaved kernels, forward and backward; the attention block with either; gradient
accumulation through them; graphs for export keep MXNet's."""
import json
import os

import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd

from gluonbert import ops
from gluonbert import kernels as kernel_registry
from gluonbert.layers import MultiHeadAttention

pytestmark = pytest.mark.skipif(os.environ.get('GLUONBERT_FUSED_OPS') == '0',
                                reason='GLUONBERT_FUSED_OPS=0')

MXNET = (mx.nd.contrib.interleaved_matmul_selfatt_qk,
         mx.nd.contrib.interleaved_matmul_selfatt_valatt)


def products_and_grads(qk, valatt, qkv, attention, d_scores, d_context, heads):
    """Scores, context and the gradients of qkv and attention for given output grads."""
    qkv, attention = qkv.copy(), attention.copy()
    qkv.attach_grad()
    attention.attach_grad()
    with autograd.record():
        scores = qk(mx.nd.identity(qkv), heads=heads)
        context = valatt(mx.nd.identity(qkv), attention, heads=heads)
    autograd.backward([scores, context], [d_scores, d_context])
    return [a.asnumpy() for a in (scores, context, qkv.grad, attention.grad)]


@pytest.mark.parametrize('length,batch,heads,head_units',
                         [(7, 3, 2, 5), (33, 2, 4, 16), (128, 2, 12, 64), (1, 1, 1, 1)])
def test_products_match_mxnet(length, batch, heads, head_units):
    assert ops.load(), ops.status()
    rng = np.random.RandomState(length)
    qkv = mx.nd.array(rng.randn(length, batch, 3 * heads * head_units))
    attention = mx.nd.softmax(mx.nd.array(rng.randn(batch * heads, length, length)))
    d_scores = mx.nd.array(rng.randn(batch * heads, length, length))
    d_context = mx.nd.array(rng.randn(length, batch, heads * head_units))
    args = (qkv, attention, d_scores, d_context, heads)
    fused = products_and_grads(mx.nd.gluonbert_selfatt_qk, mx.nd.gluonbert_selfatt_valatt,
                               *args)
    reference = products_and_grads(*MXNET, *args)
    for name, got, want in zip(('scores', 'context', 'd_qkv', 'd_attention'), fused,
                               reference):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5, err_msg=name)
    # against float64 numpy too: scores of head 0 of the first example
    q = qkv.asnumpy()[:, 0, :head_units].astype('d')
    k = qkv.asnumpy()[:, 0, head_units:2 * head_units].astype('d')
    np.testing.assert_allclose(fused[0][0], q @ k.T / np.sqrt(head_units), rtol=1e-5,
                               atol=1e-5)


def test_shapes_that_do_not_fit_are_refused():
    assert ops.load(), ops.status()
    with pytest.raises(mx.base.MXNetError, match=r'qkv must be \(L, B, heads\*3\*D\)'):
        mx.nd.gluonbert_selfatt_qk(mx.nd.ones((4, 2, 10)), heads=3).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match=r'the attention \(B\*heads, L, L\)'):
        mx.nd.gluonbert_selfatt_valatt(mx.nd.ones((4, 2, 12)), mx.nd.ones((2, 4, 4)),
                                       heads=2).wait_to_read()


def attention_block(kernels):
    mx.random.seed(3)
    with kernel_registry.building(attention_kernels=kernels):
        block = MultiHeadAttention(units=32, num_heads=4, layout='TNC', prefix='attention_')
    block.initialize(mx.init.Normal(0.2))
    return block


def outputs_and_grads(block, x, valid_length, repeats=1):
    for _ in range(repeats):
        with autograd.record():
            output, weights = block(x, valid_length)
            loss = (output ** 2).sum() + (weights * 3).sum()
        loss.backward()
    return output.asnumpy(), {name: p.grad().asnumpy()
                              for name, p in block.collect_params().items()}


@pytest.mark.parametrize('hybridize', [False, True])
def test_attention_block_fused_equals_mxnet_and_accumulates_gradients(hybridize):
    assert ops.load(), ops.status()
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.randn(9, 3, 32))
    valid_length = mx.nd.array([9, 4, 1])
    results = {}
    for kernels in ('fused', 'mxnet'):
        block = attention_block(kernels)
        assert block.kernels == kernels
        if hybridize:
            block.hybridize(static_alloc=True)  # as the training loops do
        results[kernels] = outputs_and_grads(block, x, valid_length)
    np.testing.assert_allclose(results['fused'][0], results['mxnet'][0], rtol=1e-5, atol=1e-5)
    for name, grad in results['mxnet'][1].items():
        np.testing.assert_allclose(results['fused'][1][name], grad, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    # grad_req='add': two backward passes give twice one (the identity copies at work)
    block = attention_block('fused')
    if hybridize:
        block.hybridize(static_alloc=True)
    for param in block.collect_params().values():
        param.grad_req = 'add'
    _, twice = outputs_and_grads(block, x, valid_length, repeats=2)
    for name, grad in results['fused'][1].items():
        np.testing.assert_allclose(twice[name], 2 * grad, rtol=1e-4, atol=1e-5, err_msg=name)


def graph_ops(block, x, valid_length):
    block.hybridize()
    block(x, valid_length)
    symbol = block._cached_graph[1]  # noqa: SLF001  the traced graph: no public getter
    return {node['op'] for node in json.loads(symbol.tojson())['nodes']}


def test_graphs_use_the_chosen_products_and_export_traces_mxnet_s():
    assert ops.load(), ops.status()
    x, valid_length = mx.nd.ones((5, 2, 32)), mx.nd.array([5, 2])
    block = attention_block('fused')
    used = graph_ops(block, x, valid_length)
    assert {'gluonbert_selfatt_qk', 'gluonbert_selfatt_valatt'} <= used
    assert '_contrib_interleaved_matmul_selfatt_qk' not in used
    block = attention_block('mxnet')
    symbol = block(mx.sym.var('x'), mx.sym.var('valid_length'))[0]
    traced = {node['op'] for node in json.loads(symbol.tojson())['nodes']}
    assert '_contrib_interleaved_matmul_selfatt_valatt' in traced
    assert not any(op.startswith('gluonbert_selfatt') for op in traced)
    assert '_contrib_interleaved_matmul_selfatt_qk' in graph_ops(block, x, valid_length)
    # export's way: a model rebuilt on the same parameters with MXNet's products
    import gluonbert
    model = gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny', kernels='fused'))
    model.initialize()
    portable = gluonbert.with_kernels(model, attention_kernels='mxnet')
    words, segments = mx.nd.ones((2, 5)), mx.nd.zeros((2, 5))
    assert '_contrib_interleaved_matmul_selfatt_qk' in graph_ops(portable, words, segments)
    assert 'gluonbert_selfatt_qk' in graph_ops(model, words, segments)  # itself unchanged


def test_wrapped_projections_keep_the_fused_products():
    """LoRA wraps every projection (out_proj too): the block still picks its products from
    its parameters, and both kinds agree."""
    import gluonbert
    from gluonbert.lora import apply_lora
    assert ops.load(), ops.status()
    words = mx.nd.array(np.random.RandomState(1).randint(5, 99, (2, 9)))
    segments, valid_length = mx.nd.zeros((2, 9)), mx.nd.array([9, 5])
    outputs = {}
    for kernels in ('fused', 'mxnet'):
        mx.random.seed(0)
        model = gluonbert.BERTModel(gluonbert.BERTConfig.from_preset(
            'tiny', dropout=0.0, attention_dropout=0.0, attention_kernels=kernels))
        model.initialize(mx.init.Normal(0.2))
        apply_lora(model, rank=2, targets=('query', 'key', 'value', 'out_proj'))
        model.hybridize()
        outputs[kernels] = model(words, segments, valid_length)[0].asnumpy()
        used = {node['op'] for node in json.loads(
            model._cached_graph[1].tojson())['nodes']}  # noqa: SLF001  no public getter
        assert ('gluonbert_selfatt_qk' in used) == (kernels == 'fused')
    np.testing.assert_allclose(outputs['fused'], outputs['mxnet'], rtol=1e-5, atol=1e-5)
