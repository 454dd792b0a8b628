"""Checkpoints to trust: a crash at any write resumes bit for bit, nothing is unpickled,
resume checks what it resumes, one run per output directory, damage is a one-line error."""
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import mxnet as mx
import pytest

import gluonbert
import gluonbert._io
from gluonbert.cli import finetune as cli
from gluonbert.cli import finetune_main
from gluonbert.errors import CheckpointError, ModelError, UsageError
from gluonbert.pretrained import load_pretrained
from gluonbert.train import load_trainer_states, make_trainer, train_loop
from stand_ins import crash_snapshots, review_rows, save_review_encoder, write_review_csv
from test_train import synthetic, tiny_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 3
# the fields of a metrics line that do not depend on the timing
DETERMINISTIC = ('epoch', 'train_loss', 'train_accuracy', 'test_accuracy', 'lr')


def _params(net):
    return {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}


def _train(directory, net=None, **options):
    """A tiny run with a checkpoint and a metrics line per epoch, in ``directory``."""
    options = {'num_epoch': EPOCHS, 'lr': 2e-3, 'ctx': mx.cpu(), 'progress': False,
               'seed': 7, 'checkpoint_dir': str(directory / 'checkpoints'),
               'metrics_path': str(directory / 'metrics.jsonl'), **options}
    net = net or tiny_classifier()
    history = train_loop(net, synthetic(n=48), synthetic(n=16, seed=1, shuffle=False),
                         **options)
    return net, history


def _metrics(directory):
    return [{k: json.loads(line)[k] for k in DETERMINISTIC}
            for line in (directory / 'metrics.jsonl').read_text().splitlines()]


# --------------------------------------------------------------------- transactions
PER_EPOCH = ['metrics', 'checkpoint.staging', 'checkpoint.model.params',
             'checkpoint.trainer.states', 'checkpoint.state.json', 'checkpoint.renamed',
             'checkpoint.pointer', 'checkpoint.pruned']


def test_a_crash_at_any_write_boundary_resumes_bit_for_bit(tmp_path, monkeypatch):
    reference_dir = tmp_path / 'reference'
    reference, _ = _train(reference_dir)
    run = tmp_path / 'run'
    snapshots = crash_snapshots(monkeypatch, run, tmp_path / 'crashes')
    _train(run)
    monkeypatch.setattr(gluonbert._io, '_boundary_hook', None)

    kinds = [path.name.split('-', 1)[1] for path in snapshots]
    for kind in PER_EPOCH:
        assert kinds.count(kind) == EPOCHS, kind
    assert 1 <= kinds.count('checkpoint.best') <= EPOCHS
    assert len(kinds) == len(PER_EPOCH) * EPOCHS + kinds.count('checkpoint.best')
    # the case of the old layout's bug: epoch 2's weights complete on disk, the pointer
    # still at epoch 1
    renamed = [s for s in snapshots if s.name.endswith('checkpoint.renamed')][1]
    assert (renamed / 'checkpoints' / 'last').read_text() == 'epoch-0001\n'
    assert (renamed / 'checkpoints' / 'epoch-0002' / 'model.params').is_file()

    expected = _params(reference)
    lines = _metrics(reference_dir)
    assert [line['epoch'] for line in lines] == list(range(EPOCHS))
    final = {name: (reference_dir / 'checkpoints' / 'epoch-0003' / name).read_bytes()
             for name in ('model.params', 'trainer.states')}
    best = (reference_dir / 'checkpoints' / 'best.params').read_bytes()
    for snapshot in snapshots:
        where = snapshot.name
        # another initialisation: what is resumed must come from disk; with no checkpoint
        # yet, the resumed run starts over as the interrupted one did
        committed = (snapshot / 'checkpoints' / 'last').exists()
        resumed, history = _train(snapshot, net=tiny_classifier(seed=99 if committed else 0),
                                  resume=True)
        assert [record['epoch'] for record in history] == list(range(EPOCHS)), where
        got = _params(resumed)
        for name, value in expected.items():
            assert np.array_equal(got[name], value), (where, name)
        assert _metrics(snapshot) == lines, where  # exactly one line per epoch
        checkpoints = snapshot / 'checkpoints'
        assert sorted(os.listdir(checkpoints)) == ['.lock', 'best.params', 'epoch-0003',
                                                   'last'], where
        for name, data in final.items():
            assert (checkpoints / 'epoch-0003' / name).read_bytes() == data, (where, name)
        assert (checkpoints / 'best.params').read_bytes() == best, where


def test_resume_may_add_epochs(tmp_path):
    _train(tmp_path, num_epoch=2)
    _, history = _train(tmp_path, num_epoch=3, resume=True)
    assert [record['epoch'] for record in history] == [0, 1, 2]
    assert [line['epoch'] for line in _metrics(tmp_path)] == [0, 1, 2]
    assert (tmp_path / 'checkpoints' / 'last').read_text() == 'epoch-0003\n'
    _, history = _train(tmp_path, num_epoch=2, resume=True)  # fewer: nothing left to train
    assert len(history) == 3


def test_best_params_are_checked_before_use(tmp_path):
    from gluonbert.train import load_best_parameters
    net, _ = _train(tmp_path, num_epoch=1)
    checkpoints = tmp_path / 'checkpoints'
    loaded = tiny_classifier(seed=3)
    assert load_best_parameters(loaded, str(checkpoints), mx.cpu())
    for name, value in _params(net).items():
        assert np.array_equal(_params(loaded)[name], value), name
    best = checkpoints / 'best.params'
    size = best.stat().st_size
    best.unlink()  # a hard link to the checkpoint's file: replaced, not written through
    best.write_bytes(b'x' * size)
    with pytest.raises(CheckpointError) as refused:
        load_best_parameters(loaded, str(checkpoints), mx.cpu())
    assert str(refused.value) == (f'{best}: damaged or truncated ({size} bytes, expected '
                                  f'{size}; checksum mismatch); delete it to keep the last '
                                  f"epoch's weights")
    best.unlink()
    assert not load_best_parameters(loaded, str(checkpoints), mx.cpu())


def test_resume_refuses_other_settings_and_models(tmp_path):
    _train(tmp_path, num_epoch=1)
    checkpoints = tmp_path / 'checkpoints'
    with pytest.raises(CheckpointError) as refused:
        _train(tmp_path, resume=True, lr=1e-3, seed=8)
    assert str(refused.value) == (f'{checkpoints}: cannot resume: lr differs (checkpoint: '
                                  f'0.002; this run: 0.001); seed differs (checkpoint: 7; '
                                  f'this run: 8)')
    mx.random.seed(0)
    config = gluonbert.BERTConfig.from_preset('tiny', dropout=0.1, units=16)
    other = gluonbert.BERTClassifier(gluonbert.BERTModel(config), num_classes=2, dropout=0.1)
    other.initialize()
    with pytest.raises(CheckpointError) as refused:
        _train(tmp_path, net=other, resume=True)
    assert str(refused.value) == (f'{checkpoints}: cannot resume: the model differs (units: '
                                  f'32 in the checkpoint, 16 in this run)')
    three = gluonbert.BERTClassifier(gluonbert.BERTModel(gluonbert.BERTConfig.from_preset(
        'tiny', dropout=0.1)), num_classes=3, dropout=0.1)
    three.initialize()
    with pytest.raises(CheckpointError) as refused:  # (a classifier names its classes)
        _train(tmp_path, net=three, resume=True)
    assert str(refused.value) == (f'{checkpoints}: cannot resume: label names differ '
                                  f'(checkpoint: 0, 1; this run: 0, 1, 2)')
    from gluonbert.train import load_best_parameters
    with pytest.raises(CheckpointError) as refused:  # each parameter is checked before use
        load_best_parameters(three, str(checkpoints), mx.cpu())
    params = checkpoints / 'best.params'
    assert str(refused.value) == (f'{params}: cannot resume: parameter classifier.1.weight '
                                  f'has shape (2, 32) in the checkpoint, (3, 32) in this model')
    with pytest.raises(CheckpointError) as refused:
        train_loop(tiny_classifier(), synthetic(n=48, seed=5),
                   synthetic(n=16, seed=1, shuffle=False), EPOCHS, 2e-3, mx.cpu(),
                   progress=False, seed=7, checkpoint_dir=str(checkpoints), resume=True)
    assert re.fullmatch(
        re.escape(f'{checkpoints}: cannot resume: the training data differ (checkpoint: 48 '
                  f'examples, sha256 ') + '[0-9a-f]{12}; this run: 48 examples, sha256 '
        '[0-9a-f]{12}\\)', str(refused.value)), str(refused.value)


# ------------------------------------------------------------------ nothing unpickled
def _malicious_pickle(marker, protocol=4):
    """A pickle that creates ``marker`` when it is unpickled."""
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), 'w'))
    return pickle.dumps(Payload(), protocol=protocol)


def test_nothing_is_unpickled(tmp_path):
    marker = tmp_path / 'marker'
    payload = _malicious_pickle(marker)
    pickle.loads(payload).close()  # the payload works: unpickling it makes the marker
    assert marker.exists()
    marker.unlink()
    states = tmp_path / 'last.states'
    states.write_bytes(payload)
    with pytest.raises(mx.base.MXNetError):  # MXNet's loader does not unpickle either
        mx.nd.load(str(states))
    assert not marker.exists()
    trainer = make_trainer(tiny_classifier(), lr=1e-3)
    with pytest.raises(CheckpointError) as refused:
        load_trainer_states(trainer, str(states))
    assert str(refused.value) == (
        f'{states}: optimizer states in the old pickle format are not loaded (unsafe); '
        f'delete it to restart the optimizer from scratch, or start again without --resume')
    states.write_bytes(_malicious_pickle(marker, protocol=0))
    with pytest.raises(CheckpointError) as refused:
        load_trainer_states(trainer, str(states))
    assert str(refused.value) == (f'{states}: not an MXNet optimizer state file (damaged, or '
                                  f'another kind of file)')
    assert not marker.exists()


# ----------------------------------------------------------- the command line, end to end
@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Review CSVs and a tiny saved encoder with a vocabulary of their words."""
    root = tmp_path_factory.mktemp('data')
    rows = review_rows()
    model, _ = save_review_encoder(root / 'encoder')
    relabelled = [(t, ['bad', 'good', 'meh'][i % 3]) for i, (t, _) in enumerate(rows)]
    edited = [('a changed review', 'positive')] + rows[1:]
    return {'model': model, 'train': write_review_csv(root / 'train.csv', rows * 2),
            'test': write_review_csv(root / 'test.csv', rows),
            'train3': write_review_csv(root / 'train3.csv', relabelled * 2),
            'test3': write_review_csv(root / 'test3.csv', relabelled),
            'edited': write_review_csv(root / 'edited.csv', edited * 2)}


def _args(files, out, *extra, train='train', test='test', epochs=2):
    return ['--model', files['model'], '--train', files[train], '--test', files[test],
            '--text-column', 'review', '--label-column', 'sentiment', '--epochs', str(epochs),
            '--batch-size', '8', '--max-len', '32', '--lr', '1e-3', '--output-dir', str(out),
            '--no-progress', *extra]


@pytest.fixture(scope='module')
def finished(files, tmp_path_factory):
    """The output directory of a whole 2-epoch run."""
    out = tmp_path_factory.mktemp('finished') / 'run'
    assert finetune_main(_args(files, out)) == 0
    return out


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the finished run, to damage."""
    out = tmp_path / 'run'
    shutil.copytree(finished, out)
    return out


def _fails(capsys, argv, message):
    """``gluonbert-finetune argv`` exits with 2 and exactly one stderr line."""
    capsys.readouterr()
    assert finetune_main(argv) == 2
    assert capsys.readouterr().err == f'gluonbert-finetune: error: {message}\n'


KILL = '''import os, sys
import gluonbert._io
from gluonbert.cli import finetune_main


def kill(name, path):  # kill -9 once epoch 2 is complete on disk, before the pointer moves
    if name == 'checkpoint.renamed' and path.endswith('epoch-0002'):
        os._exit(9)


gluonbert._io._boundary_hook = kill
sys.exit(finetune_main(sys.argv[1:]))
'''


def test_a_killed_command_resumes_to_the_same_model(files, tmp_path, capsys):
    reference, out = tmp_path / 'reference', tmp_path / 'run'
    assert finetune_main(_args(files, reference, epochs=3)) == 0
    killed = subprocess.run([sys.executable, '-c', KILL, *_args(files, out, epochs=3)],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
    assert killed.returncode == 9, killed.stderr
    checkpoints = out / 'checkpoints'
    assert (checkpoints / 'last').read_text() == 'epoch-0001\n'
    assert (checkpoints / 'epoch-0002').is_dir()
    # the dead run's locks (OUTPUT_DIR/.lock, checkpoints/.lock) block nothing
    assert finetune_main(_args(files, out, '--resume', epochs=3)) == 0
    assert _metrics(out) == _metrics(reference)
    assert [line['epoch'] for line in _metrics(out)] == [0, 1, 2]
    got, want = (mx.nd.load(str(d / 'model' / 'model.params')) for d in (out, reference))
    assert set(got) == set(want)
    for name in want:
        assert np.array_equal(got[name].asnumpy(), want[name].asnumpy()), name
    assert sorted(os.listdir(checkpoints)) == ['.lock', 'best.params', 'epoch-0003', 'last']


def test_resume_checks_labels_data_and_flags(files, copy, capsys):
    checkpoints = copy / 'checkpoints'
    _fails(capsys, _args(files, copy, '--resume', '--labels', 'bad,good,meh', train='train3',
                         test='test3'),
           f'{checkpoints}: cannot resume: label names differ (checkpoint: negative, positive; '
           f'this run: bad, good, meh)')
    _fails(capsys, _args(files, copy, '--resume', '--lr', '2e-3', '--max-len', '24'),
           f'{checkpoints}: cannot resume: lr differs (checkpoint: 0.001; this run: 0.002); '
           f'max_len differs (checkpoint: 32; this run: 24)')
    state = json.loads((checkpoints / 'epoch-0002' / 'state.json').read_text())
    saved = state['run']['train_data']['sha256'][:12]
    capsys.readouterr()
    assert finetune_main(_args(files, copy, '--resume', train='edited')) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(re.escape(
        f'gluonbert-finetune: error: {checkpoints}: cannot resume: the training data differ '
        f'(checkpoint: 24 examples, sha256 {saved}; this run: 24 examples, sha256 ') +
        '(?!' + saved + ')[0-9a-f]{12}\\)\n', err), err
    saved = state['run']['test_data']['sha256'][:12]
    capsys.readouterr()
    assert finetune_main(_args(files, copy, '--resume', test='edited')) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(re.escape(
        f'gluonbert-finetune: error: {checkpoints}: cannot resume: the test data differ '
        f'(checkpoint: 12 examples, sha256 {saved}; this run: 24 examples, sha256 ') +
        '[0-9a-f]{12}\\)\n', err), err
    # more epochs are allowed: the run goes on
    assert finetune_main(_args(files, copy, '--resume', epochs=3)) == 0
    assert [line['epoch'] for line in _metrics(copy)] == [0, 1, 2]


def _truncate(path, size=100):
    path.write_bytes(path.read_bytes()[:size])
    return path


def test_damaged_checkpoint_files_are_one_line_errors(files, finished, tmp_path, capsys):
    def damaged(name, damage):
        out = tmp_path / name
        shutil.copytree(finished, out)
        return out, damage(out / 'checkpoints')

    out, params = damaged('params', lambda c: _truncate(c / 'epoch-0002' / 'model.params'))
    size = os.path.getsize(finished / 'checkpoints' / 'epoch-0002' / 'model.params')
    _fails(capsys, _args(files, out, '--resume'),
           f'{params}: damaged or truncated (100 bytes, expected {size}; checksum mismatch); '
           f'start the run over with --overwrite')
    out, states = damaged('states', lambda c: _truncate(c / 'epoch-0002' / 'trainer.states'))
    size = os.path.getsize(finished / 'checkpoints' / 'epoch-0002' / 'trainer.states')
    _fails(capsys, _args(files, out, '--resume'),
           f'{states}: damaged or truncated (100 bytes, expected {size}; checksum mismatch); '
           f'start the run over with --overwrite')
    out, state = damaged('state', lambda c: _truncate(c / 'epoch-0002' / 'state.json', 0))
    _fails(capsys, _args(files, out, '--resume'),
           f'{state}: damaged checkpoint state (not valid JSON: Expecting value: line 1 '
           f'column 1 (char 0))')
    out, pointer = damaged('pointer', lambda c: _truncate(c / 'last', 3))
    _fails(capsys, _args(files, out, '--resume'),
           f'{pointer}: damaged checkpoint pointer (it should name a checkpoint such as '
           f'epoch-0001); start the run over with --overwrite')
    out, checkpoints = damaged('gone', lambda c: shutil.rmtree(c / 'epoch-0002') or c)
    _fails(capsys, _args(files, out, '--resume'),
           f'{checkpoints}/last names epoch-0002, which is missing; start the run over '
           f'with --overwrite')


def _legacy(checkpoints, states):
    """Turn a checkpoint into gluonbert's first layout (last.json, last.params,
    last.states), with ``states`` as its last.states."""
    state = json.loads((checkpoints / 'epoch-0002' / 'state.json').read_text())
    (checkpoints / 'last.json').write_text(json.dumps(
        {k: state[k] for k in ('epoch', 'step', 'history', 'best_accuracy', 'stale_epochs',
                               'seed')}))
    shutil.copyfile(checkpoints / 'epoch-0002' / 'model.params', checkpoints / 'last.params')
    (checkpoints / 'last.states').write_bytes(states)
    (checkpoints / 'last').unlink()
    shutil.rmtree(checkpoints / 'epoch-0002')


def test_a_first_layout_checkpoint_is_refused_in_one_line(files, copy, tmp_path, capsys):
    checkpoints, marker = copy / 'checkpoints', tmp_path / 'marker'
    # the first layout's pickled last.states, as a crafted file: refused before it is read
    _legacy(checkpoints, _malicious_pickle(marker))
    _fails(capsys, _args(files, copy, '--resume'),
           f'{checkpoints}: a checkpoint of an older gluonbert (the first layout, '
           f'gluonbert-checkpoint-1: last.json, last.params, last.states); this version '
           f'resumes gluonbert-checkpoint-2 only: start the run over with --overwrite')
    assert not marker.exists()


def test_a_crafted_checkpoint_unpickles_nothing(files, copy, tmp_path, capsys):
    # a pickle for trainer.states, and state.json updated to match it, as anyone with
    # write access to the directory could
    directory, marker = copy / 'checkpoints' / 'epoch-0002', tmp_path / 'marker'
    payload = _malicious_pickle(marker)
    (directory / 'trainer.states').write_bytes(payload)
    state = json.loads((directory / 'state.json').read_text())
    state['files']['trainer.states'] = {'bytes': len(payload),
                                        'sha256': hashlib.sha256(payload).hexdigest()}
    (directory / 'state.json').write_text(json.dumps(state))
    _fails(capsys, _args(files, copy, '--resume'),
           f'{directory}/trainer.states: optimizer states in the old pickle format are not '
           f'loaded (unsafe); delete it to restart the optimizer from scratch, or start again '
           f'without --resume')
    assert not marker.exists()


# ------------------------------------------------------------------------ one run per dir
HOLD = '''import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, b'%d\\n' % os.getpid())
print('locked', flush=True)
time.sleep(300)
'''


@pytest.fixture
def loads(monkeypatch):
    """Counts of the data and model loads of gluonbert-finetune."""
    counts = {'data': 0, 'model': 0}
    for name, key in (('_load_data', 'data'), ('_load_model', 'model')):
        real = getattr(cli, name)

        def counted(*args, real=real, key=key):
            counts[key] += 1
            return real(*args)
        monkeypatch.setattr(cli, name, counted)
    return counts


def test_one_run_per_output_directory(files, tmp_path, capsys, loads):
    out = tmp_path / 'run'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == 'locked\n'
        _fails(capsys, _args(files, out),
               f'{out} is in use by another gluonbert run (pid {holder.pid}); wait for it '
               f'to end, or pick another directory')
        assert loads == {'data': 0, 'model': 0}  # refused at once
    finally:
        holder.kill()
        holder.wait()
    assert (out / '.lock').read_text() == f'{holder.pid}\n'  # a dead run's lock stays...
    assert finetune_main(_args(files, out, epochs=1)) == 0  # ...and blocks nothing
    assert loads == {'data': 1, 'model': 1}
    assert (out / '.lock').read_text() == f'{os.getpid()}\n'


def test_output_dir_naming_a_file_fails_before_loading(files, tmp_path, capsys, loads):
    path = tmp_path / 'a_file'
    path.write_text('not a directory')
    _fails(capsys, _args(files, path), f'--output-dir {path} is a file; give a directory')
    _fails(capsys, _args(files, path / 'run'),
           f'--output-dir {path}/run: cannot create it (Not a directory)')
    assert loads == {'data': 0, 'model': 0}


def test_directory_lock_in_one_process(tmp_path):
    from gluonbert._io import DirectoryLock
    with DirectoryLock(str(tmp_path)):
        with pytest.raises(UsageError) as refused:
            DirectoryLock(str(tmp_path))
        assert str(refused.value) == (f'{tmp_path} is in use by another gluonbert run (pid '
                                      f'{os.getpid()}); wait for it to end, or pick another '
                                      f'directory')
        with pytest.raises(UsageError, match='in use'):  # train_loop takes it too
            _train(tmp_path, checkpoint_dir=str(tmp_path), num_epoch=1)
    DirectoryLock(str(tmp_path)).release()  # free again


# --------------------------------------------------------------------- model directories
def test_damaged_model_directories_are_one_line_errors(files, tmp_path, capsys):
    def damaged(name, damage):
        directory = tmp_path / name
        shutil.copytree(files['model'], directory)
        damage(directory)
        return directory

    def refused(directory, message):
        with pytest.raises(ModelError) as error:
            load_pretrained(str(directory))
        assert str(error.value) == message

    def manifest_without(*keys):
        def damage(directory):
            manifest = json.loads((directory / 'gluonbert.json').read_text())
            parent = manifest
            for key in keys[:-1]:
                parent = parent[key]
            del parent[keys[-1]]
            (directory / 'gluonbert.json').write_text(json.dumps(manifest))
        return damage
    directory = damaged('no_bytes', manifest_without('files', 'model.params', 'bytes'))
    refused(directory, f'{directory}/gluonbert.json: damaged manifest (files.model.params.bytes '
                       f'must be present (an integer)); save the model again')
    directory = damaged('no_config', manifest_without('config'))
    refused(directory, f'{directory}/gluonbert.json: damaged manifest (config must be present '
                       f'(an object)); save the model again')
    directory = damaged('bad_json', lambda d: _truncate(d / 'gluonbert.json', 10))
    refused(directory, f'{directory}/gluonbert.json: damaged manifest (not valid JSON: '
                       f'Unterminated string starting at: line 2 column 3 (char 4))')
    size = os.path.getsize(os.path.join(files['model'], 'model.params'))
    directory = damaged('truncated', lambda d: _truncate(d / 'model.params', 1000))
    refused(directory, f'{directory}/model.params is corrupt or truncated (1000 bytes, '
                       f'expected {size}; checksum mismatch); save the model again')

    def flip(directory):
        data = bytearray((directory / 'model.params').read_bytes())
        data[-1] ^= 0xFF
        (directory / 'model.params').write_bytes(bytes(data))
    directory = damaged('altered', flip)
    refused(directory, f'{directory}/model.params is corrupt or truncated ({size} bytes, '
                       f'expected {size}; checksum mismatch); save the model again')
    directory = damaged('no_vocab', lambda d: (d / 'vocab.txt').unlink())
    refused(directory, f'{directory}/vocab.txt is missing')
    hf = tmp_path / 'hf'
    hf.mkdir()
    (hf / 'config.json').write_text('{"model_type": "bert",')
    refused(hf, f'{hf}/config.json: damaged config (not valid JSON: Expecting property name '
                f'enclosed in double quotes: line 1 column 23 (char 22))')
    # through the command line: exit 2, one line
    directory = tmp_path / 'no_bytes'
    _fails(capsys, _args({**files, 'model': str(directory)}, tmp_path / 'out'),
           f'{directory}/gluonbert.json: damaged manifest (files.model.params.bytes must be '
           f'present (an integer)); save the model again')
