"""gluonbert-export --format hf, through the console command in-process: a directory in
Hugging Face's BertForSequenceClassification layout that transformers loads as it is (its
model, tokenizer and pipeline give gluonbert's answers), tested against real transformers
where it is installed (torch is not required in CI)."""
import json
import os

import numpy as np
import pytest

from conftest import assert_close
from export_models import LABELS, MAX_LEN, PAIRS, TEXTS, other_heads, \
    save_classifier, tiny_classifier
from gluonbert.cli.export import export_main
from gluonbert.hf_export import encode_inputs, gluonbert_logits, softmax, transformers_available

needs_transformers = pytest.mark.skipif(
    not transformers_available(), reason='transformers and torch are not installed: the '
    'export is checked with gluonbert\'s reader only')


@pytest.fixture(scope='module')
def exported(classifier, vocabulary, tmp_path_factory):
    model_dir = save_classifier(classifier, *vocabulary, tmp_path_factory.mktemp('m') / 'm')
    out = str(tmp_path_factory.mktemp('hf') / 'exported')
    assert export_main(['--model-dir', model_dir, '--output', out, '--format', 'hf']) == 0
    return out


def expected_shapes(units=32, hidden=64, layers=2, vocab=30522, positions=64, types=2):
    """BertForSequenceClassification's parameters, written out from its layout."""
    shapes = {'bert.embeddings.word_embeddings.weight': (vocab, units),
              'bert.embeddings.position_embeddings.weight': (positions, units),
              'bert.embeddings.token_type_embeddings.weight': (types, units),
              'bert.embeddings.LayerNorm.weight': (units,),
              'bert.embeddings.LayerNorm.bias': (units,),
              'bert.pooler.dense.weight': (units, units), 'bert.pooler.dense.bias': (units,),
              'classifier.weight': (len(LABELS), units), 'classifier.bias': (len(LABELS),)}
    for i in range(layers):
        p = f'bert.encoder.layer.{i}.'
        for name in ('attention.self.query', 'attention.self.key', 'attention.self.value',
                     'attention.output.dense'):
            shapes.update({p + name + '.weight': (units, units), p + name + '.bias': (units,)})
        shapes.update({p + 'intermediate.dense.weight': (hidden, units),
                       p + 'intermediate.dense.bias': (hidden,),
                       p + 'output.dense.weight': (units, hidden),
                       p + 'output.dense.bias': (units,)})
        for norm in ('attention.output.LayerNorm', 'output.LayerNorm'):
            shapes.update({p + norm + '.weight': (units,), p + norm + '.bias': (units,)})
    return shapes


def test_safetensors_hold_bert_for_sequence_classification(exported, classifier):
    from safetensors.numpy import load_file
    tensors = load_file(os.path.join(exported, 'model.safetensors'))
    assert {n: t.shape for n, t in tensors.items()} == expected_shapes()
    assert all(t.dtype == np.float32 for t in tensors.values())
    np.testing.assert_array_equal(tensors['classifier.weight'],
                                  classifier.classifier[1].weight.data().asnumpy())
    np.testing.assert_array_equal(tensors['bert.encoder.layer.1.attention.self.key.bias'],
                                  classifier.bert.encoder.layers[1].attention.key.bias.data()
                                  .asnumpy())


def test_config_and_tokenizer_files(exported, vocabulary):
    vocab, tokenizer = vocabulary
    assert sorted(os.listdir(exported)) == ['config.json', 'model.safetensors',
                                            'special_tokens_map.json', 'tokenizer_config.json',
                                            'vocab.txt']
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(exported):  # as open() would make them, not private temporaries
        assert os.stat(os.path.join(exported, name)).st_mode & 0o777 == 0o666 & ~umask, name

    def read(name):
        return json.load(open(os.path.join(exported, name), encoding='utf-8'))
    config = read('config.json')
    assert (config['model_type'], config['architectures']) == (
        'bert', ['BertForSequenceClassification'])
    assert config['id2label'] == {'0': 'negative', '1': 'neutral', '2': 'positive'}
    assert config['label2id'] == {'negative': 0, 'neutral': 1, 'positive': 2}
    assert {k: config[k] for k in ('hidden_size', 'num_hidden_layers', 'num_attention_heads',
                                   'intermediate_size', 'hidden_act', 'layer_norm_eps',
                                   'max_position_embeddings', 'type_vocab_size', 'vocab_size',
                                   'do_lower_case')} == {
        'hidden_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 4,
        'intermediate_size': 64, 'hidden_act': 'gelu', 'layer_norm_eps': 1e-12,
        'max_position_embeddings': 64, 'type_vocab_size': 2, 'vocab_size': len(vocab),
        'do_lower_case': True}
    settings = read('tokenizer_config.json')
    assert (settings['tokenizer_class'], settings['do_lower_case'],
            settings['model_max_length']) == ('BertTokenizer', tokenizer.lower, MAX_LEN)
    assert read('special_tokens_map.json') == {
        'unk_token': '[UNK]', 'sep_token': '[SEP]', 'pad_token': '[PAD]',
        'cls_token': '[CLS]', 'mask_token': '[MASK]'}


def test_gluonbert_reads_the_classifier_back(exported, classifier):
    """The export, read with gluonbert's Hugging Face reader, is the classifier again: its
    labels, and its logits bit for bit."""
    from gluonbert.pretrained import load_pretrained
    net, vocab, tokenizer = load_pretrained(str(exported))
    assert net.label_names == classifier.label_names
    inputs = encode_inputs(classifier, vocab, tokenizer, TEXTS)
    import mxnet as mx
    args = (mx.nd.array(inputs['input_ids']), mx.nd.array(inputs['token_type_ids']),
            mx.nd.array(inputs['attention_mask'].sum(1)))
    np.testing.assert_array_equal(net(*args).asnumpy(), classifier(*args).asnumpy())


def test_export_says_what_it_checked(classifier, vocabulary, tmp_path, capsys, monkeypatch):
    from gluonbert import hf_export
    monkeypatch.setattr(hf_export, 'transformers_available', lambda: False)
    model_dir = save_classifier(classifier, *vocabulary, tmp_path / 'm')
    assert export_main(['--model-dir', model_dir, '--output', str(tmp_path / 'o'),
                        '--format', 'hf']) == 0
    said = capsys.readouterr().out
    assert "read back with gluonbert's Hugging Face reader: the encoder equal" in said
    assert 'transformers is not installed: not loaded with it' in said
    assert os.path.isfile(tmp_path / 'o' / 'model.safetensors')


@needs_transformers
def test_transformers_loads_it_as_it_is(exported, classifier, vocabulary):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    vocab, tokenizer = vocabulary
    hf_tokenizer = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    # the same ids as gluonbert's tokenizer, accents, capitals, punctuation and truncation
    for text in TEXTS:
        assert hf_tokenizer(text, truncation=True)['input_ids'] == \
            encode_inputs(classifier, vocab, tokenizer, [text])['input_ids'][0].tolist(), text
    inputs = encode_inputs(classifier, vocab, tokenizer, TEXTS)
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    expected = gluonbert_logits(classifier, inputs)
    # float32 rounding in two implementations: ~1e-6 of the logits (measured 1e-9 absolute)
    assert_close(logits, expected, rtol=1e-5, name='transformers logits')
    assert np.ptp(softmax(expected), axis=0).max() > 0.1  # the answers depend on the text

    answers = pipeline('text-classification', model=exported, device='cpu')(TEXTS)
    probabilities = softmax(expected)
    assert [a['label'] for a in answers] == [LABELS[i] for i in probabilities.argmax(1)]
    assert_close([a['score'] for a in answers], probabilities.max(1), rtol=1e-4,
                 name='pipeline scores')


@needs_transformers
def test_a_sentence_pair_model_keeps_its_segments(vocabulary, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    vocab, tokenizer = vocabulary
    net = tiny_classifier(vocab, tokenizer, text_pair=True)
    model_dir = save_classifier(net, vocab, tokenizer, tmp_path / 'm')
    out = str(tmp_path / 'o')
    assert export_main(['--model-dir', model_dir, '--output', out, '--format', 'hf']) == 0
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    encoded = hf_tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                           truncation=True, return_tensors='np')
    inputs = encode_inputs(net, vocab, tokenizer, PAIRS)
    for key in ('input_ids', 'token_type_ids', 'attention_mask'):
        np.testing.assert_array_equal(encoded[key], inputs[key])
    assert inputs['token_type_ids'].max() == 1  # segment B is there
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    assert_close(logits, gluonbert_logits(net, inputs), rtol=1e-5, name='pair logits')


def test_an_activation_transformers_cannot_name_is_refused(vocabulary, tmp_path, capsys):
    net = tiny_classifier(*vocabulary, activation='sigmoid')
    model_dir = save_classifier(net, *vocabulary, tmp_path / 'm')
    assert export_main(['--model-dir', model_dir, '--output', str(tmp_path / 'o'),
                        '--format', 'hf']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gluonbert-export: error: activation 'sigmoid' has no Hugging Face "
                          "BERT name") and len(err.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ['m']


@pytest.mark.parametrize('kind', ['BERTForTokenClassification', 'BERTForPretraining',
                                  'BERTModel'])
def test_other_heads_are_refused_in_one_line(vocabulary, tmp_path, capsys, kind):
    directory = other_heads(*vocabulary, tmp_path, kind)
    assert export_main(['--model-dir', directory, '--output', str(tmp_path / 'out'),
                        '--format', 'hf']) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f'gluonbert-export: error: {directory} holds a {kind}, not a fine-tuned '
                   f'sentence classifier (export and predict take those only)')
    assert not (tmp_path / 'out').exists()


def test_hf_takes_float32_only(tmp_path, capsys):
    assert export_main(['--model-dir', str(tmp_path), '--output', str(tmp_path / 'o'),
                        '--format', 'hf', '--dtype', 'int8']) == 2
    assert capsys.readouterr().err.strip() == (
        'gluonbert-export: error: --format hf writes float32; drop --dtype int8 (or use '
        '--format mxnet)')


@needs_transformers
def test_pairs_cut_otherwise_by_transformers_do_not_fail_the_check(vocabulary, tmp_path,
                                                                   capsys):
    """BertTokenizer breaks ties between the two sides of a long pair the other way (and
    has no head+tail): such pairs are left out of the id comparison, not a failed export."""
    from gluonbert.data import BERTTransform
    from transformers import AutoTokenizer
    vocab, tokenizer = vocabulary
    long_pair = ['a good film ' * 10, 'bad acting ' * 10]
    net = tiny_classifier(vocab, tokenizer, text_pair=True)
    net.info = net.info_with(calibration_texts=PAIRS + [long_pair])
    model_dir = save_classifier(net, vocab, tokenizer, tmp_path / 'm')
    out = str(tmp_path / 'o')
    assert export_main(['--model-dir', model_dir, '--output', out, '--format', 'hf']) == 0
    assert 'same token ids' in capsys.readouterr().out
    ours = BERTTransform(tokenizer, vocab, max_len=MAX_LEN, pair=True)(tuple(long_pair))[0]
    theirs = AutoTokenizer.from_pretrained(out)(*long_pair, truncation=True)['input_ids']
    assert len(theirs) == len(ours) == MAX_LEN and theirs != ours.tolist()  # cut otherwise


@needs_transformers
@pytest.mark.parametrize('config', [dict(activation='gelu_tanh', position_embedding='sinusoidal'),
                                    dict(activation='relu', type_vocab_size=1)])
def test_other_configs_give_gluonbert_logits_in_transformers(vocabulary, tmp_path, config):
    """tanh GELU (hidden_act gelu_new) with a sinusoidal table (then a fixed position
    embedding), ReLU with one segment type."""
    import torch
    from transformers import AutoModelForSequenceClassification
    vocab, tokenizer = vocabulary
    net = tiny_classifier(vocab, tokenizer, **config)
    model_dir = save_classifier(net, vocab, tokenizer, tmp_path / 'm')
    out = str(tmp_path / 'o')
    assert export_main(['--model-dir', model_dir, '--output', out, '--format', 'hf']) == 0
    inputs = encode_inputs(net, vocab, tokenizer, TEXTS)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    assert_close(logits, gluonbert_logits(net, inputs), rtol=1e-5, name='logits')


def test_max_len_sets_the_tokenizers_length(classifier, vocabulary, tmp_path):
    model_dir = save_classifier(classifier, *vocabulary, tmp_path / 'm')
    out = tmp_path / 'o'
    assert export_main(['--model-dir', model_dir, '--output', str(out), '--format', 'hf',
                        '--max-len', '12']) == 0  # the long check text is cut at 12 by both
    settings = json.loads((out / 'tokenizer_config.json').read_text(encoding='utf-8'))
    assert settings['model_max_length'] == 12
