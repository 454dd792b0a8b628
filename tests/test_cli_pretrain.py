"""``gluonbert-pretrain-data`` and ``gluonbert-pretrain`` on prepared shards, run in-process
(``*_main(argv)``) on a tiny corpus with the tiny preset, and once as a console script."""
import json
import os
import random
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import gluonbert
from gluonbert.cli import pretrain_data_main, pretrain_main
from gluonbert.cli import pretrain as pretrain_cli
from gluonbert.cli.pretrain_data import load_vocabulary
from gluonbert.data.shards import vocab_record
from gluonbert.errors import DataError
from gluonbert.params import named_parameters
from gluonbert.pretrained import load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ['--batch-size', '4', '--steps', '2', '--log-interval', '2', '--no-progress']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """40 documents of 6 sentences of MiniLM words, one sentence a line."""
    _, vocab, _ = load_pretrained('minilm')
    words = [w for w in vocab.idx_to_token[2000:6000] if w.isalpha()]
    rng = random.Random(0)
    documents = ['\n'.join(' '.join(rng.choice(words) for _ in range(rng.randint(4, 10)))
                           .capitalize() + '.' for _ in range(6)) for _ in range(40)]
    path = tmp_path_factory.mktemp('corpus') / 'corpus.txt'
    path.write_text('\n\n'.join(documents) + '\n', encoding='utf-8')
    return str(path)


def prepare(corpus, output, *extra):
    return pretrain_data_main(['--input', corpus, '--output', str(output), '--max-len', '32',
                               '--no-progress', *extra])


@pytest.fixture(scope='module')
def shards32(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp('shards') / 'max-len-32'
    assert prepare(corpus, output) == 0
    return str(output)


def manifest_of(directory):
    with open(os.path.join(str(directory), 'manifest.json'), encoding='utf-8') as f:
        return json.load(f)


def one_error_line(capsys, prog='gluonbert-pretrain'):
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'{prog}: error: '), err
    return err.strip()


def test_prepare_then_pretrain_with_data(corpus, tmp_path, capsys):
    shards = tmp_path / 'shards'
    assert prepare(corpus, shards) == 0
    printed = capsys.readouterr().out.splitlines()
    manifest = manifest_of(shards)
    counts = manifest['counts']
    assert counts['documents'] == 40 and counts['sentences'] == 240
    assert counts['heldout_examples'] > 0 and len(manifest['shards']['train']) == 1
    assert printed[0].startswith(
        f"{counts['train_examples']:,} training examples ({counts['train_tokens']:,} tokens, "
        f"the copied random B spans included) in 1 shard, {counts['heldout_examples']:,} "
        f"held-out examples; from 40 documents "
        f"(240 sentences, {counts['tokens']:,} tokens, 0 skipped) in ")
    assert printed[0].endswith(' tokens/s)')
    assert printed[1] == f'manifest: {shards / "manifest.json"}'
    assert printed[2].startswith(f'next: gluonbert-pretrain --data {shards} --model tiny ')

    out = tmp_path / 'run'
    assert pretrain_main(['--data', str(shards), '--output-dir', str(out), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert (f"pre-training tiny on {counts['train_examples']} training examples in 1 shard, "
            f"{counts['heldout_examples']} held-out examples evaluated; 2 steps, batch 4, "
            f"lr 0.001, max_len 32, max_predictions 5\n") in printed
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['max_len'] == 32 and metrics['data_dir'] == str(shards)
    assert metrics['train_examples'] == counts['train_examples']
    assert metrics['eval_examples'] == counts['heldout_examples']
    assert [r['step'] for r in metrics['records']] == [2]
    # the saved model's held-out figures are those of the last record (same weights, same
    # held-out examples); the NSP accuracy is a whole number of them
    record = metrics['records'][0]
    for key in ('mlm_loss', 'mlm_accuracy', 'nsp_loss', 'nsp_accuracy'):
        assert metrics[key] == pytest.approx(record[f'eval_{key}'], rel=1e-5), key
    assert 0 <= metrics['mlm_accuracy'] <= 1
    nsp_right = metrics['nsp_accuracy'] * counts['heldout_examples']
    assert nsp_right == pytest.approx(round(nsp_right))
    assert (out / 'metrics.jsonl').is_file()
    model, _, _ = load_pretrained(str(out / 'model'))
    assert isinstance(model, gluonbert.BERTForPretraining)
    assert model.config.max_length == 64  # the tiny preset's, longer than max_len 32


def test_corpus_shortcut_prepares_into_the_output_directory(corpus, tmp_path, capsys):
    out = tmp_path / 'run'
    assert pretrain_main(['--corpus', corpus, '--max-len', '32', '--output-dir', str(out),
                          *TRAIN]) == 0
    manifest = manifest_of(out / 'data')
    assert manifest['settings']['max_len'] == 32 and manifest['settings']['heldout_every'] == 10
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['data_dir'] == str(out / 'data')
    assert metrics['train_examples'] == manifest['counts']['train_examples']
    assert (out / 'model' / 'model.params').is_file()
    assert f'manifest: {out / "data" / "manifest.json"}\n' in capsys.readouterr().out


def test_data_with_another_max_len_is_one_line(shards32, tmp_path, capsys):
    assert pretrain_main(['--data', shards32, '--max-len', '64', '--output-dir',
                          str(tmp_path / 'run'), *TRAIN]) == 2
    assert one_error_line(capsys) == (
        f'gluonbert-pretrain: error: {shards32}: the shards were prepared for --max-len 32; '
        f'prepare them again with --max-len 64 (gluonbert-pretrain-data --max-len 64 --output '
        f'ANOTHER_DIR ...), or leave --max-len out')


@pytest.mark.parametrize('version', [0, 2, None])
def test_shards_of_another_format_version_are_one_line(shards32, tmp_path, capsys, version):
    shards = tmp_path / 'shards'
    shutil.copytree(shards32, shards)
    manifest = manifest_of(shards)
    manifest['version'] = version
    (shards / 'manifest.json').write_text(json.dumps(manifest))
    capsys.readouterr()
    assert pretrain_main(['--data', str(shards), '--output-dir', str(tmp_path / 'run'),
                          *TRAIN]) == 2
    assert one_error_line(capsys) == (
        f'gluonbert-pretrain: error: {shards}/manifest.json: written by another gluonbert '
        f'(shard format version {version!r}; this one reads version 1); prepare the shards '
        f'again with this version')


def test_examples_longer_than_the_position_embeddings_are_one_line(corpus, tmp_path, capsys):
    shards = tmp_path / 'shards48'
    assert prepare(corpus, shards, '--max-len', '48') == 0
    capsys.readouterr()
    assert pretrain_main(['--data', str(shards), '--max-length', '32', '--output-dir',
                          str(tmp_path / 'run'), *TRAIN]) == 2
    assert one_error_line(capsys) == (
        'gluonbert-pretrain: error: the examples are 48 tokens long (--max-len), but tiny '
        'has 32 position embeddings (max_length); raise --max-length')


def test_a_second_phase_starts_from_the_first_run(corpus, shards32, tmp_path, capsys):
    first = tmp_path / 'phase1'
    assert pretrain_main(['--data', shards32, '--max-length', '64', '--output-dir', str(first),
                          *TRAIN]) == 0
    # the shards of phase 2, with the vocabulary of the first run's directory
    shards64 = tmp_path / 'shards64'
    assert pretrain_data_main(['--input', corpus, '--output', str(shards64), '--model',
                               str(first), '--max-len', '64', '--no-progress']) == 0
    capsys.readouterr()
    second = tmp_path / 'phase2'
    assert pretrain_main(['--model', str(first), '--data', str(shards64), '--max-length', '128',
                          '--lr', '1e-12', '--output-dir', str(second), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert (f'note: --max-length is ignored: {first} keeps its own position embeddings '
            f'(max_length 64)\n') in printed
    assert 'max_len 64, max_predictions 10' in printed
    assert json.loads((second / 'metrics.json').read_text())['max_len'] == 64
    before, _, _ = load_pretrained(str(first / 'model'))
    after, _, _ = load_pretrained(str(second / 'model'))
    assert after.config.max_length == 64
    old, new = named_parameters(before), named_parameters(after)
    assert sorted(old) == sorted(new)
    # a learning rate of 1e-12: the weights are the first run's
    assert max(float(np.abs(old[k].data().asnumpy() - new[k].data().asnumpy()).max())
               for k in old) < 1e-6


def test_the_vocabulary_of_a_run_directory_is_its_model_s(tmp_path, shards32):
    out = tmp_path / 'run'
    assert pretrain_main(['--data', shards32, '--output-dir', str(out), *TRAIN]) == 0
    vocab, tokenizer = load_vocabulary(str(out))  # read without the weights
    _, saved_vocab, saved_tokenizer = load_pretrained(str(out / 'model'))
    assert vocab_record(vocab) == vocab_record(saved_vocab)
    text = 'Unbelievably, the naïve CAFÉ reopened.'
    assert tokenizer(text) == saved_tokenizer(text)


def test_checkpoint_every_and_resume_with_more_steps(shards32, tmp_path, monkeypatch):
    calls = []
    loop = pretrain_cli.pretrain_loop

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return loop(*args, **kwargs)
    monkeypatch.setattr(pretrain_cli, 'pretrain_loop', spy)
    out = tmp_path / 'run'
    base = ['--data', shards32, '--output-dir', str(out), '--batch-size', '4',
            '--log-interval', '4', '--checkpoint-every', '2', '--no-progress']
    assert pretrain_main([*base, '--steps', '4']) == 0
    config = calls[-1]['config']  # the flags, as the run's PretrainConfig
    assert config.checkpoint_every == 2 and config.resume is False and config.steps == 4
    assert (out / 'checkpoints' / 'last').read_text().strip() == 'step-0004'
    assert pretrain_main([*base, '--steps', '6', '--resume']) == 0
    assert calls[-1]['config'].resume is True and calls[-1]['config'].steps == 6
    assert (out / 'checkpoints' / 'last').read_text().strip() == 'step-0006'
    steps = [json.loads(line)['step'] for line in
             (out / 'metrics.jsonl').read_text().splitlines()]
    assert steps == [4, 6]
    assert json.loads((out / 'metrics.json').read_text())['steps'] == 6


def test_shards_without_a_heldout_split_evaluate_remasked_training_examples(
        corpus, tmp_path, capsys):
    shards = tmp_path / 'shards'
    assert prepare(corpus, shards, '--heldout-every', '0') == 0
    train = manifest_of(shards)['counts']['train_examples']
    out = tmp_path / 'run'
    assert pretrain_main(['--data', str(shards), '--eval-examples', '8', '--output-dir',
                          str(out), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert ('note: the shards have no held-out examples; the held-out figures are of '
            're-masked training examples\n') in printed
    assert f'{train} training examples in 1 shard, 8 held-out examples evaluated;' in printed
    assert json.loads((out / 'metrics.json').read_text())['eval_examples'] == 8


def test_pretrain_data_twice_is_a_no_op_and_other_settings_are_refused(corpus, tmp_path,
                                                                       capsys):
    output = tmp_path / 'shards'
    assert prepare(corpus, output) == 0
    path = output / 'manifest.json'
    first, stamp = path.read_text(), path.stat().st_mtime_ns
    capsys.readouterr()
    assert prepare(corpus, output) == 0
    assert 'already prepared (nothing to do)' in capsys.readouterr().out.splitlines()[0]
    assert path.read_text() == first and path.stat().st_mtime_ns == stamp
    assert prepare(corpus, output, '--max-len', '48') == 2
    assert one_error_line(capsys, 'gluonbert-pretrain-data') == (
        f'gluonbert-pretrain-data: error: {output} holds shards of another preparation '
        f'(settings differ); pass --overwrite to replace them, or choose another --output')
    assert path.read_text() == first
    assert prepare(corpus, output, '--max-len', '48', '--overwrite') == 0
    assert manifest_of(output)['settings']['max_len'] == 48


@pytest.mark.parametrize('pattern, message', [
    ('missing.txt', 'corpus file not found: {}'),
    ('nothing-*.txt', 'no corpus file matches {}')])
def test_bad_input_is_one_line(tmp_path, capsys, pattern, message):
    pattern = str(tmp_path / pattern)
    assert pretrain_data_main(['--input', pattern, '--output', str(tmp_path / 'out'),
                               '--no-progress']) == 2
    assert one_error_line(capsys, 'gluonbert-pretrain-data') == \
        'gluonbert-pretrain-data: error: ' + message.format(pattern)


@pytest.mark.parametrize('flags, message', [
    (['--max-len', '4'], '--max-len must be in [5, 512], got 4'),
    (['--max-len', '513'], '--max-len must be in [5, 512], got 513'),
    (['--workers', '0'], '--workers must be >= 1, got 0'),
    (['--examples-per-shard', '0'], '--examples-per-shard must be >= 1, got 0'),
    (['--documents-per-chunk', '1'], '--documents-per-chunk must be >= 2, got 1'),
    (['--heldout-every', '-1'], '--heldout-every must be >= 0, got -1'),
    (['--short-seq-prob', '1.5'], '--short-seq-prob must be in [0, 1], got 1.5')])
def test_pretrain_data_numbers_are_checked(tmp_path, capsys, flags, message):
    assert pretrain_data_main(['--input', 'c.txt', '--output', str(tmp_path / 'out'),
                               *flags]) == 2
    assert one_error_line(capsys, 'gluonbert-pretrain-data') == \
        f'gluonbert-pretrain-data: error: {message}'
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('flags, message', [
    (['--eval-examples', '0'], '--eval-examples must be >= 1, got 0'),
    (['--shuffle-buffer', '0'], '--shuffle-buffer must be >= 1, got 0'),
    (['--checkpoint-every', '0'], '--checkpoint-every must be >= 1, got 0'),
    (['--max-len', '600'], '--max-len must be in [5, 512], got 600')])
def test_pretrain_numbers_are_checked(tmp_path, capsys, flags, message):
    assert pretrain_main(['--data', str(tmp_path), '--output-dir', str(tmp_path / 'run'),
                          *flags]) == 2
    assert one_error_line(capsys) == f'gluonbert-pretrain: error: {message}'


def test_pretrain_needs_exactly_one_of_data_and_corpus(tmp_path, capsys):
    for argv in ([], ['--data', 'd', '--corpus', 'c.txt']):
        with pytest.raises(SystemExit) as done:
            pretrain_main(argv)
        assert done.value.code == 2
    err = capsys.readouterr().err
    assert 'one of the arguments --data --corpus is required' in err
    assert 'argument --corpus: not allowed with argument --data' in err
    assert pretrain_main(['--data', str(tmp_path / 'none'), '--output-dir',
                          str(tmp_path / 'run')]) == 2
    assert one_error_line(capsys) == (
        f'gluonbert-pretrain: error: {tmp_path / "none"}: no such directory (prepare it with '
        f'gluonbert-pretrain-data)')


class _Group:
    """A distributed group seen from one worker, the others' sums given."""

    def __init__(self, rank, others_failed):
        self.rank, self.is_root, self.is_distributed = rank, rank == 0, True
        self.metrics_are_global, self.others_failed, self.calls = True, others_failed, []

    def allreduce(self, values):
        self.calls.append(list(values))
        return np.array([values[0] + self.others_failed])


def test_corpus_workers_wait_for_rank_0(tmp_path, monkeypatch):
    args = types.SimpleNamespace(corpus=['c.txt'], no_progress=True, seed=0, workers=1,
                                 text_column='text', examples_per_shard=8192)
    prepared = []
    monkeypatch.setattr(pretrain_cli, 'prepare', lambda *a, **k: prepared.append(a))
    data_dir = tmp_path / 'data'
    # rank 0 failed: the others stop too, after the barrier
    group = _Group(rank=1, others_failed=1.0)
    with pytest.raises(DataError, match='rank 0 could not prepare the --corpus shards'):
        pretrain_cli._prepare_corpus(args, str(data_dir), None, None, 32, group)
    assert group.calls == [[0.0]] and prepared == []
    # rank 0 prepared, but this worker does not see the directory
    group = _Group(rank=1, others_failed=0.0)
    with pytest.raises(DataError, match='needs OUTPUT_DIR on a shared filesystem'):
        pretrain_cli._prepare_corpus(args, str(data_dir), None, None, 32, group)
    data_dir.mkdir()
    (data_dir / 'manifest.json').write_text('{}')
    pretrain_cli._prepare_corpus(args, str(data_dir), None, None, 32, group)
    assert group.calls == [[0.0], [0.0]] and prepared == []
    # rank 0 prepares, then meets the others at the barrier; a failure reaches them
    root = _Group(rank=0, others_failed=0.0)
    pretrain_cli._prepare_corpus(args, str(data_dir), None, None, 32, root)
    assert root.calls == [[0.0]] and len(prepared) == 1

    def broken(*a, **k):
        raise DataError('bad corpus')
    monkeypatch.setattr(pretrain_cli, 'prepare', broken)
    root = _Group(rank=0, others_failed=0.0)
    with pytest.raises(DataError, match='bad corpus'):
        pretrain_cli._prepare_corpus(args, str(data_dir), None, None, 32, root)
    assert root.calls == [[1.0]]


def test_pretrain_data_console_script(corpus, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), 'gluonbert-pretrain-data')
    output = tmp_path / 'shards'
    done = subprocess.run([script, '--input', corpus, '--output', str(output), '--max-len',
                           '32', '--no-progress'], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert f'manifest: {output / "manifest.json"}' in done.stdout.splitlines()
    assert manifest_of(output)['settings']['max_len'] == 32
    done = subprocess.run([script, '--input', str(tmp_path / 'no-*.txt'), '--output',
                           str(output)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 2 and done.stderr == (
        f'gluonbert-pretrain-data: error: no corpus file matches {tmp_path / "no-*.txt"}\n')
