"""The thin scripts run on top of the library."""
import importlib.util
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_imdb_walks_the_tutorial_flow_offline(capsys):
    script = load_script('finetune_imdb')
    history = script.main(['--model', 'minilm', '--dataset', 'sample', '--epochs', '1',
                           '--limit', '48', '--batch-size', '16', '--lr', '3e-4'])
    assert len(history) == 1
    record = history[0]
    # measured over exactly the 48 test reviews --limit keeps, and printed as returned
    correct = record['test_accuracy'] * 48
    assert abs(correct - round(correct)) < 1e-9, record
    assert 0 < record['train_loss'] < 10  # a finite cross-entropy on 2 classes
    out = capsys.readouterr().out
    assert f"test accuracy after 1 epochs: {record['test_accuracy']:.4f}" in out
    assert 'this movie is so great ->' in out


def test_finetune_imdb_fails_fast_with_one_line_offline():
    env = dict(os.environ, GLUONBERT_OFFLINE='1', MXNET_HOME=os.path.join(ROOT, '.no-such-home'))
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'finetune_imdb.py')],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    assert result.stderr.startswith('finetune_imdb: ')
    assert 'bert_12_768_12' in result.stderr
