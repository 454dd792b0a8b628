"""Hostile model directories: every field of every file a model is read from, damaged one
way at a time (wrong type, out of range, missing, nested too deep, a key twice), must be
one line and exit status 2 through ``gluonbert-predict``, naming the file.

The cases are generated from a table per file kind (Hugging Face config.json and
tokenizer_config.json, vocab.txt, the gluonbert.json manifest, the LoRA adapter.json),
so a field added to a reader without a row here is not tested; the tiny model directories
are built once per module and copied per case.
"""
import copy
import json
import os
import shutil
import time

import numpy as np
import mxnet as mx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.numpy import load_file, save_file

import gluonbert
from gluonbert import BERTClassifier, BERTConfig, BERTModel, apply_lora, save_lora
from gluonbert.cli import finetune_main
from gluonbert.cli.predict import predict_main
from gluonbert.params import named_parameters
from gluonbert.pretrained import save_pretrained
from gluonbert.tokenizer import BERTTokenizer, Vocab
from stand_ins import NEGATIVE, POSITIVE, write_review_csv

SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
LAYERS = 2  # the tiny preset: units 32, hidden_size 64, 4 heads, 2 layers, 64 positions

# Hugging Face tensor names -> gluonbert structural names ({l}: the layer)
_HF_NAMES = {
    'embeddings.word_embeddings.weight': 'encoder.word_embed.weight',
    'embeddings.position_embeddings.weight': 'encoder.position_embed.weight',
    'embeddings.token_type_embeddings.weight': 'encoder.segment_embed.weight',
    'embeddings.LayerNorm.weight': 'encoder.embed_norm.gamma',
    'embeddings.LayerNorm.bias': 'encoder.embed_norm.beta',
    'pooler.dense.weight': 'pooler.weight', 'pooler.dense.bias': 'pooler.bias',
}
_HF_LAYER_NAMES = {
    'attention.self.query': 'attention.query', 'attention.self.key': 'attention.key',
    'attention.self.value': 'attention.value', 'attention.output.dense': 'attention.out_proj',
    'intermediate.dense': 'ffn.ffn_1', 'output.dense': 'ffn.ffn_2',
}
_HF_LAYER_NORMS = {'attention.output.LayerNorm': 'attention_norm.norm',
                   'output.LayerNorm': 'ffn_norm.norm'}


def hf_tensors(bert):
    """``{HF name: numpy array}`` of a gluonbert BERTModel, named as Hugging Face does."""
    arrays = {n: p.data().asnumpy() for n, p in named_parameters(bert).items()}
    names = dict(_HF_NAMES)
    for layer in range(bert.config.num_layers):
        for hf, ours in _HF_LAYER_NAMES.items():
            for kind in ('weight', 'bias'):
                names[f'encoder.layer.{layer}.{hf}.{kind}'] = \
                    f'encoder.layers.{layer}.{ours}.{kind}'
        for hf, ours in _HF_LAYER_NORMS.items():
            names[f'encoder.layer.{layer}.{hf}.weight'] = f'encoder.layers.{layer}.{ours}.gamma'
            names[f'encoder.layer.{layer}.{hf}.bias'] = f'encoder.layers.{layer}.{ours}.beta'
    assert sorted(names.values()) == sorted(arrays)
    return {hf: arrays[ours] for hf, ours in names.items()}


HF_CONFIG = {'model_type': 'bert', 'architectures': ['BertModel'], 'vocab_size': 99,
             'hidden_size': 32, 'intermediate_size': 64, 'num_attention_heads': 4,
             'num_hidden_layers': LAYERS, 'max_position_embeddings': 64, 'type_vocab_size': 2,
             'hidden_dropout_prob': 0.1, 'attention_probs_dropout_prob': 0.1,
             'layer_norm_eps': 1e-12, 'hidden_act': 'gelu',
             'position_embedding_type': 'absolute'}


def write_hf_directory(bert, vocab, directory):
    os.makedirs(directory)
    save_file(hf_tensors(bert), os.path.join(directory, 'model.safetensors'))
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(HF_CONFIG, f)
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
        json.dump({'do_lower_case': True, 'strip_accents': None, 'model_max_length': 64}, f)
    vocab.save(os.path.join(directory, 'vocab.txt'))


HF_CLASSIFIER_CONFIG = dict(HF_CONFIG, architectures=['BertForSequenceClassification'],
                            id2label={'0': 'bad', '1': 'good'}, label2id={'bad': 0, 'good': 1},
                            problem_type='single_label_classification',
                            classifier_dropout=None, num_labels=2)


def write_hf_classifier_directory(net, vocab, directory, config=None, max_len=64):
    """A Hugging Face BertForSequenceClassification directory of a gluonbert classifier,
    as transformers' save_pretrained names its tensors (the encoder under ``bert.``)."""
    os.makedirs(directory)
    tensors = {f'bert.{name}': value for name, value in hf_tensors(net.bert).items()}
    tensors['classifier.weight'] = net.classifier[1].weight.data().asnumpy()
    tensors['classifier.bias'] = net.classifier[1].bias.data().asnumpy()
    save_file(tensors, os.path.join(directory, 'model.safetensors'))
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(config or HF_CLASSIFIER_CONFIG, f)
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
        json.dump({'do_lower_case': True, 'model_max_length': max_len}, f)
    vocab.save(os.path.join(directory, 'vocab.txt'))


def tiny_bert(seed):
    mx.random.seed(seed)
    bert = BERTModel(BERTConfig.from_preset('tiny'))
    bert.initialize(mx.init.Normal(0.2))
    return bert


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """``run/own`` (a gluonbert classifier directory), ``run/hf`` (a Hugging Face base),
    ``run/adapter`` (a LoRA adapter on it), ``run/hf_cls`` (a Hugging Face sentence
    classifier) and ``other_hf`` (another base, same shape)."""
    root = tmp_path_factory.mktemp('hostile')
    run = root / 'run'
    vocab = Vocab(SPECIALS + [f'w{i}' for i in range(94)])
    tokenizer = BERTTokenizer(vocab)
    net = BERTClassifier(tiny_bert(0), num_classes=2)
    net.classifier.initialize()
    save_pretrained(net, vocab, tokenizer, str(run / 'own'), label_names=['bad', 'good'])
    write_hf_directory(tiny_bert(1), vocab, str(run / 'hf'))
    write_hf_directory(tiny_bert(2), vocab, str(root / 'other_hf'))
    base, _, _ = gluonbert.load_pretrained(str(run / 'hf'))
    adapted = BERTClassifier(base, num_classes=2)
    adapted.classifier.initialize()
    apply_lora(adapted, rank=4, alpha=4)
    adapted.label_names = ['bad', 'good']
    save_lora(adapted, str(run / 'adapter'), base_model=str(run / 'hf'))
    classifier = BERTClassifier(tiny_bert(3), num_classes=2)
    classifier.classifier.initialize(mx.init.Normal(0.2))
    write_hf_classifier_directory(classifier, vocab, str(run / 'hf_cls'))
    return root


@pytest.fixture
def run(built, tmp_path):
    """A fresh copy of the built directories for one case."""
    shutil.copytree(built / 'run', tmp_path / 'run')
    return tmp_path / 'run'


def predict_fails(capsys, model_dir, named):
    """Run gluonbert-predict on ``model_dir``: exit 2 and one line naming ``named``."""
    capsys.readouterr()
    assert predict_main(['--model-dir', str(model_dir), 'w1 w2']) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith('gluonbert-predict: error: ') and str(named) in lines[0], lines[0]
    assert captured.out == ''
    return lines[0]


# ------------------------------------------------------------------ the mutation tables
# How each kind of field is given the wrong type (JSON values of other kinds).
WRONG_TYPES = {
    'int': ['2', 2.5, True, None, [2], {'v': 2}],
    'float': ['0.1', True, None, [0.1], {'v': 0.1}],
    'str': [3, True, None, ['x'], {'v': 'x'}],
    'bool': [1, 'true', None, [True], {'v': True}],
    'nullable_bool': [1, 'false', [None], {'v': None}],
    'nullable_str': [1, True, ['x'], {'v': 'x'}],
    'nullable_float': ['0.1', True, [0.1], {'v': 0.1}],
    'dict': ['x', 1, True, [1]],
    'list': ['x', 1, True, {'v': 1}],
}
DEEP = 70  # nesting levels: over schema.MAX_JSON_DEPTH


# (field path, kind, values out of range or otherwise wrong, required)
HF_CONFIG_FIELDS = [
    (('model_type',), 'str', ['roberta'], False),
    (('position_embedding_type',), 'str', ['relative_key'], False),
    (('hidden_act',), 'str', ['swish'], False),
    (('vocab_size',), 'int', [0, -1, 10_000_001, 100], True),
    (('hidden_size',), 'int', [0, 30, 64, 65537], True),
    (('intermediate_size',), 'int', [0, 1000, 262145], True),
    (('num_attention_heads',), 'int', [0, 5, 1025], True),
    (('num_hidden_layers',), 'int', [0, 3, 257, 30000], True),
    (('max_position_embeddings',), 'int', [0, 63, 1_000_001], True),
    (('type_vocab_size',), 'int', [0, 3, 1025], False),
    (('hidden_dropout_prob',), 'float', [1.0, -0.1, 2], False),
    (('attention_probs_dropout_prob',), 'float', [1.0, -0.1], False),
    (('layer_norm_eps',), 'float', [0, -1e-12, 2.0], False),
]
TOKENIZER_CONFIG_FIELDS = [
    (('do_lower_case',), 'bool', [], False),
    (('strip_accents',), 'nullable_bool', [], False),
]
_CONFIG_SIZES = [('vocab_size', [0, 100, 10_000_001]), ('units', [0, 30, 64, 65537]),
                 ('hidden_size', [0, 65, 262145]), ('num_heads', [0, 5, 1025]),
                 ('num_layers', [0, 3, 257, 30000]), ('max_length', [0, 63, 1_000_001]),
                 ('type_vocab_size', [0, 3, 1025])]
_CONFIG_OTHERS = [
    (('config', 'dropout'), 'float', [1.0, -0.1], False),
    (('config', 'attention_dropout'), 'float', [1.0, -0.1], False),
    (('config', 'layer_norm_eps'), 'float', [0, -1.0], False),
    (('config', 'activation'), 'str', ['swish'], False),
    (('config', 'position_embedding'), 'str', ['rotary'], False),
    (('config', 'kernels'), 'str', ['fast'], False),
    (('config', 'layer_norm_kernels'), 'nullable_str', ['fast'], False),
    (('config', 'dropout_kernels'), 'nullable_str', ['fast'], False),
    (('config', 'attention_kernels'), 'nullable_str', ['fast'], False),
    (('config', 'attention_mask'), 'str', ['none'], False),
]
# a size missing takes BERTConfig's default, which these weights do not have (type_vocab_size's
# default, 2, is the tiny model's)
CONFIG_FIELDS = [(('config', name), 'int', bad, name != 'type_vocab_size')
                 for name, bad in _CONFIG_SIZES] + _CONFIG_OTHERS
_SHA1_BAD = ['xyz', 'A' * 40, '0' * 40]
MANIFEST_FIELDS = [
    (('format',), 'str', ['gluonbert-lora'], True),
    (('version',), 'int', [1, 3], True),
    (('model_class',), 'str', ['BERTNope', 'BERTModel'], True),
    (('config',), 'dict', [], True),
    (('tokenizer',), 'dict', [], True),
    (('tokenizer', 'lower'), 'bool', [], True),
    (('tokenizer', 'strip_accents'), 'nullable_bool', [], True),
    (('tokenizer', 'max_input_chars_per_word'), 'int', [0, -1, 100_001], True),
    (('extra',), 'dict', [], False),
    (('files',), 'dict', [], True),
    (('files', 'model.params'), 'dict', [], True),
    (('files', 'model.params', 'bytes'), 'int', [-1, 5], True),
    (('files', 'model.params', 'sha1'), 'str', _SHA1_BAD, True),
    (('files', 'vocab.txt'), 'dict', [], True),
    (('files', 'vocab.txt', 'bytes'), 'int', [-1, 5], True),
    (('files', 'vocab.txt', 'sha1'), 'str', _SHA1_BAD, True),
    (('num_classes',), 'int', [1, 3], True),
    (('label_names',), 'list', [['good', 'bad'], [1, 2]], False),
    (('classifier',), 'dict', [], True),
    (('classifier', 'label_names'), 'list', [['a'], ['a', 'a'], ['a', 'b', 'c'], [1, 2]], True),
    (('classifier', 'max_len'), 'int', [2, 0, -1], False),
    (('classifier', 'truncate'), 'str', ['tail'], False),
    (('classifier', 'text_pair'), 'bool', [], False),
    (('classifier', 'kernels'), 'nullable_str', ['fast'], False),
    (('classifier', 'calibration_texts'), 'list', [[1], [['a']]], False),
] + CONFIG_FIELDS
ADAPTER_FIELDS = [
    (('format',), 'str', ['gluonbert'], True),
    (('version',), 'int', [1, 3], True),
    (('base_model',), 'str', [''], True),
    (('base_fingerprint',), 'str', ['xyz', 'F' * 64, 'f' * 64], True),
    (('model_class',), 'str', ['BERTNope'], True),
    (('rank',), 'int', [0, 65537], True),
    (('alpha',), 'float', [0, -1.0], True),
    (('dropout',), 'float', [1.0, -0.1], True),
    (('targets',), 'list', [[], ['nope'], ['query', 'query'], [1]], True),
    (('num_classes',), 'int', [1, 3], True),
    (('label_names',), 'list', [[1, 2]], True),
    (('classifier',), 'dict', [], True),
    (('classifier', 'label_names'), 'list', [['a'], ['a', 'a']], True),
    (('classifier', 'max_len'), 'int', [2], False),
    (('classifier_dropout',), 'float', [1.0, -0.1], True),
    (('max_len',), 'int', [2, 1000], True),
    (('extra',), 'dict', [], True),
    (('config',), 'dict', [], True),
    (('config', 'units'), 'int', [0, 65537], False),
    (('config', 'num_layers'), 'int', [0, 257], False),
    (('files',), 'dict', [], True),
    (('files', 'adapter.params'), 'dict', [], True),
    (('files', 'adapter.params', 'bytes'), 'int', [-1, 5], True),
    (('files', 'adapter.params', 'sha1'), 'str', _SHA1_BAD, True),
]
# a Hugging Face sentence classifier's head fields (its encoder's are HF_CONFIG_FIELDS)
HF_CLASSIFIER_FIELDS = [
    (('architectures',), 'list', [[1], [''], ['BertForTokenClassification'], ['BertModel'],
                                  []], False),
    (('id2label',), 'dict', [{'0': 'bad'}, {'0': 'bad', '2': 'good'}, {'1': 'good'},
                             {'0': 'bad', '1': 'bad'}, {'0': 'bad', '1': ''},
                             {'0': 1, '1': 'good'}, {'0': 'bad', '01': 'good'},
                             {'0': 'bad', '1': 'good', '2': 'ugly'}, {}], False),
    (('label2id',), 'dict', [{'bad': 1, 'good': 0}, {'bad': 0}, {'bad': 0, 'good': '1'},
                             {'bad': 0, 'good': 1, 'ugly': 2}, {'bad': 0, 'good': True}],
     False),
    (('num_labels',), 'int', [0, 1, 3, 100_001], False),
    (('problem_type',), 'nullable_str', ['multi_label_classification', 'regression', ''],
     False),
    (('classifier_dropout',), 'nullable_float', [1.0, -0.1, 2], False),
]
HF_CLASSIFIER_TOKENIZER_FIELDS = [
    (('model_max_length',), 'nullable_float', [2, 0, -1, 100.5, -1e30], False),
]
# values that are well formed but wrong for another file: the message names that one
_NAMES_OTHER = {('files', 'model.params', 'bytes', 5): 'own/model.params',
                ('files', 'model.params', 'sha1', '0' * 40): 'own/model.params',
                ('files', 'vocab.txt', 'bytes', 5): 'own/vocab.txt',
                ('files', 'vocab.txt', 'sha1', '0' * 40): 'own/vocab.txt',
                ('files', 'adapter.params', 'bytes', 5): 'adapter/adapter.params',
                ('files', 'adapter.params', 'sha1', '0' * 40): 'adapter/adapter.params',
                ('base_fingerprint', 'f' * 64): 'adapter',
                ('model_class', 'BERTModel'): 'own/model.params'}


def _set(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def _dump_with_duplicate(obj, path):
    """JSON text of ``obj`` with the key at ``path`` written twice in its object."""
    def emit(value, rest):
        if not isinstance(value, dict):
            return json.dumps(value)
        items = []
        for key, item in value.items():
            inner = rest[1:] if rest and key == rest[0] and len(rest) > 1 else ()
            text = f'{json.dumps(key)}: {emit(item, inner)}'
            items.append(text)
            if len(rest) == 1 and key == rest[0]:
                items.append(text)
        return '{' + ', '.join(items) + '}'
    return emit(obj, path)


def mutations(fields):
    """``[(case id, path, how, value)]``: each field given every wrong type of its kind,
    each wrong value, deleted (if required), nested too deep, and written twice."""
    cases = []
    for path, kind, bad_values, required in fields:
        name = '.'.join(path)
        for value in WRONG_TYPES[kind]:
            cases.append((f'{name}={json.dumps(value)}', path, 'set', value))
        for value in bad_values:
            cases.append((f'{name}={json.dumps(value)}!', path, 'set', value))
        if required:
            cases.append((f'{name} missing', path, 'set', KeyError))
        nested = 0
        for _ in range(DEEP):
            nested = [nested]
        cases.append((f'{name} nested {DEEP} deep', path, 'set', nested))
        cases.append((f'{name} twice', path, 'duplicate', None))
    return cases


def _damage_json(file_path, path, how, value):
    with open(file_path, encoding='utf-8') as f:
        obj = json.load(f)
    if how == 'duplicate':
        text = _dump_with_duplicate(obj, path)
    else:
        obj = copy.deepcopy(obj)
        _set(obj, path, value)
        text = json.dumps(obj)
    with open(file_path, 'w', encoding='utf-8') as f:
        f.write(text)


# file kind -> (the file under run/, the fields, the directory predict is given)
JSON_KINDS = {
    'hf_config': ('hf/config.json', HF_CONFIG_FIELDS, 'adapter'),
    'tokenizer_config': ('hf/tokenizer_config.json', TOKENIZER_CONFIG_FIELDS, 'adapter'),
    'manifest': ('own/gluonbert.json', MANIFEST_FIELDS, 'own'),
    'adapter': ('adapter/adapter.json', ADAPTER_FIELDS, 'adapter'),
    'hf_classifier': ('hf_cls/config.json', HF_CLASSIFIER_FIELDS, 'hf_cls'),
    'hf_classifier_tokenizer': ('hf_cls/tokenizer_config.json',
                                HF_CLASSIFIER_TOKENIZER_FIELDS, 'hf_cls'),
}
JSON_CASES = [(kind, *case) for kind, (_, fields, _) in JSON_KINDS.items()
              for case in mutations(fields)]


def _mentions_field(line, path):
    leaf = path[-1]
    return leaf in line or leaf.replace('_', ' ') in line


@pytest.mark.parametrize('kind, case, path, how, value', JSON_CASES,
                         ids=[f'{c[0]}: {c[1]}' for c in JSON_CASES])
def test_a_damaged_json_field_is_one_line_through_predict(run, capsys, kind, case, path, how,
                                                           value):
    relative, _, model_dir = JSON_KINDS[kind]
    _damage_json(run / relative, path, how, value)
    named = run / _NAMES_OTHER.get(path + (value,) if how == 'set' and not isinstance(
        value, (list, dict)) else (), relative)
    line = predict_fails(capsys, run / model_dir, named)
    if named == run / relative and not case.endswith('deep'):
        assert _mentions_field(line, path) or 'JSON' in line, line


def test_the_undamaged_directories_predict(run, capsys):
    for model_dir in ('own', 'adapter', 'hf_cls'):
        assert predict_main(['--model-dir', str(run / model_dir), 'w1 w2']) == 0
        assert len(capsys.readouterr().out.splitlines()) == 1


# ------------------------------------------------------------------------- vocab.txt
def _vocab_cases():
    """``[(case id, damage(lines) -> bytes)]`` of vocab.txt damage."""
    cases = [('empty', lambda lines: b'')]
    for line in (0, 4, 5, 50, 98):
        cases.append((f'line {line + 1} repeats line 7', lambda lines, n=line:
                      b''.join(lines[:n] + [lines[6]] + lines[n + 1:])))
        cases.append((f'line {line + 1} not UTF-8', lambda lines, n=line:
                      b''.join(lines[:n] + [b'\xff' + lines[n]] + lines[n + 1:])))
        cases.append((f'line {line + 1} empty', lambda lines, n=line:
                      b''.join(lines[:n] + [b'\n'] + lines[n + 1:])))
    for special in SPECIALS:
        cases.append((f'no {special}', lambda lines, t=special: b''.join(
            b'x' + line if line == t.encode() + b'\n' else line for line in lines)))
    for kept in (1, 50, 98):
        cases.append((f'cut to {kept} lines', lambda lines, k=kept: b''.join(lines[:k])))
    cases.append(('one more line', lambda lines: b''.join(lines) + b'w_extra\n'))
    return cases


VOCAB_CASES = [(where, *case) for where in ('hf', 'own') for case in _vocab_cases()]


@pytest.mark.parametrize('where, case, damage', VOCAB_CASES,
                         ids=[f'{c[0]}: {c[1]}' for c in VOCAB_CASES])
def test_a_damaged_vocabulary_is_one_line_through_predict(run, capsys, where, case, damage):
    path = run / where / 'vocab.txt'
    with open(path, 'rb') as f:
        lines = f.readlines()
    path.write_bytes(damage(lines))
    predict_fails(capsys, run / ('adapter' if where == 'hf' else 'own'), path)


def test_a_byte_order_mark_is_dropped_from_a_hugging_face_vocabulary(run, capsys):
    path = run / 'hf' / 'vocab.txt'
    path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes())
    vocab, _ = gluonbert.pretrained.load_vocabulary(str(run / 'hf'))
    assert vocab.idx_to_token[0] == '[PAD]'
    assert predict_main(['--model-dir', str(run / 'adapter'), 'w1 w2']) == 0
    capsys.readouterr()


# --------------------------------------------------------------- weights and the base
def _hf_weights(run, change):
    path = run / 'hf' / 'model.safetensors'
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    return path


def _poison(value):
    def change(tensors):
        weight = tensors['encoder.layer.1.output.dense.weight'].copy()
        weight[3, 5] = value
        tensors['encoder.layer.1.output.dense.weight'] = weight
    return change


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf], ids=['nan', 'inf', '-inf'])
def test_non_finite_hugging_face_weights_are_one_line(run, capsys, value):
    path = _hf_weights(run, _poison(value))
    line = predict_fails(capsys, run / 'adapter', path)
    assert line.endswith(f'{path}: tensor encoder.layer.1.output.dense.weight holds NaN or '
                         f'infinite values; the weights are damaged (or not a model\'s), '
                         f'load them from a good copy')


@pytest.mark.parametrize('dtype', [np.int64, np.int32, np.uint8, np.bool_])
def test_integer_hugging_face_weights_are_refused_from_the_header(run, capsys, dtype,
                                                                  monkeypatch):
    def change(tensors):
        tensors['pooler.dense.weight'] = tensors['pooler.dense.weight'].astype(dtype)
    path = _hf_weights(run, change)
    monkeypatch.setattr(gluonbert.hf_checkpoint, '_read_hf_tensors', _not_read)
    line = predict_fails(capsys, run / 'adapter', path)
    assert f'tensor pooler.dense.weight is {np.dtype(dtype).name}, not floating point' in line


def _not_read(*args):
    raise AssertionError('the tensors were read before their header was checked')


def _rewrite_own_params(run, change):
    """Change model.params of run/own and record its new size and sha1, as a save would:
    only the check of the values themselves can refuse it."""
    directory = run / 'own'
    arrays = mx.nd.load(str(directory / 'model.params'))
    change(arrays)
    mx.nd.save(str(directory / 'model.params'), arrays)
    manifest = json.loads((directory / 'gluonbert.json').read_text())
    manifest['files']['model.params'] = {
        'bytes': os.path.getsize(directory / 'model.params'),
        'sha1': gluonbert._io.file_sha1(str(directory / 'model.params'))}
    (directory / 'gluonbert.json').write_text(json.dumps(manifest))
    return directory / 'model.params'


def test_nan_weights_in_a_gluonbert_directory_are_one_line(run, capsys):
    def change(arrays):
        arrays['bert.pooler.weight'][0, 0] = np.nan
    path = _rewrite_own_params(run, change)
    line = predict_fails(capsys, run / 'own', path)
    assert 'tensor bert.pooler.weight holds NaN or infinite values' in line


def test_integer_weights_in_a_gluonbert_directory_are_one_line(run, capsys):
    def change(arrays):
        arrays['bert.pooler.weight'] = arrays['bert.pooler.weight'].astype('int64')
    path = _rewrite_own_params(run, change)
    line = predict_fails(capsys, run / 'own', path)
    assert f'{path}: tensor bert.pooler.weight is int64, not floating point' in line


def test_a_truncated_vocabulary_in_a_gluonbert_directory_is_one_line(run, capsys):
    path = run / 'own' / 'vocab.txt'
    recorded = json.loads((run / 'own' / 'gluonbert.json').read_text())['files']['vocab.txt']
    path.write_bytes(b''.join(path.read_bytes().splitlines(keepends=True)[:60]))
    line = predict_fails(capsys, run / 'own', path)
    assert line == (f'gluonbert-predict: error: {path} is corrupt or truncated '
                    f'({os.path.getsize(path)} bytes, expected {recorded["bytes"]}; checksum '
                    f'mismatch); save the model again')
    with pytest.raises(gluonbert.errors.ModelError, match='vocab.txt is corrupt'):
        gluonbert.pretrained.load_vocabulary(str(run / 'own'))


def test_an_adapter_on_another_base_is_one_line(built, run, capsys):
    shutil.rmtree(run / 'hf')
    shutil.copytree(built / 'other_hf', run / 'hf')
    line = predict_fails(capsys, run / 'adapter', run / 'adapter')
    manifest = json.loads((run / 'adapter' / 'adapter.json').read_text())
    assert line.startswith(f'gluonbert-predict: error: {run / "adapter"}: made for another base '
                           f'model (fingerprint {manifest["base_fingerprint"][:16]}, this base ')
    assert line.endswith('); load it with the base it was trained on')


def test_the_fingerprint_is_the_same_whatever_the_base_was_loaded_from(built, tmp_path):
    from gluonbert.lora_files import base_fingerprint
    hf, vocab, tokenizer = gluonbert.load_pretrained(str(built / 'run' / 'hf'))
    save_pretrained(hf, vocab, tokenizer, str(tmp_path / 'own'))
    own, _, _ = gluonbert.load_pretrained(str(tmp_path / 'own'))
    other, _, _ = gluonbert.load_pretrained(str(built / 'other_hf'))
    prints = [base_fingerprint(named_parameters(m)) for m in (hf, own, other)]
    assert prints[0] == prints[1] != prints[2]


# ------------------------------------------------ damage found before anything is built
@pytest.fixture
def nothing_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('a BERTModel was built')
    monkeypatch.setattr(gluonbert.model.BERTModel, '__init__', refuse)


@pytest.mark.parametrize('field, value, why', [
    ('num_hidden_layers', 30000, 'num_hidden_layers must be between 1 and 256, got 30000'),
    ('num_hidden_layers', 3, 'num_hidden_layers is 3 but the tensors in'),
    ('intermediate_size', 1000, 'intermediate_size is 1000 but the tensors in'),
    ('vocab_size', 100, 'vocab_size is 100 but the tensors in'),
    ('max_position_embeddings', 63, 'max_position_embeddings is 63 but the tensors in'),
])
def test_a_hugging_face_config_that_does_not_fit_its_tensors_builds_nothing(
        run, capsys, nothing_built, field, value, why):
    _damage_json(run / 'hf' / 'config.json', (field,), 'set', value)
    start = time.perf_counter()
    line = predict_fails(capsys, run / 'adapter', run / 'hf' / 'config.json')
    assert time.perf_counter() - start < 5
    assert why in line


@pytest.mark.parametrize('field, value', [('num_layers', 30000), ('num_layers', 3),
                                          ('hidden_size', 65), ('max_length', 63)])
def test_a_manifest_config_that_does_not_fit_its_tensors_builds_nothing(
        run, capsys, nothing_built, field, value):
    _damage_json(run / 'own' / 'gluonbert.json', ('config', field), 'set', value)
    start = time.perf_counter()
    line = predict_fails(capsys, run / 'own', run / 'own' / 'gluonbert.json')
    assert time.perf_counter() - start < 5
    assert 'num_layers must be at most 256' in line if value == 30000 else \
        f'config.{field} is {value} but the tensors in {run / "own" / "model.params"}' in line


_SIZE_FIELDS = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_attention_heads',
                'num_hidden_layers', 'max_position_embeddings', 'type_vocab_size']


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_SIZE_FIELDS), value=st.integers(-2 ** 40, 2 ** 40))
def test_any_other_size_in_a_hugging_face_config_is_one_line(built, tmp_path_factory, field,
                                                             value):
    if value == HF_CONFIG[field] or field == 'num_attention_heads' and value > 0 and \
            HF_CONFIG['hidden_size'] % value == 0:
        return  # these describe the tensors (heads divide the width: any such count fits)
    run = tmp_path_factory.mktemp('size') / 'run'
    shutil.copytree(built / 'run', run)
    _damage_json(run / 'hf' / 'config.json', (field,), 'set', value)
    with pytest.raises(gluonbert.errors.ModelError) as error:
        gluonbert.load_pretrained(str(run / 'hf'))
    message = str(error.value)
    assert '\n' not in message and message.startswith(f'{run / "hf" / "config.json"}: ')
    assert field in message


# ---------------------------------------------------------------- through finetune
@pytest.fixture(scope='module')
def reviews(tmp_path_factory):
    root = tmp_path_factory.mktemp('reviews')
    rows = [(t, 'positive') for t in POSITIVE] + [(t, 'negative') for t in NEGATIVE]
    return write_review_csv(root / 'train.csv', rows), write_review_csv(root / 'test.csv', rows)


@pytest.mark.parametrize('damage, model, named', [
    (lambda run: _damage_json(run / 'hf' / 'config.json', ('num_hidden_layers',), 'set', 30000),
     'hf', 'hf/config.json'),
    (lambda run: _hf_weights(run, _poison(np.nan)), 'hf', 'hf/model.safetensors'),
    (lambda run: (run / 'own' / 'vocab.txt').write_text('[PAD]\n[UNK]\n'), 'own',
     'own/vocab.txt'),
], ids=['30000 layers', 'nan weights', 'vocab cut'])
def test_finetune_refuses_a_damaged_model_in_one_line(run, reviews, capsys, damage, model,
                                                      named):
    damage(run)
    train, test = reviews
    capsys.readouterr()
    code = finetune_main(['--model', str(run / model), '--train', train, '--test', test,
                          '--text-column', 'review', '--label-column', 'sentiment',
                          '--epochs', '1', '--batch-size', '8', '--max-len', '16',
                          '--output-dir', str(run / 'out'), '--no-progress'])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith('gluonbert-finetune: error: ') and str(run / named) in lines[0]


# ----------------------------------------------- a Hugging Face classifier's head tensors
def _head_damage():
    """``[(case id, change(tensors))]``: each head tensor missing, or of another shape."""
    cases = []
    for name in ('classifier.weight', 'classifier.bias'):
        cases.append((f'{name} missing', lambda t, n=name: t.pop(n)))
    shapes = {'classifier.weight': [(3, 32), (2, 31), (32, 2), (64,), (2, 32, 1)],
              'classifier.bias': [(3,), (1,), (2, 1), ()]}
    for name, wrong in shapes.items():
        for shape in wrong:
            cases.append((f'{name} {"x".join(map(str, shape)) or "scalar"}',
                          lambda t, n=name, s=shape: t.__setitem__(
                              n, np.full(s, 0.5, np.float32))))
    return cases


HEAD_CASES = _head_damage()


@pytest.mark.parametrize('case, change', HEAD_CASES, ids=[c[0] for c in HEAD_CASES])
def test_a_damaged_classifier_head_is_one_line_before_anything_is_built(
        run, capsys, monkeypatch, nothing_built, case, change):
    path = run / 'hf_cls' / 'model.safetensors'
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    monkeypatch.setattr(gluonbert.hf_checkpoint, '_read_hf_tensors', _not_read)
    line = predict_fails(capsys, run / 'hf_cls', path)
    name = case.split()[0]
    expected = '2x32' if name == 'classifier.weight' else '2'
    assert name in line and f'shape {expected} ' in line if case.endswith('missing') else \
        f'{name} is ' in line and f'expected {expected} ' in line, line
    assert str(run / 'hf_cls' / 'config.json') in line  # where the class count comes from


def test_id2label_and_the_head_must_agree(run, capsys, nothing_built):
    """Three consistent labels in config.json, a head of two classes: the header says so."""
    _damage_json(run / 'hf_cls' / 'config.json', ('id2label',), 'set',
                 {'0': 'bad', '1': 'good', '2': 'ugly'})
    _damage_json(run / 'hf_cls' / 'config.json', ('label2id',), 'set',
                 {'bad': 0, 'good': 1, 'ugly': 2})
    _damage_json(run / 'hf_cls' / 'config.json', ('num_labels',), 'set', KeyError)
    line = predict_fails(capsys, run / 'hf_cls', run / 'hf_cls' / 'model.safetensors')
    assert 'classifier.weight is 2x32, expected 3x32 (id2label in' in line
    assert 'has 3 labels; hidden_size is 32)' in line


@pytest.mark.parametrize('architecture', ['BertForTokenClassification', 'BertForMaskedLM',
                                          'BertForMultipleChoice'])
def test_other_hugging_face_heads_are_refused_by_predict_naming_the_architecture(
        run, capsys, monkeypatch, architecture):
    _damage_json(run / 'hf_cls' / 'config.json', ('architectures',), 'set', [architecture])
    monkeypatch.setattr(gluonbert.hf_checkpoint, '_read_hf_tensors', _not_read)
    line = predict_fails(capsys, run / 'hf_cls', run / 'hf_cls' / 'config.json')
    assert f'architectures names a {architecture}, not a sentence classifier' in line


def test_a_classifier_head_without_an_architecture_is_one_line(run):
    _damage_json(run / 'hf_cls' / 'config.json', ('architectures',), 'set', KeyError)
    with pytest.raises(gluonbert.errors.ModelError) as error:
        gluonbert.load_pretrained(str(run / 'hf_cls'))
    message = str(error.value)
    assert message.startswith(f'{run / "hf_cls" / "model.safetensors"}: unexpected tensors')
    assert 'classifier.weight' in message and 'BertForSequenceClassification' in message
