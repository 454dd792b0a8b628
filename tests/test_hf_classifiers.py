"""Hugging Face sentence classifiers in (issue 28, item 3): a ``BertForSequenceClassification``
directory loads as a BERTClassifier with its head and its ``id2label``, through
``load_pretrained``, ``gluonbert-predict --model-dir`` and ``gluonbert-finetune --model``.

Directories written from known tensors with ``safetensors.numpy`` run everywhere; where
transformers is importable, a tiny ``BertForSequenceClassification`` it builds and saves
must predict the same with gluonbert (single texts and sentence pairs). The damaged
fields and head tensors are in test_hostile_models.py.
"""
import inspect
import json
import math

import numpy as np
import mxnet as mx
import pytest

import gluonbert
from gluonbert import BERTClassifier, BERTConfig
from gluonbert.cli import finetune_main
from gluonbert.cli.predict import predict_main
from gluonbert.data import BERTTransform
from gluonbert.hf_classifier import DEFAULT_MAX_LEN, read_hf_max_len, start_head_from
from gluonbert.model import ClassifierInfo
from gluonbert.params import named_parameters
from gluonbert.tokenizer import BERTTokenizer, Vocab
from conftest import FLOAT32_EPS, assert_close, make_batch
from stand_ins import NEGATIVE, POSITIVE, write_review_csv
from test_hostile_models import (HF_CLASSIFIER_CONFIG, SPECIALS, tiny_bert,
                                 write_hf_classifier_directory)

LABELS = ['negative', 'neutral', 'positive']
# float32 rounding of two implementations of the same arithmetic (transformers' and MXNet's
# kernels), relative to the outputs' magnitude: as for the encoders in test_pretrained.py
PARITY = 64 * FLOAT32_EPS


def classifier_config(labels, **changes):
    config = dict(HF_CLASSIFIER_CONFIG, id2label={str(i): n for i, n in enumerate(labels)},
                  label2id={n: i for i, n in enumerate(labels)}, num_labels=len(labels))
    config.update(changes)
    return config


def tiny_classifier(labels, seed):
    net = BERTClassifier(tiny_bert(seed), num_classes=len(labels))
    net.classifier.initialize(mx.init.Normal(0.5))
    return net


@pytest.fixture(scope='module')
def vocab():
    return Vocab(SPECIALS + [f'w{i}' for i in range(94)])


@pytest.fixture(scope='module')
def written(tmp_path_factory, vocab):
    """``(directory, net)``: a 3-class classifier written from gluonbert's tensors with
    safetensors.numpy, as Hugging Face names them."""
    directory = tmp_path_factory.mktemp('written') / 'cls'
    net = tiny_classifier(LABELS, seed=7)
    write_hf_classifier_directory(net, vocab, str(directory), classifier_config(LABELS),
                                  max_len=48)
    return directory, net


def _logits(net, batch):
    return net(*batch).asnumpy()


# ------------------------------------------------------------------ written with numpy
def test_a_numpy_written_classifier_loads_with_its_head_and_labels(written):
    directory, original = written
    net, vocab, tokenizer = gluonbert.load_pretrained(str(directory))
    assert isinstance(net, BERTClassifier)
    assert net.label_names == LABELS and net.num_classes == 3
    assert net.info == ClassifierInfo(LABELS, max_len=48)  # single texts, 'head' truncation
    assert net.head_dropout == HF_CLASSIFIER_CONFIG['hidden_dropout_prob']
    assert len(vocab) == 99 and tokenizer.lower
    batch = make_batch(vocab_size=99)
    # the same weights through the same code: bit for bit
    assert np.array_equal(_logits(net, batch), _logits(original, batch))
    ours = {n: p.data().asnumpy() for n, p in named_parameters(net).items()}
    theirs = {n: p.data().asnumpy() for n, p in named_parameters(original).items()}
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[n], theirs[n]) for n in ours)


def test_predict_gives_the_labels_and_probabilities_of_the_classifier(written, vocab, capsys):
    directory, original = written
    texts = ['w1 w2 w3', 'w5 w9', 'w40 w41 w42 w43 w44 w45 w46 w47']
    capsys.readouterr()
    assert predict_main(['--model-dir', str(directory), *texts]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    original.info = ClassifierInfo(LABELS, max_len=48)
    expected = gluonbert.predict(original, mx.cpu(), vocab, BERTTokenizer(vocab), texts)
    assert [line['label'] for line in lines] == [p.label for p in expected]
    for line, prediction in zip(lines, expected):
        assert sorted(line['probabilities']) == sorted(LABELS)
        for name in LABELS:  # printed to 6 decimals
            assert line['probabilities'][name] == pytest.approx(
                prediction.probabilities[name], abs=5e-7 + 64 * FLOAT32_EPS)


def test_labels_default_as_transformers_names_them_and_the_head_dropout_is_read(
        tmp_path, vocab):
    net = tiny_classifier(['a', 'b', 'c'], seed=8)
    config = classifier_config(['a', 'b', 'c'], classifier_dropout=0.25)
    for key in ('id2label', 'label2id', 'problem_type'):
        del config[key]
    write_hf_classifier_directory(net, vocab, str(tmp_path / 'cls'), config)
    loaded, _, _ = gluonbert.load_pretrained(str(tmp_path / 'cls'))
    assert loaded.label_names == ['LABEL_0', 'LABEL_1', 'LABEL_2']
    assert loaded.head_dropout == 0.25


@pytest.mark.parametrize('model_max_length, max_position, expected', [
    (48, 64, 48), (1000, 64, 64), (10 ** 30, 64, 64), (1e30, 512, DEFAULT_MAX_LEN),
    (None, 512, DEFAULT_MAX_LEN), (300, 512, 300), (3, 512, 3), ('absent', 64, 64),
    ('no file', 512, DEFAULT_MAX_LEN)])
def test_max_len_comes_from_model_max_length_bounded_by_the_positions(
        tmp_path, model_max_length, max_position, expected):
    if model_max_length != 'no file':
        settings = {} if model_max_length == 'absent' else \
            {'model_max_length': model_max_length}
        (tmp_path / 'tokenizer_config.json').write_text(json.dumps(settings))
    config = BERTConfig.from_preset('tiny', max_length=max_position)
    assert read_hf_max_len(str(tmp_path), config) == expected


def test_a_pytorch_pickle_classifier_loads_and_its_head_is_checked(written, tmp_path):
    torch = pytest.importorskip('torch', reason='torch writes pytorch_model.bin')
    from safetensors.numpy import load_file
    directory, original = written
    import shutil
    shutil.copytree(directory, tmp_path / 'pickle')
    tensors = load_file(str(tmp_path / 'pickle' / 'model.safetensors'))
    (tmp_path / 'pickle' / 'model.safetensors').unlink()
    torch.save({n: torch.from_numpy(v) for n, v in tensors.items()},
               str(tmp_path / 'pickle' / 'pytorch_model.bin'))
    net, _, _ = gluonbert.load_pretrained(str(tmp_path / 'pickle'))
    batch = make_batch(vocab_size=99)
    assert np.array_equal(_logits(net, batch), _logits(original, batch))
    tensors['classifier.bias'] = np.zeros(2, np.float32)
    torch.save({n: torch.from_numpy(v) for n, v in tensors.items()},
               str(tmp_path / 'pickle' / 'pytorch_model.bin'))
    with pytest.raises(gluonbert.errors.ModelError,
                       match=r'pytorch_model.bin: classifier.bias is 2, expected 3 '):
        gluonbert.load_pretrained(str(tmp_path / 'pickle'))


def test_other_heads_are_read_as_their_encoder(written, tmp_path, vocab):
    directory, original = written
    net = tiny_classifier(LABELS, seed=7)  # the same weights as the written one
    config = classifier_config(LABELS, architectures=['BertForTokenClassification'])
    write_hf_classifier_directory(net, vocab, str(tmp_path / 'tokens'), config)
    bert, _, _ = gluonbert.load_pretrained(str(tmp_path / 'tokens'))
    assert type(bert) is gluonbert.BERTModel
    batch = make_batch(vocab_size=99)
    assert np.array_equal(bert(*batch)[1].asnumpy(), original.bert(*batch)[1].asnumpy())


# ---------------------------------------------------------------- through finetune
@pytest.fixture(scope='module')
def reviews(tmp_path_factory):
    root = tmp_path_factory.mktemp('reviews')
    rows = [(t, 'positive') for t in POSITIVE] + [(t, 'negative') for t in NEGATIVE]
    return write_review_csv(root / 'train.csv', rows), write_review_csv(root / 'test.csv', rows)


LR = 1e-9


def _finetune(model, reviews, output, capsys):
    train, test = reviews
    capsys.readouterr()
    code = finetune_main(['--model', str(model), '--train', train, '--test', test,
                          '--text-column', 'review', '--label-column', 'sentiment',
                          '--epochs', '1', '--batch-size', '4', '--max-len', '16',
                          '--lr', str(LR), '--output-dir', str(output), '--no-progress'])
    out = capsys.readouterr().out
    assert code == 0, out
    saved, _, _ = gluonbert.load_pretrained(str(output / 'model'))
    return out, saved.classifier[1].weight.data().asnumpy()


@pytest.mark.parametrize('labels, continues', [(['negative', 'positive'], True),
                                               (['positive', 'negative'], False),
                                               (LABELS, False)])
def test_finetune_continues_from_the_classifier_when_the_labels_are_the_datas(
        tmp_path, vocab, reviews, capsys, labels, continues):
    net = tiny_classifier(labels, seed=9)
    write_hf_classifier_directory(net, vocab, str(tmp_path / 'cls'), classifier_config(labels))
    out, head = _finetune(tmp_path / 'cls', reviews, tmp_path / 'out', capsys)
    notes = [line for line in out.splitlines() if 'classifier' in line]
    # AdamW moves a weight by at most (1 - beta1) / sqrt(1 - beta2) = 3.2 lr a step (plus
    # lr x weight decay x |w|): 12 examples in batches of 4 are 3 steps of lr 1e-9
    bound = 3 * LR * (3.2 + 0.01 * 2)
    if continues:
        assert notes == ["continuing from the model's classifier (labels negative, positive, "
                         "as the data's)"]
        assert_close(head, net.classifier[1].weight.data().asnumpy(), rtol=0, atol=bound,
                     name='the head after fine-tuning at lr 1e-9')
    else:
        assert notes == [f"note: the model's classifier has labels {', '.join(labels)}, the "
                         f"data negative, positive: a fresh classifier is trained on its "
                         f"encoder"]
        if head.shape == net.classifier[1].weight.shape:
            assert np.abs(head - net.classifier[1].weight.data().asnumpy()).max() > 1e3 * bound


def test_start_head_from_copies_the_head_of_a_classifier_only(written):
    _, source = written
    same = BERTClassifier(source.bert, num_classes=3, info=ClassifierInfo(LABELS))
    same.classifier.initialize()
    assert start_head_from(same, source).startswith('continuing from')
    for mine, theirs in zip(same.classifier.collect_params().values(),
                            source.classifier.collect_params().values()):
        assert np.array_equal(mine.data().asnumpy(), theirs.data().asnumpy())
    assert start_head_from(same, source.bert) is None  # an encoder has no head


# ------------------------------------------------------------- against transformers
WORDS = ['the', 'a', 'movie', 'film', 'was', 'is', 'great', 'bad', 'awful', 'good', 'not',
         'i', 'loved', 'it', 'hated', 'plot', 'acting', 'story', 'and', 'but', '##s', '##ing',
         ',', '.', '!', '?']


@pytest.fixture(scope='module')
def hf_model(tmp_path_factory):
    """``(directory, model, tokenizer)``: a tiny BertForSequenceClassification built and
    saved by transformers, every weight drawn from N(0, 0.3) (LayerNorm scales around 1)
    so that the logits are of order 1, not transformers' 0.02 initialisation."""
    torch = pytest.importorskip('torch', reason='transformers needs torch')
    transformers = pytest.importorskip('transformers', reason='the parity check needs it')
    directory = tmp_path_factory.mktemp('transformers') / 'cls'
    directory.mkdir()
    (directory / 'vocab.txt').write_text('\n'.join(SPECIALS + WORDS) + '\n')
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
        type_vocab_size=2, id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)})
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(1.0 if 'LayerNorm.weight' in name else 0.0, 0.3)
    save = model.save_pretrained
    save(str(directory), **({'safe_serialization': True} if 'safe_serialization' in
                             inspect.signature(save).parameters else {}))
    assert (directory / 'model.safetensors').exists()
    tokenizer = transformers.BertTokenizer(str(directory / 'vocab.txt'))
    tokenizer.save_pretrained(str(directory))
    return directory, model, tokenizer


SINGLE = ['the movie was great!', 'i hated the acting, not good.', 'plot',
          'a good story but awful acting and a bad plot?']
PAIRS = [('the movie was great', 'i loved it'), ('bad plot', 'the acting is good!'),
         ('a film', 'not a movie, not a story, not good')]


def _transformers_logits(model, encoded):
    import torch
    with torch.no_grad():
        inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in encoded.items()}
        return model(**inputs).logits.numpy()


def _ours(net, vocab, tokenizer, items, pair):
    """``(ids, segments, logits)`` of gluonbert's own encoding of ``items``."""
    transform = BERTTransform(tokenizer, vocab, max_len=net.info.max_len, pair=pair)
    encoded = [transform(item) for item in items]
    width = max(length for _, length, _ in encoded)
    words = np.full((len(items), width), vocab.pad_id)
    segments = np.zeros((len(items), width))
    for row, (ids, length, segment) in enumerate(encoded):
        words[row, :length], segments[row, :length] = ids[:length], segment[:length]
    lengths = [int(length) for _, length, _ in encoded]
    logits = net(mx.nd.array(words), mx.nd.array(segments), mx.nd.array(lengths)).asnumpy()
    return ([list(ids[:n]) for (ids, _, _), n in zip(encoded, lengths)],
            [list(seg[:n]) for (_, _, seg), n in zip(encoded, lengths)], logits)


def _unpadded(encoded, key):
    return [list(row[:int(mask.sum())]) for row, mask in
            zip(encoded[key], encoded['attention_mask'])]


def test_logits_and_probabilities_equal_transformers(hf_model, capsys):
    directory, model, hf_tokenizer = hf_model
    net, vocab, tokenizer = gluonbert.load_pretrained(str(directory))
    assert net.label_names == LABELS and net.info.max_len == 64  # "no limit", 64 positions
    encoded = hf_tokenizer(SINGLE, padding=True, return_tensors='np')
    reference = _transformers_logits(model, encoded)
    ids, _, logits = _ours(net, vocab, tokenizer, SINGLE, pair=False)
    assert ids == _unpadded(encoded, 'input_ids')
    assert_close(logits, reference, rtol=PARITY, name='logits')
    assert np.abs(reference).max() > 0.5  # logits of order 1: the comparison means something
    exp = np.exp(reference - reference.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    capsys.readouterr()
    assert predict_main(['--model-dir', str(directory), *SINGLE]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line['label'] for line in lines] == \
        [model.config.id2label[i] for i in reference.argmax(axis=1)]
    printed = np.array([[line['probabilities'][n] for n in LABELS] for line in lines])
    assert_close(printed, probabilities, rtol=PARITY, atol=5e-7, name='probabilities')


def test_sentence_pairs_with_token_type_ids_equal_transformers(hf_model):
    directory, model, hf_tokenizer = hf_model
    net, vocab, tokenizer = gluonbert.load_pretrained(str(directory))
    net.info = net.info_with(text_pair=True)  # a config does not say; the caller does
    encoded = hf_tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                           return_tensors='np')
    reference = _transformers_logits(model, encoded)
    ids, segments, logits = _ours(net, vocab, tokenizer, PAIRS, pair=True)
    assert ids == _unpadded(encoded, 'input_ids')
    assert segments == _unpadded(encoded, 'token_type_ids')
    assert any(1 in row for row in segments)
    assert_close(logits, reference, rtol=PARITY, name='pair logits')
    # the segments matter: without them the logits are far from transformers'
    words = mx.nd.array(encoded['input_ids'].astype('float32'))
    lengths = mx.nd.array(encoded['attention_mask'].sum(axis=1))
    unsegmented = net(words, mx.nd.zeros_like(words), lengths).asnumpy()
    assert np.abs(unsegmented - reference).max() > 1e3 * PARITY * np.abs(reference).max()


def test_an_exported_classifier_loads_back_with_identical_outputs(written, vocab, tmp_path):
    hf_export = pytest.importorskip('gluonbert.hf_export',
                                    reason='gluonbert-export --format hf is not on this '
                                           'branch')
    _, original = written
    original.info = ClassifierInfo(LABELS, max_len=48)
    texts = ['w1 w2 w3', 'w7 w8']
    hf_export.export_hf(original, vocab, BERTTokenizer(vocab), str(tmp_path / 'hf'), texts)
    net, _, _ = gluonbert.load_pretrained(str(tmp_path / 'hf'))
    assert net.label_names == LABELS and net.info.max_len == 48
    batch = make_batch(vocab_size=99)
    assert np.array_equal(_logits(net, batch), _logits(original, batch))
    assert math.isclose(net.head_dropout, original.head_dropout)
