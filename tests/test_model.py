"""BERTEncoder, BERTModel, heads and wrappers on a tiny config."""
import json

import numpy as np
import mxnet as mx
import pytest

import gluonbert
from gluonbert.params import parameter_counts
from conftest import make_batch


def _model(config, cls=gluonbert.BERTModel):
    model = cls(config)
    model.initialize()
    return model


def test_encoder_seed_notebook_call(tiny_config):
    encoder = gluonbert.BERTEncoder(vocab_size=99, units=32, hidden_size=64, num_heads=4,
                                    num_layers=2, dropout=0.1, max_length=64)
    encoder.initialize()
    words = mx.nd.random.randint(0, 99, shape=(2, 8)).astype('float32')
    segments = mx.nd.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
    assert encoder(words, segments, None).shape == (2, 8, 32)


def test_model_and_heads_shapes(tiny_config, batch):
    words, segments, valid_length = batch
    model = _model(tiny_config, gluonbert.BERTForPretraining)
    positions = mx.nd.array([[1, 2], [0, 6], [2, 0]])
    sequence, pooled, mlm, nsp = model(words, segments, valid_length, positions)
    assert sequence.shape == (3, 10, 32)
    assert pooled.shape == (3, 32)
    assert mlm.shape == (3, 2, 99)
    assert nsp.shape == (3, 2)
    classifier = gluonbert.BERTClassifier(model.bert, num_classes=3)
    classifier.classifier.initialize()
    assert classifier(words, segments, valid_length).shape == (3, 3)


def test_mlm_decoder_gathers_the_right_positions(tiny_config):
    decoder = gluonbert.MLMDecoder(vocab_size=7, units=4)
    decoder.initialize()
    sequence = mx.nd.random.normal(shape=(2, 5, 4))
    positions = mx.nd.array([[4, 0, 2], [1, 1, 3]])
    logits = decoder(sequence, positions)
    assert logits.shape == (2, 3, 7)
    for b in range(2):
        for m in range(3):
            single = decoder(sequence[b:b + 1, int(positions[b, m].asscalar())]
                             .expand_dims(1), mx.nd.zeros((1, 1)))
            np.testing.assert_allclose(logits[b, m].asnumpy(), single[0, 0].asnumpy(),
                                       atol=1e-6)


def test_mlm_decoder_tied_weight(tiny_config):
    model = _model(tiny_config, gluonbert.BERTForPretraining)
    assert model.mlm_decoder.output_weight is model.bert.encoder.word_embed.weight
    assert model.mlm_decoder.tied
    untied = gluonbert.MLMDecoder(vocab_size=99, units=32)
    assert not untied.tied
    with pytest.raises(ValueError, match='tied embedding weight'):
        gluonbert.MLMDecoder(vocab_size=98, units=32,
                             embedding_weight=model.bert.encoder.word_embed.weight)


def test_padding_after_valid_length_does_not_change_outputs(tiny_config):
    model = _model(tiny_config)
    words, segments, valid_length = make_batch(seq_len=10, valid=(10, 7, 3))
    seq, pooled = model(words, segments, valid_length)
    more_words = mx.nd.concat(words, mx.nd.array(np.random.randint(1, 99, (3, 6))), dim=1)
    more_segments = mx.nd.concat(segments, mx.nd.zeros((3, 6)), dim=1)
    seq2, pooled2 = model(more_words, more_segments, valid_length)
    for row, length in enumerate([10, 7, 3]):
        np.testing.assert_allclose(seq2[row, :length].asnumpy(), seq[row, :length].asnumpy(),
                                   atol=1e-5)
        assert (seq2[row, length:].asnumpy() == 0).all()
    np.testing.assert_allclose(pooled2.asnumpy(), pooled.asnumpy(), atol=1e-5)


@pytest.mark.parametrize('position_embedding', ['learned', 'sinusoidal'])
def test_hybridized_equals_imperative(tiny_config, batch, position_embedding):
    config = gluonbert.BERTConfig.from_preset('tiny', position_embedding=position_embedding)
    model = _model(config, gluonbert.BERTForPretraining)
    positions = mx.nd.array([[1, 2], [0, 6], [2, 0]])
    eager = model(*batch, positions)
    model.hybridize(static_alloc=True)
    for _ in range(2):
        hybrid = model(*batch, positions)
        for a, b in zip(eager, hybrid):
            np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-6)


def test_save_load_parameters_round_trip(tiny_config, batch, tmp_path):
    model = _model(tiny_config, gluonbert.BERTForPretraining)
    positions = mx.nd.array([[1, 2], [0, 6], [2, 0]])
    expected = model(*batch, positions)
    path = str(tmp_path / 'model.params')
    model.save_parameters(path)
    clone = gluonbert.BERTForPretraining(tiny_config)
    clone.load_parameters(path)
    for a, b in zip(expected, clone(*batch, positions)):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_config_json_round_trip(tmp_path):
    config = gluonbert.BERTConfig.from_preset('bert_12_768_12', dropout=0.2)
    assert gluonbert.BERTConfig.from_json(config.to_json()) == config
    path = tmp_path / 'config.json'
    config.save(str(path))
    assert gluonbert.BERTConfig.load(str(path)) == config
    assert json.loads(path.read_text())['units'] == 768
    with pytest.raises(ValueError, match='unknown BERTConfig field'):
        gluonbert.BERTConfig.from_dict({'units': 8, 'colour': 'red'})


def test_every_trainable_parameter_gets_a_gradient(tiny_config, batch):
    model = _model(tiny_config, gluonbert.BERTForPretraining)
    positions = mx.nd.array([[1, 2], [0, 6], [2, 0]])
    with mx.autograd.record():
        _, _, mlm, nsp = model(*batch, positions)
        loss = mlm.sum() * 1e-2 + nsp.sum() + (mlm ** 2).sum() * 1e-3 + (nsp ** 2).sum()
    loss.backward()
    for name, param in model.collect_params().items():
        if param.grad_req == 'null':
            continue
        assert np.abs(param.grad().asnumpy()).sum() > 0, f'{name} has a zero gradient'


def test_bert_base_parameter_count():
    model = gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('bert_12_768_12'))
    assert gluonbert.count_parameters(model) == 109_482_240
    counts = parameter_counts(model)
    assert list(counts)[0] == 'embeddings' and list(counts)[-1] == 'pooler'
    assert counts['embeddings'] == 23_837_184
    assert counts['encoder.layers.0'] == 7_087_872
    assert counts['pooler'] == 590_592
    assert sum(counts.values()) == 109_482_240


@pytest.mark.parametrize('hybridize', [False, True])
def test_bad_inputs_give_clear_errors(tiny_config, hybridize):
    model = _model(tiny_config)
    if hybridize:
        model.hybridize()
    words, segments, _ = make_batch()
    with pytest.raises(ValueError, match='same shape'):
        model(words, segments[:, :5], None)
    with pytest.raises(ValueError, match=r'valid_length values must be in \[1, 10\]'):
        model(words, segments, mx.nd.array([10, 0, 3]))
    with pytest.raises(ValueError, match=r'valid_length values must be in \[1, 10\]'):
        model(words, segments, mx.nd.array([11, 5, 3]))
    too_long = mx.nd.ones((1, 65))
    with pytest.raises(ValueError, match='exceeds the model max_length 64'):
        model(too_long, too_long * 0, None)
    with pytest.raises(ValueError, match='segment ids must be in'):
        model(words, segments + 1, None)
    with pytest.raises(ValueError, match='word ids must be in'):
        model(words + 99, segments, None)
    with pytest.raises(TypeError, match='NDArray'):
        model(words.asnumpy(), segments, None)


def test_config_errors():
    with pytest.raises(ValueError, match='divisible'):
        gluonbert.BERTConfig(units=10, num_heads=4)
    with pytest.raises(ValueError, match='divisible'):
        gluonbert.BERTEncoder(vocab_size=9, units=10, hidden_size=8, num_heads=3,
                              num_layers=1, dropout=0.0)
    with pytest.raises(ValueError, match="unknown BERT preset 'bert_base'"):
        gluonbert.BERTConfig.from_preset('bert_base')
    with pytest.raises(TypeError, match='BERTConfig'):
        gluonbert.BERTModel({'units': 8})
    with pytest.raises(ValueError, match='num_classes'):
        gluonbert.BERTClassifier(gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny')),
                                 num_classes=1)


def test_masked_positions_out_of_range(tiny_config, batch):
    model = _model(tiny_config, gluonbert.BERTForPretraining)
    with pytest.raises(ValueError, match=r'masked_positions must be in \[0, 10\)'):
        model(*batch, mx.nd.array([[1, 10], [0, 1], [0, 1]]))


def test_classifier_info_is_typed_saved_and_read_back(tmp_path):
    from gluonbert.errors import ModelError
    from gluonbert.model import ClassifierInfo
    from stand_ins import WordVocab
    info = ClassifierInfo(['neg', 'neu', 'pos'], max_len=64, truncate='head+tail',
                          kernels='mxnet', calibration_texts=['a b', ['c', 'd']])
    assert ClassifierInfo.from_dict(info.to_dict()) == info
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny')),
                                   num_classes=3, info=info)
    net.initialize()
    vocab = gluonbert.Vocab(WordVocab([f'w{i}' for i in range(94)]).idx_to_token)
    gluonbert.save_pretrained(net, vocab, gluonbert.BERTTokenizer(vocab), str(tmp_path / 'm'))
    loaded = gluonbert.load_pretrained(str(tmp_path / 'm'))[0]
    assert loaded.info == info and loaded.label_names == ['neg', 'neu', 'pos']
    # the kernels that trained it are recorded; the loaded model computes with this machine's
    assert loaded.config.kernels == gluonbert.ops.resolve_kernels('auto')
    # a default classifier names its classes by id, not as movie reviews
    plain = gluonbert.BERTClassifier(gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny')))
    assert plain.label_names == ['0', '1']
    with pytest.raises(ModelError, match='2 label names for 3 classes'):
        net.info = ClassifierInfo(['a', 'b'])
    with pytest.raises(ModelError, match="truncate must be one of"):
        ClassifierInfo(['a', 'b'], truncate='tail')
    with pytest.raises(ModelError, match='unknown classifier info field'):
        ClassifierInfo.from_dict({'label_names': ['a', 'b'], 'colour': 'red'})
