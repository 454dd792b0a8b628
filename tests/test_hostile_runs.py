"""Hostile run files and impossible settings (issue 27): every one a single line and exit
status 2 through the console commands, never a traceback, a silent replacement or a
resume from an impossible position.

The run files are mutated by generators (every field of a checkpoint's state.json, of a
shard manifest and of a preparation's progress file: wrong type, out of range, missing,
an unknown field, nested too deep, a key twice), each case run through the real command.
"""
import json
import os
import shutil

import numpy as np
import mxnet as mx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gluonbert
from gluonbert.cli import finetune_main, predict_main, pretrain_main
from gluonbert.cli.launch import main as launch_main
from gluonbert.cli.pretrain_data import pretrain_data_main
from gluonbert.errors import CheckpointError
from gluonbert.engine.checkpoint import checkpoint_paths, read_state
from gluonbert.engine.loop import DivergedError, check_weights
from stand_ins import review_rows, save_review_encoder, write_review_csv

FINETUNE, PRETRAIN = 'gluonbert-finetune: error: ', 'gluonbert-pretrain: error: '
DEEP = 70  # nesting levels: past schema.MAX_JSON_DEPTH
CASES = {}  # file kind -> generated cases run (printed by the tests that run them, with -s)


# ------------------------------------------------------------------------------ files
@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Review CSVs, a corpus, and a tiny saved encoder with a vocabulary of their words."""
    root = tmp_path_factory.mktemp('hostile')
    rows = review_rows()
    model, words = save_review_encoder(root / 'encoder')
    corpus = root / 'corpus.txt'
    rng = np.random.RandomState(0)
    corpus.write_text(''.join(' '.join(rng.choice(words, 8)) + '.\n' +
                              ('\n' if line % 4 == 3 else '') for line in range(96)))
    return {'model': model, 'train': write_review_csv(root / 'train.csv', rows * 2),
            'test': write_review_csv(root / 'test.csv', rows), 'corpus': str(corpus),
            'root': root}


def finetune_args(files, out, *extra, epochs=1):
    return ['--model', files['model'], '--train', files['train'], '--test', files['test'],
            '--text-column', 'review', '--label-column', 'sentiment', '--epochs', str(epochs),
            '--batch-size', '8', '--max-len', '32', '--lr', '1e-3', '--output-dir', str(out),
            '--no-progress', *extra]


def pretrain_args(files, out, *extra):
    return ['--model', files['model'], '--corpus', files['corpus'], '--max-len', '24',
            '--steps', '2', '--log-interval', '1', '--batch-size', '4', '--eval-examples', '4',
            '--examples-per-shard', '16', '--output-dir', str(out), '--no-progress', *extra]


def one_line(capsys, prefix, *names):
    """The single stderr line of a refused command, checked to start with ``prefix`` and to
    name each of ``names``."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0][len(prefix):]


@pytest.fixture(scope='module')
def interrupted(files, tmp_path_factory):
    """An unfinished fine-tuning run: its checkpoint epoch-0001, no model."""
    out = tmp_path_factory.mktemp('interrupted') / 'run'
    assert finetune_main(finetune_args(files, out)) == 0
    shutil.rmtree(out / 'model')
    os.unlink(out / 'metrics.json')
    return out


@pytest.fixture
def run_copy(interrupted, tmp_path):
    out = tmp_path / 'run'
    shutil.copytree(interrupted, out)
    return out


def state_path(out, name='epoch-0001'):
    return checkpoint_paths(str(out / 'checkpoints'), name)['state']


# ------------------------------------------------------------------ mutations of JSON
def _paths(value, prefix=()):
    """Every position in a JSON value (the root excluded), parents first."""
    if prefix:
        yield prefix
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from _paths(item, prefix + (key,))


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def _wrong_type(value):
    if isinstance(value, bool):
        return 'true'
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return {'0': value}
    if isinstance(value, dict):
        return [value]
    return {'null': []}


def _out_of_range(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return -1
    if isinstance(value, (str, list, dict)):
        return type(value)()
    return None


def mutations(document, deep_paths=1):
    """``(label, text)`` of the file ``document`` mutated at each position: a value of the
    wrong type, out of range, the field missing, an unknown field beside it, a key twice
    in its object; and the document nested too deep (at ``deep_paths`` positions)."""
    base = json.dumps(document, sort_keys=True)

    def changed(path, change):
        copy = json.loads(base)
        parent = _get(copy, path[:-1])
        change(parent, path[-1])
        text = json.dumps(copy, sort_keys=True)
        return None if text == base else text

    def put(value):
        return lambda parent, key: parent.__setitem__(key, value)

    for count, path in enumerate(_paths(document)):
        value, where = _get(document, path), '.'.join(map(str, path))
        for kind, new in (('type', _wrong_type(value)), ('range', _out_of_range(value))):
            text = changed(path, put(new))
            if text is not None:
                yield f'{where}: {kind}', text
        yield f'{where}: missing', changed(path, lambda parent, key: parent.__delitem__(key))
        if isinstance(value, dict):
            text = changed(path, lambda parent, key: parent[key].__setitem__('unexpected', 1))
            yield f'{where}: extra field', text
            if value:
                key = sorted(value)[0]
                twice = json.dumps({key: value[key]}, sort_keys=True)[1:-1]
                marker = '"__twice__"'
                text = changed(path, put('__twice__'))
                yield f'{where}: key twice', text.replace(
                    marker, '{' + twice + ', ' + json.dumps(value, sort_keys=True)[1:])
        if count < deep_paths:
            yield f'{where}: nested too deep', changed(path, put(
                json.loads('[' * DEEP + ']' * DEEP)))


# ------------------------------------------------------------- state.json, generated
def test_every_damaged_state_field_is_one_line(files, interrupted, tmp_path, capsys):
    """Each mutation of the checkpoint's state.json: exit 2, one line naming the file (or,
    for what a resume compares, the checkpoint directory and what differs)."""
    state = json.loads(open(state_path(interrupted)).read())
    out = tmp_path / 'run'
    shutil.copytree(interrupted, out)
    path, checkpoints = state_path(out), out / 'checkpoints'
    argv = finetune_args(files, out, '--resume')
    count = 0
    for label, text in mutations(state):
        with open(path, 'w') as f:
            f.write(text)
        capsys.readouterr()
        assert finetune_main(argv) == 2, label
        line = one_line(capsys, FINETUNE, checkpoints)
        assert path in line or f'{checkpoints}: cannot resume' in line or \
            'no optimizer states' in line, (label, line)
        assert not (out / 'model').exists(), label
        count += 1
    CASES['state.json'] = count
    print(CASES)
    assert count > 200
    with open(path, 'w') as f:  # the file as it was resumes
        json.dump(state, f)
    assert finetune_main(argv) == 0


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_edits_of_state_numbers_are_refused_or_resumed_whole(files, interrupted,
                                                                    run_copy, capsys, data):
    """Any integer in place of a counter: refused in one line unless it is the value the
    run wrote, or a value the run could have (a longer num_epoch, another seed): then the
    run resumes."""
    path = state_path(run_copy)
    with open(state_path(interrupted)) as f:  # the run as it was: each example edits it
        state = json.load(f)
    key = data.draw(st.sampled_from(['epoch', 'step', 'batches', 'stale_epochs',
                                     'num_epoch', 'seed']))
    value = data.draw(st.integers(-10 ** 12, 10 ** 12))
    edited = dict(state, **{key: value})
    with open(path, 'w') as f:
        json.dump(edited, f)
    capsys.readouterr()
    status = finetune_main(finetune_args(files, run_copy, '--resume'))
    CASES['state.json (hypothesis)'] = CASES.get('state.json (hypothesis)', 0) + 1
    if value == state[key] or key == 'seed' and value >= 0 or key == 'num_epoch' and value >= 1:
        assert status == 0
        shutil.rmtree(run_copy / 'model')  # unfinished again for the next example
        with open(path, 'w') as f:
            json.dump(state, f)
    else:
        assert status == 2
        one_line(capsys, FINETUNE, path, key)


@pytest.mark.parametrize('key, value, message', [
    ('epoch', -5, 'epoch must be between 0 and 0, got -5'),
    ('epoch', 3, 'epoch must be between 0 and 0, got 3'),
    ('run', {'settings': 'lr=1'}, 'run.settings must be an object, got "lr=1"'),
    ('history', [1, 2], 'history[0] must be an object (a record), got 1'),
    ('best_accuracy', 'inf', 'best_accuracy must be a number or null, got "inf"'),
    ('stale_epochs', 1, 'stale_epochs must be 0 (the records since the best), got 1'),
])
def test_the_reported_state_edits(files, run_copy, capsys, key, value, message):
    path = state_path(run_copy)
    with open(path) as f:
        state = json.load(f)
    if key == 'run':
        value = dict(state['run'], **value)
    with open(path, 'w') as f:
        json.dump(dict(state, **{key: value}), f)
    assert finetune_main(finetune_args(files, run_copy, '--resume', epochs=2)) == 2
    line = one_line(capsys, FINETUNE, path)
    assert f'damaged checkpoint state ({message})' in line
    with pytest.raises(CheckpointError):
        read_state(path)


def test_label_names_as_a_number(files, run_copy, capsys):
    path = state_path(run_copy)
    with open(path) as f:
        state = json.load(f)
    state['run']['label_names'] = 7
    with open(path, 'w') as f:
        json.dump(state, f)
    assert finetune_main(finetune_args(files, run_copy, '--resume')) == 2
    assert 'run.label_names must be a list or null, got 7' in one_line(capsys, FINETUNE, path)


# -------------------------------------------------- shard manifest and progress, generated
@pytest.fixture(scope='module')
def prepared(files, tmp_path_factory):
    """Shards of the corpus (gluonbert-pretrain-data), and a preparation stopped after its
    first shard (its progress.json)."""
    root = tmp_path_factory.mktemp('shards')
    argv = ['--input', files['corpus'], '--model', files['model'], '--max-len', '24',
            '--examples-per-shard', '8', '--heldout-every', '4', '--no-progress']
    assert pretrain_data_main([*argv, '--output', str(root / 'done')]) == 0
    return root / 'done', argv


def test_every_damaged_manifest_field_is_one_line(files, prepared, tmp_path, capsys):
    done, _ = prepared
    manifest = json.loads((done / 'manifest.json').read_text())
    data = tmp_path / 'shards'
    shutil.copytree(done, data)
    path = data / 'manifest.json'
    argv = ['--data', str(data), '--model', files['model'], '--steps', '1', '--batch-size',
            '2', '--eval-examples', '2', '--output-dir', str(tmp_path / 'out'),
            '--no-progress']
    count = 0
    for label, text in mutations(manifest):
        path.write_text(text)
        capsys.readouterr()
        assert pretrain_main(argv) == 2, label
        line = one_line(capsys, PRETRAIN, data)
        assert not (tmp_path / 'out' / 'model').exists(), (label, line)
        count += 1
    CASES['manifest.json'] = count
    print(CASES)
    assert count > 60


def test_every_damaged_progress_field_is_one_line(prepared, tmp_path, capsys):
    """A stopped preparation's progress.json, mutated: the same command refuses it in one
    line (continuing would build shards from a position it cannot trust)."""
    _, argv = prepared
    out = tmp_path / 'partial'
    gluonbert._io._boundary_hook = _stop_after_first_commit
    try:
        with pytest.raises(_Stop):
            pretrain_data_main([*argv, '--output', str(out)])
    finally:
        gluonbert._io._boundary_hook = None
    progress = json.loads((out / 'progress.json').read_text())
    saved = {name: (out / name).read_bytes() for name in os.listdir(out)}
    count = 0
    for label, text in mutations(progress):
        for name, content in saved.items():
            (out / name).write_bytes(content)
        (out / 'progress.json').write_text(text)
        capsys.readouterr()
        status = pretrain_data_main([*argv, '--output', str(out)])
        if status == 0:  # only what the identity compares may change and be prepared anew
            assert 'another preparation' not in capsys.readouterr().err
            pytest.fail(f'{label}: accepted')
        assert status == 2, label
        one_line(capsys, 'gluonbert-pretrain-data: error: ', out)
        assert not (out / 'manifest.json').exists(), label
        count += 1
    CASES['progress.json'] = count
    print(CASES)
    assert count > 60


class _Stop(Exception):
    pass


def _stop_after_first_commit(name, path):
    if name == 'prepare.commit':
        raise _Stop()


# ------------------------------------------------------------------ impossible settings
@pytest.mark.parametrize('flags, message', [
    (['--dropout', '1.5'], '--dropout must be in [0, 1), got 1.5'),
    (['--dropout', 'nan'], '--dropout must be in [0, 1), got nan'),
    (['--early-stop', '-1'], '--early-stop must be an integer >= 0, got -1'),
    (['--lr', 'inf'], '--lr must be a finite number, got inf'),
    (['--lr', '-1'], '--lr must be in (0, inf), got -1.0'),
    (['--weight-decay', 'nan'], '--weight-decay must be a finite number, got nan'),
    (['--warmup-ratio', '1'], '--warmup-ratio must be in [0, 1), got 1.0'),
    (['--max-len', '100'], '--max-len 100 exceeds the model max_length 64'),
    (['--lora-rank', '2', '--lora-alpha', 'inf'],
     '--lora-alpha must be a finite number > 0, got inf'),
    (['--resume', '--overwrite'], '--resume continues the run in --output-dir, --overwrite '
                                  'replaces it: give one of them'),
])
def test_impossible_finetune_settings(files, tmp_path, capsys, flags, message):
    out = tmp_path / 'run'
    assert finetune_main(finetune_args(files, out, *flags)) == 2
    assert one_line(capsys, FINETUNE) == message
    assert not (out / 'checkpoints').exists()


@pytest.mark.parametrize('flags, message', [
    (['--lr', 'inf'], '--lr must be a finite number, got inf'),
    (['--lr', 'nan'], '--lr must be a finite number, got nan'),
    (['--warmup-ratio', '-0.5'], '--warmup-ratio must be in [0, 1), got -0.5'),
    (['--max-length', '2000000'],
     '--max-length must be at most 8192 (position embeddings), got 2000000'),
    (['--max-length', '16'], '--max-length 16 is shorter than --max-len 24: the examples '
                             'need a position embedding each'),
    (['--max-predictions', '100'], '--max-predictions must be at most --max-len (24), got 100'),
    (['--max-len', '2000'], '--max-len must be in [5, 512], got 2000'),
    (['--resume', '--overwrite'], '--resume continues the run in --output-dir, --overwrite '
                                  'replaces it: give one of them'),
])
def test_impossible_pretrain_settings(files, tmp_path, capsys, flags, message):
    out = tmp_path / 'run'
    argv = pretrain_args(files, out, *flags)
    if '--max-length' in flags:  # a preset: --max-length sizes its position table
        argv[argv.index('--model') + 1] = 'tiny'
    assert pretrain_main(argv) == 2
    assert one_line(capsys, PRETRAIN) == message
    assert not out.exists()  # refused before anything is written


def test_impossible_settings_of_the_python_configs():
    for config, changes, message in (
            (gluonbert.TrainConfig, {'lr': float('inf')}, 'lr must be a finite number'),
            (gluonbert.TrainConfig, {'weight_decay': float('nan')},
             'weight_decay must be a finite number'),
            (gluonbert.TrainConfig, {'early_stop': -1}, 'early_stop must be an integer >= 0'),
            (gluonbert.PretrainConfig, {'lr': float('inf')}, 'lr must be a finite number'),
            (gluonbert.TrainConfig, {'resume': True, 'overwrite': True,
                                     'checkpoint_dir': 'x'}, 'give one of them')):
        with pytest.raises(gluonbert.errors.UsageError, match=message):
            config(**changes)


def test_a_hosts_file_that_is_not_utf8(tmp_path, capsys):
    hosts = tmp_path / 'hosts'
    hosts.write_bytes(b'node1\nn\xe9ud2\n')
    assert launch_main(['-n', '1', '--hosts', str(hosts), '--dry-run', '--', 'true']) == 2
    line = one_line(capsys, 'gluonbert-launch: error: ', hosts)
    assert 'line 2 is not UTF-8 text (byte 2, 0xe9)' in line


# ------------------------------------------------------------------- non-finite losses
def test_finetune_stops_at_the_first_non_finite_loss(files, tmp_path, capsys):
    """A learning rate of 1e30 overflows the weights at the first update: the second
    batch's loss is NaN; nothing is saved."""
    out = tmp_path / 'run'
    assert finetune_main(finetune_args(files, out, '--lr', '1e30', '--warmup-ratio', '0',
                                       epochs=2)) == 2
    line = one_line(capsys, FINETUNE)
    assert line.startswith('training diverged: the loss is nan at epoch 1, batch 2 of 3 '
                           '(update 2)'), line
    assert os.listdir(out / 'checkpoints') == ['.lock']
    assert not (out / 'model').exists()


def _overflowing(pooler_weight, pooler_bias, classifier_weight):
    """Finite weights whose product overflows float32: a pooler that outputs tanh(10) ~ 1
    in every unit, and a classifier of 1e38s (each logit 1e38 x units: infinite)."""
    for param, value in ((pooler_weight, 0.0), (pooler_bias, 10.0),
                         (classifier_weight, 1e38)):
        data = param if isinstance(param, mx.nd.NDArray) else param.data()
        filled = mx.nd.full(data.shape, value, dtype=data.dtype)
        if isinstance(param, mx.nd.NDArray):
            param[:] = filled
        else:
            param.set_data(filled)


def test_train_loop_keeps_the_last_good_checkpoint(tmp_path):
    """Weights that overflow float32 in their product after epoch 1 (:func:`_overflowing`):
    epoch 2's first loss is not finite; epoch 1's checkpoint stays the current one, and
    nothing after it is written."""
    from test_train import synthetic, tiny_classifier
    net = tiny_classifier()
    train, test = synthetic(n=32), synthetic(n=16, seed=1)

    def overflow(record):
        if record['epoch'] == 0:
            _overflowing(net.bert.pooler.weight, net.bert.pooler.bias, net.classifier[1].weight)
    directory = tmp_path / 'checkpoints'
    with pytest.raises(DivergedError, match=r'at epoch 2, batch 1 of 2 \(update 3\)'):
        gluonbert.train_loop(net, train, test, 3, 1e-3, mx.cpu(), progress=False,
                             checkpoint_dir=str(directory), on_epoch_end=overflow,
                             metrics_path=str(tmp_path / 'metrics.jsonl'))
    assert (directory / 'last').read_text() == 'epoch-0001\n'
    assert sorted(n for n in os.listdir(directory) if n.startswith('epoch')) == ['epoch-0001']
    lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(line)['epoch'] for line in lines] == [0]


def test_no_checkpoint_holds_weights_that_are_not_finite():
    """The check before every checkpoint: finite weights pass (however large), one
    infinite value is refused naming its parameter."""
    from test_train import tiny_classifier
    net = tiny_classifier()
    check_weights(net, 3)
    weight = net.classifier[1].weight
    weight.set_data(weight.data() * 1e38)
    check_weights(net, 3)
    data = weight.data()
    data[0, 0] = float('inf')
    weight.set_data(data)
    with pytest.raises(DivergedError, match=r'the weights after update 3 are not finite '
                                            r'\(classifier.1.weight\)'):
        check_weights(net, 3)


@pytest.mark.parametrize('log_interval, message', [
    ('2', 'training diverged: the loss is nan at epoch 1, batch 2 of '),
    ('1', 'training diverged: the held-out mlm_loss is nan after update 1'),
])
def test_pretrain_stops_at_the_first_non_finite_loss(files, tmp_path, capsys, log_interval,
                                                     message):
    """An lr of 1e30 overflows the weights at update 1: the next forward pass (the
    held-out one, when update 1 is logged) has a NaN loss; nothing is saved."""
    out = tmp_path / 'run'
    assert pretrain_main(pretrain_args(files, out, '--lr', '1e30', '--warmup-ratio', '0',
                                       '--log-interval', log_interval)) == 2
    line = one_line(capsys, PRETRAIN)
    assert line.startswith(message), line
    assert 'update 2)' in line if log_interval == '2' else True
    assert os.listdir(out / 'checkpoints') == ['.lock']
    assert not (out / 'model').exists()
    assert not (out / 'metrics.jsonl').read_text()  # no record of the NaN


# ------------------------------------------------------------------ one run per directory
def test_one_run_per_directory(files, interrupted, tmp_path, capsys):
    out = tmp_path / 'run'
    shutil.copytree(interrupted, out)
    before = (out / 'checkpoints' / 'epoch-0001' / 'model.params').read_bytes()
    assert finetune_main(finetune_args(files, out, epochs=2)) == 2
    assert one_line(capsys, FINETUNE) == (f'{out} holds an unfinished run (checkpoint '
                                          f'epoch-0001); --resume continues it, --overwrite '
                                          f'replaces it')
    assert (out / 'checkpoints' / 'epoch-0001' / 'model.params').read_bytes() == before
    assert finetune_main(finetune_args(files, out, '--resume', epochs=2)) == 0
    assert (out / 'checkpoints' / 'last').read_text() == 'epoch-0002\n'
    capsys.readouterr()
    assert finetune_main(finetune_args(files, out)) == 2  # finished: refused as well
    assert one_line(capsys, FINETUNE) == (f'{out} holds a finished run (its model is in '
                                          f'{out / "model"}); --overwrite replaces it, or '
                                          f'choose another --output-dir')
    assert finetune_main(finetune_args(files, out, '--overwrite')) == 0
    assert (out / 'checkpoints' / 'last').read_text() == 'epoch-0001\n'
    assert sorted(n for n in os.listdir(out / 'checkpoints') if n.startswith('epoch')) == \
        ['epoch-0001']
    lines = (out / 'metrics.jsonl').read_text().splitlines()
    assert len(lines) == 1


def test_train_loop_refuses_another_runs_checkpoints(tmp_path):
    from test_train import synthetic, tiny_classifier
    train, directory = synthetic(n=16), str(tmp_path / 'checkpoints')
    gluonbert.train_loop(tiny_classifier(), train, None, 1, 1e-3, mx.cpu(), progress=False,
                         checkpoint_dir=directory)
    with pytest.raises(CheckpointError, match='holds the checkpoints of another run '
                                              r'\(epoch-0001\); resume=True continues it'):
        gluonbert.train_loop(tiny_classifier(), train, None, 2, 1e-3, mx.cpu(),
                             progress=False, checkpoint_dir=directory)
    history = gluonbert.train_loop(tiny_classifier(), train, None, 2, 1e-3, mx.cpu(),
                                   progress=False, checkpoint_dir=directory, overwrite=True)
    assert len(history) == 2
    assert sorted(n for n in os.listdir(directory) if n.startswith('epoch')) == ['epoch-0002']


def test_pretrain_one_run_per_directory(files, tmp_path, capsys):
    out = tmp_path / 'run'
    assert pretrain_main(pretrain_args(files, out)) == 0
    capsys.readouterr()
    assert pretrain_main(pretrain_args(files, out)) == 2
    assert 'holds a finished run' in one_line(capsys, PRETRAIN, out)
    shutil.rmtree(out / 'model')
    assert pretrain_main(pretrain_args(files, out)) == 2
    assert one_line(capsys, PRETRAIN) == (f'{out} holds an unfinished run (checkpoint '
                                          f'step-0002); --resume continues it, --overwrite '
                                          f'replaces it')
    assert pretrain_main(pretrain_args(files, out, '--overwrite')) == 0
    assert (out / 'model').is_dir()


# ------------------------------------------------------------------------ ambiguous data
def test_a_repeated_jsonl_key_is_refused(files, tmp_path, capsys):
    data = tmp_path / 'train.jsonl'
    data.write_text('{"review": "fine", "sentiment": "positive"}\n'
                    '{"review": "bad", "sentiment": "negative", "sentiment": "positive"}\n')
    argv = finetune_args(files, tmp_path / 'run')
    argv[argv.index('--train') + 1] = argv[argv.index('--test') + 1] = str(data)
    assert finetune_main(argv) == 2
    assert one_line(capsys, FINETUNE) == (f"{data}:2: the field 'sentiment' appears twice in "
                                          f"one object (which value is meant?)")
    corpus = tmp_path / 'corpus.jsonl'
    corpus.write_text('{"text": "one. two."}\n{"text": "a", "text": "b"}\n')
    with pytest.raises(gluonbert.errors.DataError, match=r'corpus.jsonl:2: the field '
                                                         r"'text' appears twice"):
        list(gluonbert.data.iter_documents([str(corpus)]))


# ----------------------------------------------------------------- predictions, valid JSON
def test_predict_refuses_non_finite_scores_in_one_line(files, tmp_path, capsys, monkeypatch):
    """A model whose weights are finite but overflow float32 in their product
    (:func:`_overflowing`): one line naming the input, never ``NaN`` in the output."""
    out = tmp_path / 'run'
    assert finetune_main(finetune_args(files, out)) == 0
    model_dir = out / 'model'
    capsys.readouterr()
    good = predict_main(['--model-dir', str(model_dir), 'a great film'])
    answer = capsys.readouterr().out
    assert good == 0 and json.loads(answer, parse_constant=pytest.fail)['label']
    params = mx.nd.load(str(model_dir / 'model.params'))
    _overflowing(params['bert.pooler.weight'], params['bert.pooler.bias'],
                 params['classifier.1.weight'])
    assert all(np.isfinite(p.asnumpy()).all() for p in params.values())
    mx.nd.save(str(model_dir / 'model.params'), params)
    _refresh_checksums(model_dir)
    monkeypatch.setattr('sys.stdin', _Lines(['a great film', 'a dull film']))
    assert predict_main(['--model-dir', str(model_dir)]) == 2
    captured = capsys.readouterr()
    assert 'NaN' not in captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('gluonbert-predict: error: '), lines
    assert 'non-finite probabilities' in lines[0] and 'for line 1' in lines[0], lines[0]


class _Lines:
    def __init__(self, lines):
        self.lines = [line + '\n' for line in lines]

    def __iter__(self):
        return iter(self.lines)


def _refresh_checksums(model_dir):
    """Record the edited weights' size and digest in the model's manifest (as a user who
    edits weights on purpose would re-save them)."""
    import hashlib
    manifest_path = model_dir / 'gluonbert.json'
    manifest = json.loads(manifest_path.read_text())
    data = (model_dir / 'model.params').read_bytes()
    manifest['files']['model.params'] = {'bytes': len(data),
                                         'sha1': hashlib.sha1(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest))
