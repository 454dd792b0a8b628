"""Shapes and invariants of the building blocks."""
import numpy as np
import mxnet as mx
import pytest
from mxnet.gluon import nn

import gluonbert
from gluonbert.layers import sinusoidal_table


def test_sinusoidal_table_matches_closed_form():
    table = sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i] == pytest.approx(np.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-6)


@pytest.mark.parametrize('layout', ['NTC', 'TNC'])
def test_positional_encoding_adds_table_rows(layout):
    block = gluonbert.PositionalEncoding(units=6, max_length=20, layout=layout)
    block.initialize()
    x = mx.nd.zeros((2, 5, 6) if layout == 'NTC' else (5, 2, 6))
    y = block(x).asnumpy()
    expected = sinusoidal_table(20, 6)[:5]
    got = y[0] if layout == 'NTC' else y[:, 0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert y.shape == x.shape


def test_sinusoidal_odd_units_and_learned_shapes():
    assert sinusoidal_table(4, 5).shape == (4, 5)
    block = gluonbert.LearnedPositionalEncoding(units=8, max_length=16)
    block.initialize()
    x = mx.nd.ones((3, 7, 8))
    y = block(x)
    assert y.shape == (3, 7, 8)
    np.testing.assert_allclose((y - x).asnumpy()[0], block.weight.data().asnumpy()[:7],
                               atol=1e-6)


def test_positional_encoding_dropout_in_training():
    block = gluonbert.PositionalEncoding(units=8, max_length=16, dropout=0.5)
    block.initialize()
    x = mx.nd.ones((4, 16, 8))
    with mx.autograd.record():
        y = block(x)
    assert (y.asnumpy() == 0).mean() > 0.2
    np.testing.assert_allclose(block(x).asnumpy(),
                               (x + mx.nd.array(sinusoidal_table(16, 8))).asnumpy(), rtol=1e-6)


def _attention(units=16, heads=4, **kw):
    block = gluonbert.MultiHeadAttention(units=units, num_heads=heads, **kw)
    block.initialize(mx.init.Normal(0.5))
    return block


def test_attention_shapes_and_weights_sum_to_one_with_zero_on_padding():
    block = _attention()
    x = mx.nd.random.normal(shape=(3, 6, 16))
    valid_length = mx.nd.array([6, 4, 1])
    out, weights = block(x, valid_length)
    assert out.shape == (3, 6, 16)
    assert weights.shape == (3, 4, 6, 6)
    w = weights.asnumpy()
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-5)
    for row, length in enumerate([6, 4, 1]):
        assert (w[row, :, :, length:] == 0).all()
        assert (w[row, :, :, :length] > 0).all()


def test_attention_padding_invariance():
    block = _attention()
    x = mx.nd.random.normal(shape=(2, 5, 16))
    valid_length = mx.nd.array([5, 3])
    out, _ = block(x, valid_length)
    padded = mx.nd.concat(x, mx.nd.random.normal(shape=(2, 4, 16)), dim=1)
    out_padded, _ = block(padded, valid_length)
    np.testing.assert_allclose(out_padded.asnumpy()[0, :5], out.asnumpy()[0], atol=1e-5)
    np.testing.assert_allclose(out_padded.asnumpy()[1, :3], out.asnumpy()[1, :3], atol=1e-5)


def test_attention_layouts_agree():
    ntc = _attention(layout='NTC')
    tnc = gluonbert.MultiHeadAttention(units=16, num_heads=4, layout='TNC',
                                       params=ntc.collect_params())
    x = mx.nd.random.normal(shape=(2, 5, 16))
    valid_length = mx.nd.array([5, 2])
    a, wa = ntc(x, valid_length)
    b, wb = tnc(x.transpose((1, 0, 2)), valid_length)
    np.testing.assert_allclose(a.asnumpy(), b.transpose((1, 0, 2)).asnumpy(), atol=1e-6)
    np.testing.assert_allclose(wa.asnumpy(), wb.asnumpy(), atol=1e-6)


class _WrappedDense(nn.Dense):
    """A Dense subclass: forces the attention's unfused (wrapped projection) path."""


def test_fused_and_unfused_attention_agree():
    fused = _attention()
    x = mx.nd.random.normal(shape=(2, 5, 16))
    valid_length = mx.nd.array([5, 2])
    expected, expected_w = fused(x, valid_length)
    original = fused.query
    wrapped = _WrappedDense(16, in_units=16, flatten=False, prefix=original.prefix,
                            params=original.collect_params())
    fused._children['query'] = wrapped
    object.__setattr__(fused, 'query', wrapped)
    assert not fused._fusable()
    got, got_w = fused(x, valid_length)
    np.testing.assert_allclose(got.asnumpy(), expected.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(got_w.asnumpy(), expected_w.asnumpy(), atol=1e-6)


@pytest.mark.parametrize('hybridize', [False, True])
def test_additive_and_select_length_masks_agree_exactly(hybridize):
    from gluonbert import kernels
    block = _attention()
    with kernels.building(attention_mask='additive'):  # on the same parameters
        additive = gluonbert.MultiHeadAttention(units=16, num_heads=4, prefix=block.prefix,
                                                params=block.collect_params())
    if hybridize:
        block.hybridize(static_alloc=True)
        additive.hybridize(static_alloc=True)
    x = mx.nd.random.normal(shape=(3, 6, 16))
    valid_length = mx.nd.array([6, 4, 1])
    selected, selected_w = block(x, valid_length)
    assert additive.attention_mask == 'additive'
    added, added_w = additive(x, valid_length)
    assert np.array_equal(added_w.asnumpy(), selected_w.asnumpy())
    assert np.array_equal(added.asnumpy(), selected.asnumpy())
    assert (added_w.asnumpy()[2, :, :, 1:] == 0).all()
    # the choice made at build time decides the traced graph
    additive_graph = additive(mx.sym.var('x'), mx.sym.var('valid_length'))[0].tojson()
    default_graph = block(mx.sym.var('x'), mx.sym.var('valid_length'))[0].tojson()
    assert '"broadcast_add"' in additive_graph and '"where"' in default_graph
    assert '"broadcast_add"' not in default_graph
    with pytest.raises(ValueError, match="attention_mask must be one of"):
        with kernels.building(attention_mask='bias'):
            gluonbert.MultiHeadAttention(units=16, num_heads=4)


def test_causal_attention_masks_future():
    block = _attention(causal=True)
    x = mx.nd.random.normal(shape=(2, 5, 16))
    _, weights = block(x, mx.nd.array([5, 3]))
    w = weights.asnumpy()
    assert np.allclose(np.triu(w[0, 0], k=1), 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    # the first position sees only itself
    np.testing.assert_allclose(w[:, :, 0, 0], 1.0, rtol=1e-6)


def test_attention_rejects_indivisible_units():
    with pytest.raises(ValueError, match='divisible'):
        gluonbert.MultiHeadAttention(units=10, num_heads=4)


def test_addnorm_and_ffn_shapes():
    addnorm = gluonbert.AddNorm(units=8, dropout=0.1)
    addnorm.initialize()
    x = mx.nd.random.normal(shape=(2, 3, 8))
    out = addnorm(x, x).asnumpy()
    assert out.shape == (2, 3, 8)
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-5)
    ffn = gluonbert.PositionWiseFFN(units=8, hidden_size=20)
    ffn.initialize()
    assert ffn(x).shape == (2, 3, 8)
    assert ffn.ffn_1.weight.shape == (20, 8)


@pytest.mark.parametrize('name', ['gelu', 'gelu_tanh', 'relu', 'tanh'])
def test_activations(name):
    from math import erf, sqrt, tanh, pi
    ref = {'gelu': lambda v: 0.5 * v * (1 + erf(v / sqrt(2))),
           'gelu_tanh': lambda v: 0.5 * v * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 * v ** 3))),
           'relu': lambda v: max(v, 0.0), 'tanh': tanh}[name]
    values = np.linspace(-3, 3, 13)
    got = gluonbert.Activation(name)(mx.nd.array(values)).asnumpy()
    np.testing.assert_allclose(got, [ref(v) for v in values], atol=1e-5)
    with pytest.raises(ValueError, match='unknown activation'):
        gluonbert.Activation('swishy')


def test_encoder_block_shapes_hybrid_equals_imperative():
    block = gluonbert.EncoderBlock(units=16, hidden_size=32, num_heads=4)
    block.initialize(mx.init.Normal(0.2))
    x = mx.nd.random.normal(shape=(2, 5, 16))
    valid_length = mx.nd.array([5, 2])
    eager = block(x, valid_length)
    assert eager.shape == (2, 5, 16)
    block.hybridize()
    np.testing.assert_allclose(block(x, valid_length).asnumpy(), eager.asnumpy(), atol=1e-6)
    np.testing.assert_allclose(block(x, valid_length).asnumpy(), eager.asnumpy(), atol=1e-6)
