"""Distributed training: sharding, the parameter-server job on loopback, the launcher's
clean shutdown, and Horovod (skipped where horovod.mxnet is not importable, except under CI=true:
.ci/run builds it, and there a missing Horovod fails).

Every job runs in subprocesses with a timeout, under gluonbert-launch's own --timeout, so a
hang cannot block the run; the launcher's children die with it even if it is SIGKILLed.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import distributed_worker as worker
from gluonbert.data import BERTTransform, TextClassificationDataset, make_dataloader
from gluonbert.distributed import (DistributedError, HorovodUnavailable, get_group, shard,
                                   shard_indices)
from gluonbert.pretrain import PretrainingData
from stand_ins import WordVocab, whitespace_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, 'distributed_worker.py')


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(('DMLC_', 'HOROVOD_'))}
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]))
    return env


def _launch(tmp_path, *options, command, timeout=80, popen=False, preexec_fn=None):
    argv = [sys.executable, '-m', 'gluonbert.cli.launch', *options,
            '--pid-file', str(tmp_path / 'pids.json'), '--', *command]
    if popen:
        return subprocess.Popen(argv, env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    return subprocess.run(argv, env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _job_pids(tmp_path):
    with open(tmp_path / 'pids.json', encoding='utf-8') as f:
        return [p['pid'] for p in json.load(f)['processes']]


def _running(pid):
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _left_over(pids, within=5.0):
    """The processes of the job (or of their process groups) still running after ``within``
    seconds."""
    groups = set(pids)  # every child leads its own process group
    deadline = time.monotonic() + within
    while True:
        left = [pid for pid in pids if _running(pid)]
        for entry in os.listdir('/proc') if os.path.isdir('/proc') else []:
            if entry.isdigit() and int(entry) not in left:
                try:
                    if os.getpgid(int(entry)) in groups and _running(int(entry)):
                        left.append(int(entry))
                except OSError:
                    pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ----------------------------------------------------------------------------- sharding
def test_shards_are_equal_strided_and_deterministic():
    assert shard_indices(10, 3, 0) == [0, 3, 6]
    assert shard_indices(10, 3, 2) == [2, 5, 8]  # item 9 is dropped: equal shards
    assert sorted(sum((shard_indices(10, 3, i, even=False) for i in range(3)), [])) == \
        list(range(10))
    assert shard(list('abcde'), 1, 0) == list('abcde')
    with pytest.raises(ValueError, match='shard_index'):
        shard_indices(10, 2, 2)
    with pytest.raises(ValueError, match='num_shards'):
        shard_indices(10, 0, 0)

    texts, labels, words = worker.corpus(n=11)
    vocab = WordVocab(words)
    dataset = TextClassificationDataset(texts, labels, ['negative', 'positive'])
    transform = BERTTransform(whitespace_tokenizer, vocab, max_len=16)

    def rows(**options):
        loader = make_dataloader(dataset, transform, batch_size=2, shuffle=False, bucket=False,
                                 pad_id=vocab.pad_id, progress=False, **options)
        return len(loader), [tuple(int(x) for x in ids[:int(length)])
                             for words, lengths, _, _ in loader
                             for ids, length in zip(words.asnumpy(), lengths.asnumpy())]
    full = rows()[1]
    sizes, union = set(), []
    for index in range(3):
        batches, shard_rows = rows(num_shards=3, shard_index=index)
        sizes.add((batches, len(shard_rows)))
        assert shard_rows == full[index:9:3]
        union += rows(num_shards=3, shard_index=index, even_shards=False)[1]
    assert sizes == {(2, 3)}  # equal shards: 11 // 3 examples, the same number of batches
    assert sorted(union) == sorted(full)

    data = PretrainingData([['a b c', 'd e'], ['f g', 'h i j'], ['k l', 'm n']] * 3,
                           whitespace_tokenizer, WordVocab(list('abcdefghijklmn')), max_len=12)
    whole = data.batches(2, epoch=1)
    halves = [data.batches(1, epoch=1, num_shards=2, shard_index=i) for i in range(2)]
    assert len(halves[0]) == len(halves[1]) == len(data) // 2

    def first_row(batch):
        return batch[0][0].asnumpy()[:int(batch[2][0].asscalar())].tolist()

    for i, batch in enumerate(whole[:len(data) // 2]):  # shard batches make the whole batch
        assert first_row(halves[0][i]) == first_row(batch)
        assert first_row(halves[1][i]) == first_row(tuple(x[1:] for x in batch))


def test_single_process_group_and_setup_errors(monkeypatch):
    group = get_group('device')
    assert (group.rank, group.num_workers, group.is_root, group.is_distributed) == \
        (0, 1, True, False)
    np.testing.assert_array_equal(group.allreduce([1.5, 2]), [1.5, 2])
    with pytest.raises(DistributedError, match="kvstore must be one of device, local"):
        get_group('nccl2')
    monkeypatch.delenv('DMLC_ROLE', raising=False)
    with pytest.raises(DistributedError, match='start the workers with gluonbert-launch'):
        get_group('dist_sync')
    monkeypatch.setitem(sys.modules, 'horovod.mxnet', None)  # as if not installed
    with pytest.raises(HorovodUnavailable, match='HOROVOD_WITH_MXNET=1'):
        get_group('horovod')


def test_cli_kvstore_flag_errors_in_one_line(capsys, monkeypatch):
    from gluonbert.cli import build_pretrain_parser, finetune_main
    monkeypatch.delenv('DMLC_ROLE', raising=False)
    assert finetune_main(['--model', 'tiny', '--kvstore', 'dist_sync', '--no-progress']) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith('gluonbert-finetune: error: kvstore') and '\n' not in error
    assert 'gluonbert-launch' in error
    assert build_pretrain_parser().parse_args(['--corpus', 'c.txt', '--kvstore',
                                               'horovod']).kvstore == 'horovod'
    with pytest.raises(SystemExit):
        build_pretrain_parser().parse_args(['--corpus', 'c.txt', '--kvstore', 'bogus'])


def test_launcher_dry_run_over_ssh_and_argument_errors(tmp_path, capsys):
    import shlex
    from gluonbert.cli.launch import main
    hosts = tmp_path / 'hosts.txt'
    hosts.write_text('# the machines\nnode1\nnode2  # second\n\n')
    assert main(['-n', '3', '-s', '2', '--hosts', str(hosts), '--port', '9000', '--workdir',
                 '/srv/job', '--env', 'OMP_NUM_THREADS=8', '--dry-run', '--',
                 'gluonbert-finetune', '--kvstore', 'dist_sync', '--output-dir', 'runs/a b']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(']')[0][1:] for line in lines] == \
        ['scheduler', 'server 0', 'server 1', 'worker 0', 'worker 1', 'worker 2']
    ssh = shlex.split(lines[-1].split('] ', 1)[1])
    # '--' ends ssh's options: the host can never be read as one
    assert ssh[:6] == ['ssh', '-o', 'BatchMode=yes', '-tt', '--', 'node1']  # round-robin
    cd, remote = ssh[6].split(' && exec ', 1)
    assert cd == 'cd /srv/job'
    remote = shlex.split(remote)
    for setting in ('DMLC_ROLE=worker', 'DMLC_PS_ROOT_URI=node1', 'DMLC_PS_ROOT_PORT=9000',
                    'DMLC_NUM_WORKER=3', 'DMLC_NUM_SERVER=2', 'DMLC_NODE_HOST=node1',
                    'OMP_NUM_THREADS=8'):
        assert setting in remote
    assert remote[-5:] == ['gluonbert-finetune', '--kvstore', 'dist_sync', '--output-dir',
                           'runs/a b']
    assert main(['-n', '2']) == 2
    assert 'give the worker command after --' in capsys.readouterr().err
    assert main(['-n', '2', '--', 'no-such-command-here']) == 2
    assert 'command not found: no-such-command-here' in capsys.readouterr().err


@pytest.mark.parametrize('host', ['-oProxyCommand=touch /tmp/pwned', 'node 1'])
def test_launcher_refuses_host_names_ssh_would_read_as_options(tmp_path, capsys, host):
    from gluonbert.cli.launch import main
    hosts = tmp_path / 'hosts.txt'
    hosts.write_text(f'node1\n{host}\n')
    assert main(['-n', '2', '--hosts', str(hosts), '--dry-run', '--', 'true']) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f'gluonbert-launch: error: --hosts {hosts}: {host!r} is not a host name '
                     f'(host names cannot begin with "-" or contain spaces)')


# ------------------------------------------------------------------------ loopback jobs
@pytest.fixture(scope='module')
def reference():
    """Single-process runs on the combined batches (twice the per-worker batch)."""
    finetuned, history = worker.finetune('device', 2 * worker.PER_WORKER_BATCH)
    pretrained, records = worker.pretrain('device', 2 * worker.PER_WORKER_BATCH)
    return finetuned, history, pretrained, records


def _check_against_reference(out, reference):
    finetuned, history, pretrained, records = reference
    a, b = np.load(out / 'rank0.npz'), np.load(out / 'rank1.npz')
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:  # the workers end identical
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    initial = worker.tiny_classifier(len(WordVocab(worker.corpus()[2])), seed=0)
    moved = max(np.abs(finetuned[k] - v.data().asnumpy()).max()
                for k, v in initial._collect_params_with_prefix().items())
    assert moved > 1e-3  # the comparison below is about a model that trained
    diff = max(np.abs(a[name] - finetuned[name]).max() for name in finetuned)
    assert diff < 1e-5, diff
    # pre-training: every example has 2 masked targets, so the workers' mean losses
    # average to the single-process mean exactly
    pre_diff = max(np.abs(a[f'pretrain/{name}'] - value).max()
                   for name, value in pretrained.items())
    assert pre_diff < 1e-5, pre_diff
    logged = [json.loads((out / f'rank{r}.json').read_text()) for r in (0, 1)]
    # streamed pre-training: each worker opened only its own shards, and they were all read
    opened = [set(got['opened_shards']) for got in logged]
    assert opened[0].isdisjoint(opened[1]) and opened[0] and opened[1]
    assert opened[0] | opened[1] == set(logged[0]['train_shards'])
    for got in logged:  # metrics are summed over the workers' shards
        assert got['num_workers'] == 2
        for mine, single in zip(got['history'], history):
            for key in ('train_loss', 'train_accuracy', 'test_accuracy', 'lr'):
                assert mine[key] == pytest.approx(single[key], abs=1e-6), key
        assert len(got['records']) == len(records)
        for mine, single in zip(got['records'], records):
            assert mine['kernels'] == single['kernels']
            for key in single:
                if key not in ('sequences_per_second', 'kernels'):
                    assert mine[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    return diff, pre_diff


def test_dist_sync_on_loopback_equals_one_process_on_the_global_batch(tmp_path, reference):
    started = time.monotonic()
    result = _launch(tmp_path, '-n', '2', '-s', '1', '--timeout', '60',
                     command=[sys.executable, WORKER, str(tmp_path), '--kvstore', 'dist_sync'])
    assert result.returncode == 0, result.stdout + result.stderr
    assert '[worker 0] rank' in result.stdout and '[worker 1] rank' in result.stdout
    diff, pre_diff = _check_against_reference(tmp_path, reference)
    # only rank 0 writes: one metrics line per epoch, not one per worker
    lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(line)['epoch'] for line in lines] == list(range(worker.EPOCHS))
    assert (tmp_path / 'checkpoints' / 'last').read_text() == f'epoch-{worker.EPOCHS:04d}\n'
    assert (tmp_path / 'pretrain-checkpoints' / 'last').read_text() == \
        f'step-{worker.PRETRAIN_STEPS:04d}\n'
    assert not _left_over(_job_pids(tmp_path))
    print(f'dist_sync loopback: max |param diff| fine-tune {diff:.2e}, pre-train '
          f'{pre_diff:.2e}, {time.monotonic() - started:.1f} s')


def test_a_crashing_worker_stops_the_whole_job(tmp_path):
    started = time.monotonic()
    result = _launch(tmp_path, '-n', '2', '-s', '1', '--timeout', '60', '--grace', '2',
                     command=[sys.executable, WORKER, str(tmp_path), '--crash-index', '1'])
    seconds = time.monotonic() - started
    assert result.returncode == 3, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if 'error' in line]
    assert len(errors) == 1 and errors[0].startswith(
        'gluonbert-launch: error: worker 1 exited with code 3; stopped the job'), result.stderr
    assert seconds < 30, seconds  # worker 0 would wait for worker 1 forever
    assert not _left_over(_job_pids(tmp_path))
    print(f'crash: launcher exited {result.returncode} after {seconds:.1f} s')


def test_timeout_interrupt_and_a_killed_launcher_leave_no_process(tmp_path):
    sleeper = [sys.executable, '-c', 'import time; time.sleep(120)']
    started = time.monotonic()
    result = _launch(tmp_path, '-n', '2', '-s', '1', '--timeout', '2', '--grace', '1',
                     command=sleeper)
    assert result.returncode == 124
    assert 'error: timed out after 2 s (worker(s) 0, 1 still running)' in result.stderr
    assert time.monotonic() - started < 20
    assert not _left_over(_job_pids(tmp_path))

    for signum, status in ((signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)):
        (tmp_path / 'pids.json').unlink()
        launcher = _launch(tmp_path, '-n', '1', '-s', '1', command=sleeper, popen=True)
        try:
            deadline = time.monotonic() + 30
            while not (tmp_path / 'pids.json').exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            pids = _job_pids(tmp_path)
            launcher.send_signal(signum)  # Ctrl-C, or a SIGKILL that allows no cleanup
            launcher.communicate(timeout=20)
        finally:
            launcher.kill()
        assert launcher.returncode == status
        assert not _left_over(pids), signum


def test_ctrl_c_stops_a_launcher_that_inherited_sigint_ignored(tmp_path):
    """A background job of a shell without job control starts with SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: the launcher installs its own."""
    sleeper = [sys.executable, '-c', 'import time; time.sleep(120)']
    launcher = _launch(tmp_path, '-n', '1', '-s', '1', command=sleeper, popen=True,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / 'pids.json').exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = _job_pids(tmp_path)
        launcher.send_signal(signal.SIGINT)
        _, err = launcher.communicate(timeout=30)
    finally:
        launcher.kill()
    assert launcher.returncode == 130 and 'error: interrupted' in err, err
    assert not _left_over(pids)


class TwoRankHorovod:
    """A stand-in for ``horovod.mxnet`` on two ranks: this process is one of them, the
    other's arrays are given. Only the grouped in-place all-reduce exists: Horovod 0.28's
    broadcast can segfault (it reads a freed name), so gluonbert must not call it."""
    Sum = 'sum'

    def __init__(self, other_arrays):
        self.other_arrays, self.calls = other_arrays, []

    def grouped_allreduce_(self, arrays, op, name):
        assert op == self.Sum
        self.calls.append(name)
        for array, other in zip(arrays, self.other_arrays):
            array[:] = array + other


def test_horovod_parameter_broadcast_is_an_exact_grouped_sum():
    """rank 0's values reach rank 1 bit for bit, rank 0 keeps its own (one all-reduce each)."""
    import mxnet as mx
    from gluonbert.distributed import Group
    rng = np.random.RandomState(0)
    root = [rng.randn(3, 4).astype(np.float32), rng.randn(5).astype(np.float32) * 1e-30]
    for rank in (0, 1):
        params = []
        for i, value in enumerate(root):
            param = mx.gluon.Parameter(f'w{i}', shape=value.shape)
            param.initialize(init=mx.init.Constant(0.0))
            param.set_data(mx.nd.array(value if rank == 0 else rng.randn(*value.shape)))
            params.append(param)
        # what the other rank adds to the sum: zeros from rank 1, rank 0's values to rank 1
        others = [mx.nd.zeros(v.shape) if rank == 0 else mx.nd.array(v) for v in root]
        hvd = TwoRankHorovod(others)
        Group('horovod', rank=rank, num_workers=2, hvd=hvd).broadcast_parameters(params)
        assert hvd.calls == ['gluonbert.broadcast']
        for param, value in zip(params, root):
            np.testing.assert_array_equal(param.data().asnumpy(), value)
    hvd = TwoRankHorovod([])
    Group('horovod', rank=1, num_workers=2, hvd=hvd).broadcast_parameters([])
    assert hvd.calls == []  # nothing to send: no collective (Horovod's would index [0])


# --------------------------------------------------------------------------- Horovod
def _require_horovod():
    """Skip where horovod.mxnet is not importable (an optional extra), except in CI
    (``CI=true``), which builds it (.ci/run): there its absence is a failure."""
    try:
        import horovod.mxnet  # noqa: F401
    except ImportError as err:
        reason = f'Horovod with MXNet support is not installed ({err})'
    else:
        return
    if os.environ.get('CI', '').lower() == 'true':
        pytest.fail(f'{reason}, but CI=true: CI must run the Horovod test, so Horovod has to '
                    f'build there (.ci/run installs horovod==0.28.1 with HOROVOD_WITH_MXNET=1 '
                    f'HOROVOD_WITH_GLOO=1)', pytrace=False)
    pytest.skip(reason)


def test_horovod_equals_one_process_on_the_global_batch(tmp_path, reference):
    """Skipped unless horovod.mxnet is importable (an optional extra), failed instead in CI
    (CI=true; .ci/run builds it)."""
    _require_horovod()
    command = [sys.executable, '-m', 'horovod.runner.launch', '-np', '2', '-H', 'localhost:2',
               '--gloo', sys.executable, WORKER, str(tmp_path), '--kvstore', 'horovod']
    process = subprocess.Popen(command, env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output
    diff, pre_diff = _check_against_reference(tmp_path, reference)
    print(f'horovod: max |param diff| fine-tune {diff:.2e}, pre-train {pre_diff:.2e}')


def test_pretrain_command_with_corpus_on_two_workers(tmp_path):
    """gluonbert-pretrain --corpus under dist_sync: rank 0 prepares OUTPUT_DIR/data while
    rank 1 waits, then each streams its own shards; rank 0 saves the model."""
    from stand_ins import POSITIVE, NEGATIVE
    corpus = tmp_path / 'corpus.txt'
    sentences = [text.capitalize() + '.' for text in POSITIVE + NEGATIVE]
    corpus.write_text('\n\n'.join('\n'.join(sentences[(start + i) % len(sentences)]
                                            for i in range(5)) for start in range(24)) + '\n',
                      encoding='utf-8')
    output = tmp_path / 'run'
    result = _launch(tmp_path, '-n', '2', '-s', '1', '--timeout', '120', timeout=150,
                     command=[sys.executable, '-m', 'gluonbert.cli', 'pretrain', '--corpus',
                              str(corpus), '--kvstore', 'dist_sync', '--max-len', '32',
                              '--examples-per-shard', '6', '--batch-size', '4', '--steps', '3',
                              '--log-interval', '3', '--no-progress', '--output-dir',
                              str(output)])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    manifest = json.loads((output / 'data' / 'manifest.json').read_text())
    assert len(manifest['shards']['train']) >= 2
    assert (output / 'model' / 'model.params').exists()
    assert (output / 'checkpoints' / 'last').read_text() == 'step-0003\n'
    metrics = json.loads((output / 'metrics.json').read_text())
    assert metrics['num_workers'] == 2 and metrics['steps'] == 3
    assert not _left_over(_job_pids(tmp_path))
