"""Parity with GluonNLP's BERT: random GluonNLP weights, converted, same outputs."""
import numpy as np
import mxnet as mx
import pytest

import gluonbert
from conftest import FLOAT32_EPS, assert_close, make_batch


def _gluonnlp_bert(config, use_decoder=True, use_classifier=True):
    model = gluonbert.convert.gluonnlp_model(config, use_decoder=use_decoder,
                                             use_classifier=use_classifier)
    # wide weights so that differences would show
    model.initialize(mx.init.Normal(0.3))
    return model


# float32 rounding compounds over the layers, and the two sides sum their products in other
# orders (GluonNLP's kernels and gluonbert's): measured up to 27 eps x max|reference| (the
# pooled tanh output) on an AVX2-only EPYC, and 1 ulp of mlm logits near 128 (2^-16) in
# another AVX2 run; 64 eps leaves more than twice that.
PARITY_RTOL = 64 * FLOAT32_EPS


def _assert_parity(source, converted, words, segments, valid_length, positions, hybridize):
    if hybridize:
        source.hybridize(static_alloc=True)
        converted.hybridize(static_alloc=True)
    for _ in range(2 if hybridize else 1):
        seq_a, pooled_a, nsp_a, mlm_a = source(words, segments, valid_length, positions)
        seq_b, pooled_b, mlm_b, nsp_b = converted(words, segments, valid_length, positions)
        for name, a, b in [('sequence', seq_a, seq_b), ('pooled', pooled_a, pooled_b),
                           ('nsp', nsp_a, nsp_b), ('mlm', mlm_a, mlm_b)]:
            assert_close(b.asnumpy(), a.asnumpy(), rtol=PARITY_RTOL, name=name)


@pytest.mark.parametrize('hybridize', [False, True])
def test_tiny_parity_with_gluonnlp(hybridize):
    config = gluonbert.BERTConfig.from_preset('tiny')
    source = _gluonnlp_bert(config)
    converted = gluonbert.from_gluonnlp(source)
    assert isinstance(converted, gluonbert.BERTForPretraining)
    assert converted.config.layer_norm_eps == config.layer_norm_eps
    words, segments, valid_length = make_batch(valid=(10, 7, 3))
    positions = mx.nd.array([[1, 2, 3], [0, 6, 1], [2, 0, 1]])
    _assert_parity(source, converted, words, segments, valid_length, positions, hybridize)


def test_bert_base_parity_with_gluonnlp():
    config = gluonbert.BERTConfig.from_preset('bert_12_768_12')
    source = _gluonnlp_bert(config)
    # GluonNLP's zoo models use LayerNorm eps 1e-5; the converter must carry it over.
    for cell in source.encoder.transformer_cells:
        assert cell.layer_norm._kwargs['eps'] == 1e-12
    source.initialize(mx.init.Normal(0.02), force_reinit=True)
    converted = gluonbert.from_gluonnlp(source)
    words, segments, valid_length = make_batch(vocab_size=30522, batch=3, seq_len=16,
                                               valid=(16, 9, 4), split=6)
    positions = mx.nd.array([[1, 2, 15], [0, 8, 3], [2, 0, 1]])
    _assert_parity(source, converted, words, segments, valid_length, positions, False)
    _assert_parity(source, converted, words, segments, valid_length, positions, True)


def test_converter_carries_eps_activation_and_skips_heads():
    config = gluonbert.BERTConfig.from_preset('tiny', num_layers=1, layer_norm_eps=1e-5,
                                              activation='relu', dropout=0.0)
    source = _gluonnlp_bert(config, use_decoder=False, use_classifier=False)
    converted = gluonbert.from_gluonnlp(source)
    assert isinstance(converted, gluonbert.BERTModel)
    assert converted.config.layer_norm_eps == 1e-5
    assert converted.config.activation == 'relu'
    words, segments, valid_length = make_batch()
    seq_a, pooled_a = source(words, segments, valid_length)
    seq_b, pooled_b = converted(words, segments, valid_length)
    assert_close(seq_b.asnumpy(), seq_a.asnumpy(), rtol=PARITY_RTOL, name='sequence')
    assert_close(pooled_b.asnumpy(), pooled_a.asnumpy(), rtol=PARITY_RTOL, name='pooled')
    # a model with heads can be converted without them
    with_heads = _gluonnlp_bert(config)
    assert isinstance(gluonbert.from_gluonnlp(with_heads, with_heads=False),
                      gluonbert.BERTModel)


def test_converter_rejects_wrong_input():
    with pytest.raises(TypeError, match='gluonnlp.model.BERTModel'):
        gluonbert.from_gluonnlp(mx.gluon.nn.Dense(3))


def test_assign_parameters_reports_every_problem():
    from gluonbert.convert import assign_parameters
    model = gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny'))
    model.initialize()
    with pytest.raises(ValueError) as info:
        assign_parameters(model, {'pooler.bias': np.zeros(3), 'bogus.weight': np.zeros(1)},
                          source='test')
    message = str(info.value)
    assert 'missing from test: encoder.word_embed.weight' in message
    assert 'not used from test: bogus.weight' in message
    assert 'pooler.bias: (3,) vs (32,)' in message


@pytest.mark.parametrize('value, why', [
    (np.full((32,), np.nan, dtype=np.float32), 'holds NaN or infinite values'),
    (mx.nd.array(np.r_[np.zeros(31), np.inf]), 'holds NaN or infinite values'),
    (np.zeros(32, dtype=np.int64), 'is int64, not floating point'),
    (mx.nd.zeros(32, dtype='int32'), 'is int32, not floating point'),
], ids=['nan numpy', 'inf NDArray', 'int64 numpy', 'int32 NDArray'])
def test_assign_parameters_refuses_unusable_tensors_and_sets_nothing(value, why):
    from gluonbert.convert import assign_parameters
    from gluonbert.errors import ModelError
    from gluonbert.params import named_parameters
    model = gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny'))
    model.initialize()
    arrays = {n: p.data().copy() for n, p in named_parameters(model).items()}
    before = arrays['encoder.word_embed.weight'].asnumpy()
    arrays['encoder.word_embed.weight'] = mx.nd.ones_like(arrays['encoder.word_embed.weight'])
    arrays['pooler.bias'] = value
    with pytest.raises(ModelError) as error:
        assign_parameters(model, arrays, source='weights.bin',
                          source_names={'pooler.bias': 'pooler.dense.bias'})
    assert str(error.value) == (f"weights.bin: tensor pooler.dense.bias {why}; the weights are "
                                f"damaged (or not a model's), load them from a good copy")
    # refused before any parameter was set
    np.testing.assert_array_equal(
        named_parameters(model)['encoder.word_embed.weight'].data().asnumpy(), before)


def test_assign_parameters_initializes_on_a_context():
    """With ctx: given arrays become the parameters (no random init first); allowed-missing
    ones are initialized as their blocks ask."""
    from gluonbert.convert import assign_parameters
    from gluonbert.params import named_parameters
    config = gluonbert.BERTConfig.from_preset('tiny')
    source = gluonbert.BERTForPretraining(bert=gluonbert.BERTModel(config))
    source.initialize(mx.init.Normal(0.5))
    arrays = {n: p.data().copy() for n, p in named_parameters(source).items()
              if not n.startswith('ns_classifier.')}
    target = gluonbert.BERTForPretraining(bert=gluonbert.BERTModel(config))
    assign_parameters(target, arrays, allow_missing=['ns_classifier.dense.weight',
                                                     'ns_classifier.dense.bias'], ctx=mx.cpu())
    got = named_parameters(target)
    for name, value in arrays.items():
        assert np.array_equal(got[name].data().asnumpy(), value.asnumpy()), name
    weight = got['ns_classifier.dense.weight'].data().asnumpy()
    assert weight.std() > 0 and abs(weight.std() - 0.02) < 0.01  # BERT's N(0, 0.02) init


@pytest.mark.parametrize('activation', ['gelu', 'gelu_tanh', 'relu'])
def test_gluonnlp_model_round_trips_the_config(activation):
    config = gluonbert.BERTConfig.from_preset('tiny', activation=activation,
                                              layer_norm_eps=1e-6, max_length=48)
    source = gluonbert.convert.gluonnlp_model(config)
    source.initialize()
    back = gluonbert.from_gluonnlp(source).config
    for field in ('vocab_size', 'units', 'hidden_size', 'num_heads', 'num_layers',
                  'max_length', 'type_vocab_size', 'dropout', 'layer_norm_eps', 'activation'):
        assert getattr(back, field) == getattr(config, field), field
