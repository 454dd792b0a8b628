"""LoRA on a tiny model: exactness at init, frozen base, merge, hybridize, adapters, CLI."""
import json
import os
import shutil

import numpy as np
import mxnet as mx
import pytest
from mxnet.gluon import nn

import gluonbert
from gluonbert import (BERTClassifier, BERTConfig, BERTModel, LoRADense, apply_lora,
                       load_lora, lora_parameter_counts, merge_lora, save_lora)
from gluonbert.cli import finetune_main, predict_main
from gluonbert.lora import base_parameters
from gluonbert.params import named_parameters, walk_blocks
from gluonbert.pretrained import PretrainedError
from gluonbert.tokenizer import BERTTokenizer, Vocab
from gluonbert.train import make_trainer, train_loop
from stand_ins import write_review_csv

TINY_UNITS = 32  # the tiny preset: units 32, hidden_size 64, 2 layers


def tiny_classifier(seed=0, dropout=0.0):
    mx.random.seed(seed)
    config = BERTConfig.from_preset('tiny', dropout=dropout, attention_dropout=dropout)
    net = BERTClassifier(BERTModel(config), num_classes=2, dropout=dropout)
    net.initialize()
    return net


def snapshot(params):
    return {name: p.data().asnumpy().copy() for name, p in params.items()}


def test_walk_blocks_goes_depth_first_in_registration_order():
    outer = nn.HybridSequential()
    inner = nn.HybridSequential()
    inner.add(nn.Dense(2), nn.Dropout(0.1))
    outer.add(nn.Dense(3), inner, nn.Dense(4))
    walked = list(walk_blocks(outer))
    assert [path for path, _ in walked] == ['', '0', '1', '1.0', '1.1', '2']
    assert [type(b).__name__ for _, b in walked] == ['HybridSequential', 'Dense',
                                                    'HybridSequential', 'Dense', 'Dropout',
                                                    'Dense']
    assert walked[0][1] is outer and walked[2][1] is inner and walked[4][1] is inner[1]


def lora_layers(net):
    return [block for _, block in walk_blocks(net) if isinstance(block, LoRADense)]


def randomise_lora(net, scale=0.1):
    """Give every B a non-zero value so the update is visible."""
    for layer in lora_layers(net):
        layer.lora_b.set_data(mx.nd.random.normal(scale=scale, shape=layer.lora_b.shape))


def synthetic_batches(n=32, batch_size=8, seq_len=10, seed=0):
    """Label 1 texts use ids 50-98, label 0 ids 5-49: learnable from bags of words."""
    rng = np.random.RandomState(seed)
    batches = []
    for _ in range(n // batch_size):
        labels = rng.randint(0, 2, batch_size)
        words = np.where(labels[:, None] == 1, rng.randint(50, 99, (batch_size, seq_len)),
                         rng.randint(5, 50, (batch_size, seq_len)))
        words[:, 0] = 2
        batches.append((mx.nd.array(words), mx.nd.full((batch_size,), seq_len),
                        mx.nd.zeros((batch_size, seq_len)), mx.nd.array(labels)))
    return batches


def tiny_vocab():
    vocab = Vocab(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + [f'w{i}' for i in range(94)])
    return vocab, BERTTokenizer(vocab)


# ------------------------------------------------------------------------ LoRADense
@pytest.mark.parametrize('flatten, shape', [(False, (3, 5, 16)), (True, (4, 16))])
def test_lora_dense_is_exact_at_init_then_adds_the_low_rank_update(flatten, shape):
    dense = nn.Dense(12, in_units=16, flatten=flatten)
    layer = LoRADense(dense, rank=4, alpha=8)
    layer.initialize(mx.init.Normal(0.5))  # A and B keep their own initialisers
    x = mx.nd.random.normal(shape=shape)
    expected = dense(x).asnumpy()
    assert layer.base is dense
    assert layer.lora_a.shape == (4, 16) and layer.lora_b.shape == (12, 4)
    np.testing.assert_array_equal(layer(x).asnumpy(), expected)

    layer.lora_b.set_data(mx.nd.random.normal(shape=(12, 4)))
    a, b = layer.lora_a.data().asnumpy(), layer.lora_b.data().asnumpy()
    manual = expected + (8 / 4) * x.asnumpy() @ a.T @ b.T       # (..., 12)
    got = layer(x).asnumpy()
    assert got.shape == shape[:-1] + (12,)
    np.testing.assert_allclose(got, manual, rtol=1e-5, atol=1e-5)


def test_lora_dense_adds_the_update_before_the_activation():
    dense = nn.Dense(6, in_units=8, activation='tanh')
    layer = LoRADense(dense, rank=2, alpha=2)
    layer.initialize()
    layer.lora_b.set_data(mx.nd.ones((6, 2)))
    x = mx.nd.random.normal(shape=(3, 8))
    w, bias = dense.weight.data().asnumpy(), dense.bias.data().asnumpy()
    a = layer.lora_a.data().asnumpy()
    manual = np.tanh(x.asnumpy() @ (w + np.ones((6, 2)) @ a).T + bias)
    np.testing.assert_allclose(layer(x).asnumpy(), manual, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ apply_lora
def test_apply_lora_is_exact_at_init_and_trains_only_lora_and_head(batch):
    net = tiny_classifier()
    before = net(*batch).asnumpy()
    counts = apply_lora(net)                                   # rank 8, query and value
    attention = net.bert.encoder.layers[0].attention
    assert isinstance(attention.query, LoRADense) and isinstance(attention.value, LoRADense)
    assert type(attention.key) is nn.Dense and not attention._fusable()  # unfused path
    np.testing.assert_array_equal(net(*batch).asnumpy(), before)

    lora = 2 * 2 * 8 * (TINY_UNITS + TINY_UNITS)              # layers x targets x r(in + out)
    head = 2 * TINY_UNITS + 2
    assert (counts.lora, counts.head, counts.trainable) == (lora, head, lora + head)
    assert counts.total == gluonbert.count_parameters(net)
    assert counts.fraction == pytest.approx((lora + head) / counts.total)
    assert lora_parameter_counts(net) == counts
    assert 'trainable' in str(counts) and counts.to_dict()['lora'] == lora
    trainable = sorted(n for n, p in named_parameters(net).items() if p.grad_req != 'null')
    assert all(n.startswith('classifier.') or n.endswith(('.lora_a', '.lora_b'))
               for n in trainable)
    assert len(trainable) == 2 * 2 * 2 + 2
    assert len(make_trainer(net)._params) == len(trainable)  # the optimizer sees these only


def test_training_leaves_every_base_parameter_bit_for_bit_unchanged(tmp_path):
    net = tiny_classifier(dropout=0.1)
    base_before = snapshot(named_parameters(net.bert))
    apply_lora(net, rank=4, alpha=8, dropout=0.1,
               targets=('query', 'key', 'value', 'output', 'ffn_1', 'ffn_2'))
    adapter_before = snapshot(gluonbert.lora._adapter_parameters(net))
    net.hybridize(static_alloc=True)
    train_loop(net, synthetic_batches(), None, 2, 1e-2, mx.cpu(), progress=False,
               checkpoint_dir=str(tmp_path))
    base_after = snapshot(base_parameters(net.bert))
    assert set(base_after) == set(base_before)
    for name, value in base_before.items():
        np.testing.assert_array_equal(base_after[name], value, err_msg=name)
    adapter_after = snapshot(gluonbert.lora._adapter_parameters(net))
    assert len(adapter_after) == 2 * 6 * 2 + 2
    for name, value in adapter_before.items():
        assert not np.array_equal(adapter_after[name], value), f'{name} did not change'


def test_merge_restores_plain_dense_layers_with_the_same_outputs(batch):
    net = tiny_classifier()
    originals = [layer.ffn.ffn_2 for layer in net.bert.encoder.layers]
    apply_lora(net, targets='query,value,ffn_2')
    randomise_lora(net)
    unmerged = net(*batch).asnumpy()
    assert merge_lora(net) is net
    assert not lora_layers(net)
    assert [layer.ffn.ffn_2 for layer in net.bert.encoder.layers] == originals
    assert net.bert.encoder.layers[0].attention._fusable()       # fused path again
    merged = net(*batch).asnumpy()
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)
    assert not np.array_equal(merged, tiny_classifier()(*batch).asnumpy())  # W did change
    with pytest.raises(ValueError, match='no LoRA layers to merge'):
        merge_lora(net)


def test_lora_after_hybridize_rebuilds_the_graph(batch):
    net = tiny_classifier()
    net.hybridize(static_alloc=True)
    before = net(*batch).asnumpy()                   # builds the cached graph of the base
    apply_lora(net, targets=('value', 'out_proj'))
    np.testing.assert_array_equal(net(*batch).asnumpy(), before)
    randomise_lora(net)
    hybridized = net(*batch).asnumpy()
    assert not np.allclose(hybridized, before)       # the new graph includes LoRA
    net.hybridize(False)
    np.testing.assert_allclose(net(*batch).asnumpy(), hybridized, atol=1e-6, rtol=0)
    net.hybridize(static_alloc=True)
    net(*batch)
    merge_lora(net)
    np.testing.assert_allclose(net(*batch).asnumpy(), hybridized, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------ adapters
def test_adapter_round_trip_is_exact_and_small(tmp_path, batch):
    vocab, tokenizer = tiny_vocab()
    net = tiny_classifier()
    run = tmp_path / 'run'
    gluonbert.save_pretrained(net.bert, vocab, tokenizer, str(run / 'base'))
    apply_lora(net, rank=4, alpha=4, targets=('query', 'value', 'ffn_1'))
    randomise_lora(net)
    net.classifier[1].weight.set_data(mx.nd.random.normal(shape=(2, TINY_UNITS)))
    net.label_names = ['bad', 'good']
    expected = net(*batch).asnumpy()
    path = save_lora(net, str(run / 'adapter'), base_model=str(run / 'base'), max_len=48)
    assert sorted(os.listdir(run)) == ['adapter', 'base']         # no staging leftovers
    manifest = json.loads((run / 'adapter' / 'adapter.json').read_text())
    assert manifest['base_model'] == os.path.join('..', 'base')
    assert (manifest['rank'], manifest['alpha'], manifest['targets']) == \
        (4, 4.0, ['query', 'value', 'ffn_1'])
    assert (manifest['num_classes'], manifest['label_names'], manifest['max_len']) == \
        (2, ['bad', 'good'], 48)
    adapter_bytes = os.path.getsize(os.path.join(path, 'adapter.params'))
    model_bytes = os.path.getsize(run / 'base' / 'model.params')
    assert adapter_bytes < model_bytes / 5

    shutil.move(str(run), str(tmp_path / 'moved'))  # the base is found relative to the adapter
    loaded, loaded_vocab, _ = load_lora(str(tmp_path / 'moved' / 'adapter'))
    assert len(lora_layers(loaded)) == 2 * 3 and len(loaded_vocab) == len(vocab)
    assert loaded.label_names == ['bad', 'good'] and loaded.info.max_len == 48
    np.testing.assert_array_equal(loaded(*batch).asnumpy(), expected)

    params = tmp_path / 'moved' / 'adapter' / 'adapter.params'
    params.write_bytes(params.read_bytes()[:-8])
    with pytest.raises(PretrainedError, match='corrupt or truncated'):
        load_lora(str(tmp_path / 'moved' / 'adapter'))
    with pytest.raises(PretrainedError, match='not a LoRA adapter directory'):
        load_lora(str(tmp_path / 'moved' / 'base'))


def _applied(**kwargs):
    net = tiny_classifier()
    apply_lora(net, **kwargs)
    return net


@pytest.mark.parametrize('call, message', [
    (lambda: apply_lora(tiny_classifier(), rank=0), r'rank must be an integer in \[1, 32\)'),
    (lambda: apply_lora(tiny_classifier(), rank=32), r'rank must be an integer in \[1, 32\)'),
    (lambda: apply_lora(tiny_classifier(), rank=2.5), 'rank must be an integer'),
    (lambda: apply_lora(tiny_classifier(), alpha=0), 'alpha must be a number > 0'),
    (lambda: apply_lora(tiny_classifier(), dropout=1.0), r'dropout must be in \[0, 1\)'),
    (lambda: apply_lora(tiny_classifier(), targets=('query', 'nope')),
     "unknown LoRA target.*'nope'"),
    (lambda: apply_lora(tiny_classifier(), targets=()), 'no LoRA targets given'),
    (lambda: apply_lora(tiny_classifier().classifier), 'match no layer of HybridSequential'),
    (lambda: apply_lora(_applied()), 'LoRA is already applied'),
    (lambda: apply_lora(BERTClassifier(BERTModel(BERTConfig.from_preset('tiny')))),
     'initialize the model'),
    (lambda: save_lora(_applied(), 'unused', base_model='tiny'), "'tiny' is a preset"),
    (lambda: save_lora(tiny_classifier(), 'unused'), 'no LoRA layers'),
])
def test_bad_input_gets_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert '\n' not in str(info.value)


def test_rank_too_large_leaves_the_model_untouched():
    net = tiny_classifier()
    with pytest.raises(ValueError, match=r'ffn\.ffn_1 \(32 -> 64\)'):
        apply_lora(net, rank=40, targets='ffn_1')
    assert not lora_layers(net)
    assert all(p.grad_req == 'write' for p in net.collect_params().values())


# ------------------------------------------------------------------------ CLI
@pytest.fixture
def review_files(tmp_path):
    rows = [('a wonderful, moving film', 'positive'), ('great acting, lovely', 'positive'),
            ('I loved it, brilliant', 'positive'), ('a boring, awful mess', 'negative'),
            ('terrible acting, dull plot', 'negative'), ('I hated it, dreadful', 'negative')]
    return (write_review_csv(tmp_path / 'train.csv', rows * 2),
            write_review_csv(tmp_path / 'test.csv', rows))


def _finetune_args(train, test, output_dir, *extra):
    return ['--model', 'tiny', '--train', train, '--test', test, '--text-column', 'review',
            '--label-column', 'sentiment', '--epochs', '1', '--batch-size', '8',
            '--max-len', '32', '--output-dir', str(output_dir), '--no-progress', *extra]


def test_cli_lora_writes_adapter_and_both_dirs_predict(review_files, tmp_path, capsys):
    train, test = review_files
    out = tmp_path / 'run'
    assert finetune_main(_finetune_args(train, test, out, '--lora-rank', '4',
                                        '--lora-targets', 'query,value,ffn_1')) == 0
    printed = capsys.readouterr().out
    assert 'LoRA rank 4' in printed and 'LoRA adapter' in printed
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['trainable_parameters'] < metrics['total_parameters']
    assert 0 < metrics['trainable_fraction'] < 1
    assert metrics['lora']['targets'] == ['query', 'value', 'ffn_1']
    assert metrics['adapter_bytes'] == sum(
        os.path.getsize(out / 'adapter' / f) for f in os.listdir(out / 'adapter'))
    assert metrics['adapter_bytes'] < os.path.getsize(out / 'model' / 'model.params') / 2
    merged, _, _ = gluonbert.load_pretrained(str(out / 'model'))
    assert not lora_layers(merged)

    answers = {}
    for name in ('model', 'adapter'):
        assert predict_main(['--model-dir', str(out / name), 'a lovely film', 'awful']) == 0
        answers[name] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a['text'] for a in answers['adapter']] == ['a lovely film', 'awful']
    assert answers['adapter'] == answers['model']


@pytest.mark.parametrize('flags, message', [
    (['--lora-rank', '0'], '--lora-rank must be >= 1'),
    (['--lora-alpha', '8'], '--lora-alpha need(s) --lora-rank'),
    (['--lora-rank', '4', '--lora-targets', 'query,bogus'], "unknown LoRA target(s) 'bogus'"),
    (['--lora-rank', '4', '--lora-dropout', '1.5'], '--lora-dropout must be in [0, 1)'),
    (['--lora-rank', '64'], 'rank must be an integer in [1, 32)'),
])
def test_cli_bad_lora_flags_are_one_line(review_files, tmp_path, flags, message, capsys):
    train, test = review_files
    assert finetune_main(_finetune_args(train, test, tmp_path / 'x', *flags)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err


@pytest.fixture(scope='module')
def adapter_run(tmp_path_factory):
    """A base model directory and a LoRA adapter on it (``run/base``, ``run/adapter``)."""
    vocab, tokenizer = tiny_vocab()
    net = tiny_classifier()
    run = tmp_path_factory.mktemp('adapter') / 'run'
    gluonbert.save_pretrained(net.bert, vocab, tokenizer, str(run / 'base'))
    apply_lora(net, rank=4, alpha=4, targets=('query', 'value'))
    net.label_names = ['bad', 'good']
    save_lora(net, str(run / 'adapter'), base_model=str(run / 'base'))
    return run


def _damaged(name, value):
    def damage(manifest):
        if value is KeyError:
            del manifest[name]
        else:
            manifest[name] = value
    return damage


_KINDS = {'base_model': 'a string', 'base_fingerprint': 'a string', 'config': 'an object',
          'model_class': 'a string', 'rank': 'an integer', 'alpha': 'a number',
          'dropout': 'a number', 'targets': 'a list', 'num_classes': 'an integer',
          'label_names': 'a list', 'classifier': 'an object', 'classifier_dropout': 'a number',
          'max_len': 'an integer', 'extra': 'an object', 'files': 'an object'}
_MISSING = [(f'no {key}', _damaged(key, KeyError),
             f'damaged adapter manifest ({key} must be present ({kind})); save the adapter '
             f'again') for key, kind in _KINDS.items()]
_TARGET_NAMES = 'query, key, value, out_proj, ffn_1, ffn_2'
_CLASSES = "'BERTClassifier', 'BERTForPretraining', 'BERTForTokenClassification'"
_BAD_VALUES = [
    ('base_model', 3, 'a string, got 3'), ('base_model', '', 'at least 1 long, got ""'),
    ('base_fingerprint', 'xyz', 'a sha256 (64 lower-case hex digits), got "xyz"'),
    ('config', [], 'an object, got []'),
    ('model_class', 'BERTNope', f'one of {_CLASSES}, got "BERTNope"'),
    ('model_class', ['BERTClassifier'], 'a string, got ["BERTClassifier"]'),
    ('rank', 0, 'between 1 and 65536, got 0'), ('rank', 'four', 'an integer, got "four"'),
    ('rank', True, 'an integer, got true'), ('rank', 4.0, 'an integer, got 4.0'),
    ('alpha', 0, 'a number > 0, got 0'), ('alpha', -1.0, 'a number > 0, got -1.0'),
    ('alpha', '4', 'a number, got "4"'), ('dropout', 1.0, 'in [0, 1), got 1.0'),
    ('dropout', -0.1, 'between 0.0 and 1.0, got -0.1'), ('dropout', None, 'a number, got null'),
    ('targets', [], 'at least 1 long, got []'), ('targets', 'query', 'a list, got "query"'),
    ('targets', ['query', 'nope'], f'a list of distinct names from {_TARGET_NAMES}, got '
                                   f'["query", "nope"]'),
    ('targets', ['query', 'query'], f'a list of distinct names from {_TARGET_NAMES}, got '
                                    f'["query", "query"]'),
    ('targets', [1], f'a list of distinct names from {_TARGET_NAMES}, got [1]'),
    ('num_classes', 1, 'at least 2, got 1'), ('num_classes', '2', 'an integer, got "2"'),
    ('label_names', 'bad,good', 'a list, got "bad,good"'),
    ('label_names', [1, 2], 'a list of names, got [1, 2]'),
    ('classifier', [], 'an object, got []'),
    ('classifier_dropout', 1.5, 'between 0.0 and 1.0, got 1.5'),
    ('max_len', 2, 'at least 3, got 2'), ('max_len', 32.5, 'an integer, got 32.5'),
    ('extra', [], 'an object, got []'), ('files', [], 'an object, got []'),
]
_MUTATIONS = _MISSING + [
    (f'{key}={value!r}', _damaged(key, value),
     f'damaged adapter manifest ({key} must be {expected}); save the adapter again')
    for key, value, expected in _BAD_VALUES] + [
    ('version=1', _damaged('version', 1),
     'written by another gluonbert (adapter format version 1; this one reads version 2); '
     'save the adapter again with this version'),
    ('no version', _damaged('version', KeyError),
     'written by another gluonbert (adapter format version None; this one reads version 2); '
     'save the adapter again with this version'),
    ('version 1 field', _damaged('params_sha1', '0' * 40),
     'damaged adapter manifest (unknown field params_sha1; known: alpha, base_fingerprint, '
     'base_model, classifier, classifier_dropout, config, dropout, extra, files, format, '
     'label_names, max_len, model_class, num_classes, rank, targets, version); save the '
     'adapter again'),
    ('no params record', _damaged('files', {}),
     'damaged adapter manifest (files.adapter.params must be present (the model needs that '
     'file)); save the adapter again'),
    ('negative bytes', _damaged('files', {'adapter.params': {'bytes': -1, 'sha1': '0' * 40}}),
     'damaged adapter manifest (files.adapter.params.bytes must be at least 0, got -1); save '
     'the adapter again'),
    ('upper-case sha1', _damaged('files', {'adapter.params': {'bytes': 1, 'sha1': 'A' * 40}}),
     f'damaged adapter manifest (files.adapter.params.sha1 must be a sha1 (40 lower-case hex '
     f'digits), got "{"A" * 40}"); save the adapter again'),
    ('config field', _damaged('config', {'nope': 1}),
     'damaged adapter manifest (config: unknown BERTConfig field(s): nope); save the adapter '
     'again'),
    ('rank too large', _damaged('rank', TINY_UNITS),
     f'the adapter does not fit its base (LoRA rank must be an integer in [1, {TINY_UNITS}) '
     f'for bert.encoder.layers.0.attention.query ({TINY_UNITS} -> {TINY_UNITS}), got '
     f'{TINY_UNITS})'),
    ('3 labels for 2 classes', _damaged('classifier', {'label_names': ['a', 'b', 'c']}),
     'damaged manifest (num_classes is 2 but classifier.label_names has 3 names)'),
]


@pytest.mark.parametrize('damage, message', [m[1:] for m in _MUTATIONS],
                         ids=[m[0] for m in _MUTATIONS])
def test_a_damaged_adapter_manifest_is_one_line_through_predict(adapter_run, tmp_path, capsys,
                                                                damage, message):
    run = tmp_path / 'run'
    shutil.copytree(adapter_run, run)
    path = run / 'adapter' / 'adapter.json'
    manifest = json.loads(path.read_text())
    damage(manifest)
    path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert predict_main(['--model-dir', str(run / 'adapter'), 'a text']) == 2
    assert capsys.readouterr().err == f'gluonbert-predict: error: {path}: {message}\n'


@pytest.mark.parametrize('content, message', [
    ('{"format": "gluonbert-lora", ', 'damaged adapter manifest (not valid JSON: Expecting '
                                      'property name enclosed in double quotes: line 1 '
                                      'column 30 (char 29))'),
    ('[1, 2]', 'damaged adapter manifest (the file holds a list, not an object)'),
    ('{"format": "other"}', None),
])
def test_an_adapter_manifest_that_is_not_one_is_one_line(adapter_run, tmp_path, capsys,
                                                         content, message):
    run = tmp_path / 'run'
    shutil.copytree(adapter_run, run)
    path = run / 'adapter' / 'adapter.json'
    path.write_text(content)
    capsys.readouterr()
    assert predict_main(['--model-dir', str(run / 'adapter'), 'a text']) == 2
    expected = f'{path}: {message}' if message else f'{path} is not a gluonbert LoRA adapter ' \
        f"manifest (format 'other', expected 'gluonbert-lora')"
    assert capsys.readouterr().err == f'gluonbert-predict: error: {expected}\n'
