"""The command-line tools, run in-process on tiny data, and the prediction API."""
import io
import json
import math
import os
import subprocess
import sys

import mxnet as mx
import pytest

import gluonbert
from gluonbert.cli import default_lr, finetune_main, predict_main, pretrain_main
from gluonbert.errors import UsageError
from gluonbert.pretrained import load_pretrained
from stand_ins import NEGATIVE, POSITIVE, write_review_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_files(tmp_path):
    rows = [(t, 'positive') for t in POSITIVE] + [(t, 'negative') for t in NEGATIVE]
    train = write_review_csv(tmp_path / 'train.csv', rows * 2)
    test = write_review_csv(tmp_path / 'test.csv', rows)
    return train, test


def finetune_args(train, test, output_dir, *extra):
    return ['--model', 'tiny', '--train', train, '--test', test, '--text-column', 'review',
            '--label-column', 'sentiment', '--epochs', '2', '--batch-size', '8',
            '--max-len', '32', '--output-dir', str(output_dir), '--no-progress', *extra]


def test_finetune_then_predict(tiny_files, tmp_path, capsys, monkeypatch):
    train, test = tiny_files
    out = tmp_path / 'run'
    assert finetune_main(finetune_args(train, test, out)) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    history = metrics['history']
    assert len(history) == 2
    # the best epoch's accuracy: a whole number of the 12 test rows right
    assert metrics['test_accuracy'] == max(r['test_accuracy'] for r in history)
    assert metrics['test_accuracy'] == history[metrics['best_epoch'] - 1]['test_accuracy']
    assert round(metrics['test_accuracy'] * 12) == pytest.approx(metrics['test_accuracy'] * 12)
    assert 0 <= metrics['test_accuracy'] <= 1
    # the epochs' time, and 2 epochs of the 24 training rows in it
    assert metrics['train_seconds'] == pytest.approx(sum(r['seconds'] for r in history))
    assert 0 < metrics['train_seconds'] < metrics['wall_seconds']
    assert metrics['train_samples_per_second'] * metrics['train_seconds'] == pytest.approx(48)
    assert metrics['lr'] == default_lr('tiny')  # no --lr: the preset's default
    assert (out / 'history.png').exists() and (out / 'metrics.jsonl').exists()
    printed = capsys.readouterr().out
    assert 'test accuracy' in printed

    net, vocab, tokenizer = load_pretrained(str(out / 'model'))
    assert isinstance(net, gluonbert.BERTClassifier)
    assert net.label_names == ['negative', 'positive']

    # the closing demo is the first test example, with its true label and the saved model's
    # prediction
    demo = metrics['example_prediction']
    first = gluonbert.predict(net, mx.cpu(), vocab, tokenizer, [POSITIVE[0]])[0]
    assert (demo['index'], demo['text'], demo['label']) == (0, POSITIVE[0], 'positive')
    assert demo['predicted'] == first.label
    assert demo['probability'] == pytest.approx(first.probability, abs=1e-6)
    assert (f"test example 1: {POSITIVE[0]!r} (true label positive) -> predicted "
            f"{first.label} (p={first.probability:.3f})") in printed.splitlines()

    texts = ['a lovely film', 'awful']
    assert predict_main(['--model-dir', str(out / 'model'), *texts]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line['text'] for line in lines] == texts
    for line, want in zip(lines, gluonbert.predict(net, mx.cpu(), vocab, tokenizer, texts)):
        assert line['label'] == want.label
        assert line['probability'] == pytest.approx(want.probability, abs=1e-6)

    # more texts than a batch: the float32 fast path (fast.prepare), same predictions
    texts = ['a lovely film', 'awful', 'fine acting', 'a boring plot', 'great']
    prepared = []
    real_prepare = gluonbert.fast.prepare
    monkeypatch.setattr(gluonbert.fast, 'prepare',
                        lambda *a, **k: prepared.append(a[1]) or real_prepare(*a, **k))
    assert predict_main(['--model-dir', str(out / 'model'), '--batch-size', '2', *texts]) == 0
    assert prepared == ['float32']
    fast_lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = gluonbert.predict(net, mx.cpu(), vocab, tokenizer, texts, batch_size=2)
    assert [line['label'] for line in fast_lines] == [p.label for p in expected]
    for line, prediction in zip(fast_lines, expected):
        assert abs(line['probability'] - prediction.probability) < 1e-4

    import io
    monkeypatch.setattr('sys.stdin', io.StringIO('first review\n\nsecond review\n'))
    assert predict_main(['--model-dir', str(out / 'model')]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get('text') for line in lines] == ['first review', None, 'second review']
    assert lines[1] == {'line': 2, 'error': 'empty line'}

    # resuming a finished run trains no further epochs and keeps the history
    assert finetune_main(finetune_args(train, test, out, '--resume')) == 0
    assert len(json.loads((out / 'metrics.json').read_text())['history']) == 2


def test_finetune_minilm_on_the_bundled_sample_learns(tmp_path, capsys):
    """The default job, shortened to stay under a minute on 2 cores: MiniLM on the bundled
    reviews (300 train / 100 test, balanced) at seed 0 learns well above chance (0.5).

    Measured with these flags: test accuracy 0.50, 0.80, 0.85, 0.90 over the 4 epochs
    (the first is at chance at any length); best 0.90. The threshold leaves 10 points for
    float differences between machines and thread counts.
    """
    out = tmp_path / 'run'
    assert finetune_main(['--epochs', '4', '--max-len', '64', '--seed', '0',
                          '--output-dir', str(out), '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert (metrics['model'], metrics['train_examples'], metrics['test_examples']) == \
        ('minilm', 300, 100)
    assert metrics['lr'] == default_lr('minilm') and metrics['label_names'] == ['negative',
                                                                                 'positive']
    assert metrics['test_accuracy'] >= 0.80, metrics['history']
    demo = metrics['example_prediction']
    assert demo['index'] == 0 and demo['label'] in ('negative', 'positive')
    assert f"(true label {demo['label']}) -> predicted {demo['predicted']}" in \
        capsys.readouterr().out


def test_default_learning_rates():
    """One table for every command: by the starting weights, and full / LoRA / pre-training."""
    def lrs(model):
        return (default_lr(model), default_lr(model, lora=True),
                default_lr(model, pretraining=True))
    assert lrs('tiny') == (1e-3, 1e-3, 1e-3)  # presets: random weights
    assert lrs('minilm') == (3e-4, 5e-3, 5e-5)
    assert lrs('runs/finetune/model') == (5e-5, 1e-3, 5e-5)  # directories
    # zoo names that are presets too: the zoo's weights to fine-tune, from scratch to pre-train
    assert lrs('bert_12_768_12') == lrs('bert_24_1024_16') == (5e-5, 1e-3, 1e-3)
    with pytest.raises(ValueError, match='no LoRA mode'):
        default_lr('minilm', lora=True, pretraining=True)


@pytest.mark.parametrize('flags, message', [
    (['--train', 'missing.csv', '--test', 'missing.csv'], 'no such file: missing.csv'),
    (['--max-len', '0'], '--max-len must be in [3, 512]'),
    (['--epochs', '0'], '--epochs must be >= 1'),
    (['--gpus', 'zero'], '--gpus takes comma-separated GPU ids'),
    (['--gpus', '7'], 'GPU 7 requested but this MXNet sees'),
    (['--model', 'no_such_model'], "unknown model 'no_such_model'"),
    (['--dataset', 'nowhere'], "unknown dataset 'nowhere'"),
])
def test_finetune_bad_input_is_one_line(flags, message, tmp_path, capsys):
    assert finetune_main(['--no-progress', '--output-dir', str(tmp_path / 'run'), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err


def test_finetune_zoo_name_loads_the_zoo_weights(tiny_files, tmp_path, capsys, monkeypatch):
    """bert_12_768_12 is a preset too, but fine-tuning starts from the zoo's weights (here
    offline, with no cache: one line naming the model), never from random ones."""
    monkeypatch.setenv('GLUONBERT_OFFLINE', '1')
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'no-cache'))
    train, test = tiny_files
    args = finetune_args(train, test, tmp_path / 'run')
    args[args.index('--model') + 1] = 'bert_12_768_12'
    assert finetune_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('gluonbert-finetune: error: ') and 'bert_12_768_12' in err
    assert len(err.strip().splitlines()) == 1


def test_finetune_data_flags_that_do_not_combine(tmp_path, capsys, monkeypatch):
    from gluonbert.cli import finetune as finetune_cli
    monkeypatch.setattr(finetune_cli, '_load_model', lambda *a: pytest.fail('the model loaded'))
    path = write_review_csv(tmp_path / 'pairs.csv', [('a', 'positive')])
    train = ['--train', path, '--test', path]
    for flags, message in [
            (['--dataset', path], (f'--dataset takes sample, imdb or an aclImdb directory; '
                                   f'give data files with --train {path} --test TEST_FILE')),
            (['--text-pair-column', 'b'], '--text-pair-column needs --train/--test files'),
            (['--quoting', 'none'], '--quoting is for --train/--test CSV or TSV files'),
            ([*train, '--text-pair-column', 'b', '--truncate', 'head+tail'],
             '--truncate head+tail is for single texts; sentence pairs trim the longer text'),
            ([*train, '--text-pair-column', 'b', '--max-len', '3'],
             '--max-len must be >= 4 for sentence pairs, got 3')]:
        assert finetune_main(['--no-progress', *flags]) == 2
        assert capsys.readouterr().err == f'gluonbert-finetune: error: {message}\n'


def test_finetune_bad_data_names_file_and_line(tmp_path, capsys):
    train = write_review_csv(tmp_path / 'train.csv', [('fine', 'positive'), ('odd', 'maybe')])
    assert finetune_main(finetune_args(train, train, tmp_path / 'x')) == 2
    err = capsys.readouterr().err
    assert 'train.csv:3: unknown label' in err and "'maybe'" in err


def test_predict_bad_input(tmp_path, capsys):
    assert predict_main(['--model-dir', str(tmp_path / 'absent'), 'text']) == 2
    assert 'no such model directory' in capsys.readouterr().err


def test_finetune_sentence_pairs(tmp_path, monkeypatch, capsys):
    """--text-pair-column: batches of [CLS] A [SEP] B [SEP] with segments 0 then 1, trained
    and evaluated."""
    import gluonbert.data
    rows = ''.join(f'"{a}","{b}",{label}\n' for a, b, label in
                   [(p, n, 'no') for p, n in zip(POSITIVE, NEGATIVE)] +
                   [(p, p, 'yes') for p in POSITIVE])
    path = tmp_path / 'pairs.csv'
    path.write_text('sentence1,sentence2,label\n' + rows, encoding='utf-8')
    loaders = []
    real = gluonbert.data.make_dataloader
    monkeypatch.setattr(gluonbert.data, 'make_dataloader',
                        lambda *a, **k: loaders.append(real(*a, **k)) or loaders[-1])
    out = tmp_path / 'run'
    assert finetune_main(['--model', 'tiny', '--train', str(path), '--test', str(path),
                          '--text-column', 'sentence1', '--text-pair-column', 'sentence2',
                          '--labels', 'no,yes', '--epochs', '1', '--batch-size', '8',
                          '--max-len', '32', '--output-dir', str(out), '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['label_names'] == ['no', 'yes'] and metrics['train_examples'] == 12
    assert len(loaders) == 2  # train and test
    for loader in loaders:
        for _, valid_length, segments, _ in loader:
            for row, length in zip(segments.asnumpy(), valid_length.asnumpy().astype(int)):
                first_b = int(row[:length].argmax())  # [CLS] A [SEP] is 0, B [SEP] is 1
                assert first_b > 2 and (row[first_b:length] == 1).all()
                assert (row[:first_b] == 0).all() and (row[length:] == 0).all()
    capsys.readouterr()


@pytest.fixture(scope='module')
def tiny_model_dir(tiny_sentiment, tmp_path_factory):
    from gluonbert.pretrained import save_pretrained
    net, vocab, tokenizer = tiny_sentiment
    return save_pretrained(net, vocab, tokenizer, str(tmp_path_factory.mktemp('m') / 'model'))


class LinesArriving:
    """A binary stdin whose lines arrive one by one; ``seen[i]`` is how many output lines
    existed when line i+1 was read."""

    def __init__(self, lines, stdout):
        self.lines, self.stdout, self.seen = lines, stdout, []

    def __iter__(self):
        for line in self.lines:
            self.seen.append(self.stdout.getvalue().count(b'\n'))
            yield line


def test_predict_streams_stdin_in_batches_and_answers_every_line(tiny_model_dir):
    from gluonbert.cli import build_predict_parser, predict_cli
    lines = [b'a lovely film\n', b'\n', b'bad \xff bytes\r\n', b'   \n',
             'caf\u00e9 \u2028 fine\r\n'.encode(), b'no newline at the end']
    stdout = io.BytesIO()
    stdin = LinesArriving(lines, stdout)
    predict_cli(build_predict_parser().parse_args(['--model-dir', tiny_model_dir,
                                                   '--batch-size', '2']), stdin, stdout)
    assert stdin.seen == [0, 0, 2, 2, 4, 4]  # each chunk answered before the next is read
    output = stdout.getvalue().decode('utf-8')  # strict: valid UTF-8
    assert output.count('\n') == len(output.splitlines()) == 6  # U+2028 is escaped
    answers = [json.loads(line) for line in output.splitlines()]
    assert [a.get('text') for a in answers] == ['a lovely film', None, None, None,
                                                'caf\u00e9 \u2028 fine', 'no newline at the end']
    assert answers[1:4] == [{'line': 2, 'error': 'empty line'},
                            {'line': 3, 'error': 'invalid UTF-8 at byte 5 (0xff)'},
                            {'line': 4, 'error': 'blank line (whitespace only)'}]
    for answer in answers[::4] + answers[5:]:  # the winning class and its probability
        assert answer['label'] == max(answer['probabilities'], key=answer['probabilities'].get)
        assert answer['probability'] == answer['probabilities'][answer['label']]


def test_predict_text_streams_arguments_and_the_fast_path(tiny_model_dir, monkeypatch):
    from gluonbert.cli import build_predict_parser, predict_cli
    prepared = []
    real_prepare = gluonbert.fast.prepare
    monkeypatch.setattr(gluonbert.fast, 'prepare',
                        lambda *a, **k: prepared.append(a[1]) or real_prepare(*a, **k))

    def run(argv, stdin_text=''):
        stdout = io.StringIO()
        predict_cli(build_predict_parser().parse_args(['--model-dir', tiny_model_dir, *argv]),
                    io.StringIO(stdin_text), stdout)
        return [json.loads(line) for line in stdout.getvalue().splitlines()]

    # a text stream (no .buffer): a lone surrogate cannot be written as UTF-8
    answers = run(['--batch-size', '4'], 'fine\nx \ud800\n')
    assert answers[1] == {'line': 2, 'error': 'not valid Unicode: unpaired surrogate at '
                                              'character 3'}
    assert prepared == []  # the first chunk was not full
    answers = run(['--batch-size', '2'], 'one\ntwo\nthree\n')
    assert [a['text'] for a in answers] == ['one', 'two', 'three'] and prepared == ['float32']
    # TEXT arguments (undecodable argv bytes arrive as lone surrogates)
    answers = run(['ok', '', 'bad \udcff'])
    assert answers[1:] == [{'argument': 2, 'error': 'empty line'},
                           {'argument': 3, 'error': 'not valid Unicode: unpaired surrogate at '
                                                    'character 5'}]
    with pytest.raises(UsageError, match='no text given'):
        run([], '')


def test_predict_process_answers_each_batch_while_stdin_is_open(tiny_model_dir):
    """A real pipe: the first batch is answered before stdin closes; the output is UTF-8."""
    import threading
    process = subprocess.Popen(
        [sys.executable, '-m', 'gluonbert.cli', 'predict', '--model-dir', tiny_model_dir,
         '--batch-size', '2'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        process.stdin.write(b'first line\n\xed\xa0\x80 surrogate bytes\n')
        process.stdin.flush()
        early = []
        reader = threading.Thread(target=lambda: early.extend(
            [process.stdout.readline(), process.stdout.readline()]), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert len(early) == 2, 'no answer while stdin was still open'
        process.stdin.write(b'third\n')
        process.stdin.close()
        rest = process.stdout.read()
        assert process.wait(timeout=120) == 0, process.stderr.read()
    finally:
        process.kill()
    answers = [json.loads(line.decode('utf-8')) for line in early + rest.splitlines()]
    assert answers[0]['text'] == 'first line' and answers[2]['text'] == 'third'
    assert answers[1] == {'line': 2, 'error': 'invalid UTF-8 at byte 1 (0xed)'}


def test_pretrain_cli_output_feeds_finetuning(tmp_path, tiny_files, capsys):
    corpus = tmp_path / 'corpus.txt'
    docs = ['\n'.join(f'{t}.' for t in POSITIVE[i:i + 3]) for i in range(0, 6, 3)] + \
        ['\n'.join(f'{t}.' for t in NEGATIVE[i:i + 3]) for i in range(0, 6, 3)]
    corpus.write_text('\n\n'.join(docs) + '\n', encoding='utf-8')
    out = tmp_path / 'pre'
    assert pretrain_main(['--corpus', str(corpus), '--steps', '4', '--batch-size', '4',
                          '--max-len', '32', '--log-interval', '2', '--output-dir', str(out),
                          '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    # the held-out figures of the saved model: the last record's (the same weights, the same
    # held-out examples), accuracies of whole numbers of examples, perplexity exp(loss)
    last = metrics['records'][-1]
    assert last['step'] == 4
    for key in ('mlm_accuracy', 'nsp_accuracy', 'mlm_loss'):
        assert metrics[key] == pytest.approx(last[f'eval_{key}'], rel=1e-5), key
    assert 0 <= metrics['mlm_accuracy'] <= 1 and 0 <= metrics['nsp_accuracy'] <= 1
    nsp_right = metrics['nsp_accuracy'] * metrics['eval_examples']
    assert nsp_right == pytest.approx(round(nsp_right))
    assert metrics['mlm_perplexity'] == pytest.approx(math.exp(metrics['mlm_loss']))
    model, _, _ = load_pretrained(str(out / 'model'))
    assert isinstance(model, gluonbert.BERTForPretraining)
    train, test = tiny_files
    run = tmp_path / 'fine'
    args = finetune_args(train, test, run)
    args[args.index('--model') + 1] = str(out / 'model')
    assert finetune_main(args + ['--epochs', '1']) == 0
    assert json.loads((run / 'metrics.json').read_text())['lr'] == default_lr(str(out / 'model'))

    single = tmp_path / 'single.txt'
    single.write_text('just one document.\n', encoding='utf-8')
    capsys.readouterr()
    assert pretrain_main(['--corpus', str(single), '--output-dir', str(tmp_path / 'y')]) == 2
    assert 'needs at least 2' in capsys.readouterr().err


@pytest.fixture(scope='module')
def tiny_sentiment():
    _, vocab, tokenizer = load_pretrained('minilm')
    mx.random.seed(0)
    config = gluonbert.BERTConfig.from_preset('tiny', vocab_size=len(vocab), max_length=128)
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(config))
    net.initialize(mx.init.Normal(0.5))
    return net, vocab, tokenizer


def test_predict_sentiment_and_predict_agree(tiny_sentiment):
    net, vocab, tokenizer = tiny_sentiment
    texts = ['this movie is so great', 'dull', 'An uneven film. ' * 100, 'meh, it was ok']
    batched = gluonbert.predict(net, mx.cpu(), vocab, tokenizer, texts, batch_size=3)
    for text, prediction in zip(texts, batched):
        single = gluonbert.predict_sentiment(net, mx.cpu(), vocab, tokenizer, text)
        assert single.label == prediction.label
        assert single.probability == pytest.approx(prediction.probability, abs=1e-5)
        assert single.label in net.label_names  # '0', '1' for a classifier nobody named
        assert sum(single.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize('bad, error', [('', ValueError), ('   \n', ValueError),
                                        (None, TypeError), (42, TypeError)])
def test_predict_rejects_bad_text(tiny_sentiment, bad, error):
    net, vocab, tokenizer = tiny_sentiment
    with pytest.raises(error, match='text'):
        gluonbert.predict_sentiment(net, mx.cpu(), vocab, tokenizer, bad)
    with pytest.raises(error, match=r'item 1'):
        gluonbert.predict(net, mx.cpu(), vocab, tokenizer, ['fine', bad])


def test_run_command_turns_errors_and_ctrl_c_into_exit_codes(capsys, tmp_path):
    """User errors (the GluonbertError family, OSErrors naming a file) are one line and exit
    2; Ctrl-C is 130; anything else is a bug and keeps its traceback."""
    from gluonbert.cli import run_command
    from gluonbert.errors import DataError

    def interrupted(args):
        raise KeyboardInterrupt

    def bad_data(args):
        raise DataError('reviews.csv:3: bad value')

    def unreadable(args):
        open(tmp_path / 'missing.csv', encoding='utf-8')  # pylint: disable=consider-using-with

    def bug(args):
        raise ValueError('an internal bug')

    assert run_command('tool', lambda args: None, None) == 0
    assert run_command('tool', interrupted, None, interrupted='; rerun with --resume') == 130
    assert capsys.readouterr().err == '\ntool: interrupted; rerun with --resume\n'
    assert run_command('tool', bad_data, None) == 2
    assert capsys.readouterr().err == 'tool: error: reviews.csv:3: bad value\n'
    assert run_command('tool', unreadable, None) == 2
    assert capsys.readouterr().err == (f'tool: error: {tmp_path / "missing.csv"}: No such file '
                                       f'or directory\n')
    for error in (ValueError, TypeError, KeyError, AssertionError):
        def raises(args, error=error):
            raise error('an internal bug')
        with pytest.raises(error, match='an internal bug'):
            run_command('tool', raises, None)
    assert capsys.readouterr().err == ''


def test_an_internal_bug_in_a_console_script_shows_its_traceback(tmp_path):
    """A real process: exit status 1 and Python's traceback, not a one-line 'error'."""
    code = ('import sys\nfrom gluonbert import cli\n'
            'def bug(args):\n    raise TypeError("unsupported operand")\n'
            'cli.console_entry(lambda argv: cli.run_command("tool", bug, None))()\n')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 1
    assert done.stderr.startswith('Traceback (most recent call last):')
    assert done.stderr.strip().endswith('TypeError: unsupported operand')
    assert 'tool: error' not in done.stderr


def test_finetune_profile_accounts_for_the_wall_time(tiny_files, tmp_path, capsys):
    train, test = tiny_files
    out = tmp_path / 'run'
    assert finetune_main(finetune_args(train, test, out, '--profile')) == 0
    profile = json.loads((out / 'metrics.json').read_text())['profile']
    phases, calls = profile['phases'], profile['calls']
    # every phase was timed, as often as it ran: the command's once per run, the training
    # loop's per epoch (at least) and per batch
    assert set(phases) == set(calls)
    once = ('load_model', 'read_data', 'tokenize', 'save', 'report', 'predict')
    assert {name: calls[name] for name in once} == dict.fromkeys(once, 1)
    assert calls['checkpoint'] >= 2 and calls['data'] >= calls['update']
    assert phases['forward_backward'] > max(phases['data'], phases['tokenize'])
    # 24 training rows in batches of 8, 2 epochs: one forward/backward and update each
    assert calls['forward_backward'] == calls['update'] == 6
    assert calls['evaluate'] == 2
    assert sum(phases.values()) <= profile['wall_seconds'] + 1e-3
    assert profile['fused_ops'] == gluonbert.ops.status()  # which kernels the timing used
    assert profile['unaccounted_seconds'] <= 0.1 * profile['wall_seconds'] + 0.2
    inside = phases['forward_backward'] + phases['evaluate']
    assert profile['outside_forward_backward'] == pytest.approx(
        1 - inside / profile['wall_seconds'], abs=1e-3)
    printed = capsys.readouterr().out
    assert 'where the time went' in printed and 'forward_backward' in printed


def test_console_entry_exits_at_once_after_flushing_and_atexit():
    """Console commands skip Python's slow teardown of MXNet, but lose no output."""
    import subprocess
    import sys
    code = ("import atexit, sys\nfrom gluonbert.cli import exit_now\n"
            "atexit.register(lambda: print('atexit ran'))\n"
            "sys.stdout.write('buffered, not flushed; ')\nexit_now(3)\n")
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 3, done.stderr
    assert done.stdout == 'buffered, not flushed; atexit ran\n'


@pytest.mark.parametrize('fastest, argv, path', [
    ('int8', ['--fast'], ('float32', 'int8')),
    ('float32', ['--fast'], ('float32', None)),
    (None, ['--quantize', 'int8'], ('float32', 'int8')),
    (None, [], ('float32', None)),
])
def test_predict_flags_resolve_to_a_path_and_leave_args_as_parsed(monkeypatch, capsys, fastest,
                                                                  argv, path):
    from gluonbert.cli import predict as module
    monkeypatch.setattr(module, 'fastest_path', lambda: (fastest, 'stand-in'))
    args = module.build_predict_parser().parse_args(['--model-dir', 'm', *argv])
    parsed = dict(vars(args))
    assert module._validate_fast_flags(args) == module.FastPath(*path)
    assert vars(args) == parsed
    assert capsys.readouterr().err == (f'gluonbert-predict: --fast: {fastest} (stand-in)\n'
                                       if fastest else '')


@pytest.mark.parametrize('fastest, argv, dtype', [
    ('int8', ['--fast'], 'int8'), ('float32', ['--fast'], 'float32'),
    (None, ['--dtype', 'int8'], 'int8'), (None, [], 'float32'),
])
def test_export_flags_resolve_to_a_dtype_and_leave_args_as_parsed(monkeypatch, fastest, argv,
                                                                   dtype):
    from gluonbert.cli import export as module
    monkeypatch.setattr(module, 'fastest_path', lambda: (fastest, 'stand-in'))
    args = module.build_export_parser().parse_args(['--model-dir', 'm', '--output', 'o',
                                                    *argv])
    parsed = dict(vars(args))
    assert module._validate_export_args(args) == dtype
    assert vars(args) == parsed
