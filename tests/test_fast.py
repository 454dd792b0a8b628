"""CPU inference fast paths (bfloat16, int8, graph folding), export, bf16 training, bench smoke.

Tolerances (tiny model trained for a few epochs on synthetic, learnable data; logits of
order 1, probabilities spread over [0, 1]):

- bfloat16 vs float32: |logit difference| <= 0.05 * max(1, |logit|), probabilities within
  0.02, same argmax wherever the float32 probability margin exceeds 0.05.
- int8 vs float32: probabilities within 0.1, argmax agreement >= 90% overall and 100% where
  the float32 probability margin exceeds 0.2.
- exported files reloaded with plain MXNet: exactly the in-memory model's logits (float32:
  exactly the original model's).
"""
import json
import os
import subprocess
import sys

import numpy as np
import mxnet as mx
import pytest

import gluonbert
from gluonbert import fast, sysinfo
from gluonbert.fast import passes
from gluonbert.model import ClassifierInfo
from gluonbert.export import export_classifier
from gluonbert.cli import export_main, predict_main
from gluonbert.tokenizer import BERTTokenizer, Vocab
from gluonbert.train import evaluate_accuracy, train_loop
from stand_ins import fast_dtypes, needs_native_bf16, synthetic_sentiment_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']


def synthetic_batches(n=64, batch_size=16, seq_len=12, seed=0):
    return synthetic_sentiment_batches(n, batch_size, seq_len, seed, own_fraction=0.7)


class _Loader(list):
    batch_sampler = None


def model_inputs(batch):
    words, valid_length, segments, _ = batch
    return words, segments, valid_length


@pytest.fixture(scope='module')
def trained():
    """(net, vocab, tokenizer, test batches): a tiny classifier that has learnt the task."""
    mx.random.seed(0)
    config = gluonbert.BERTConfig.from_preset('tiny', dropout=0.0, attention_dropout=0.0)
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), dropout=0.0)
    net.initialize()
    net.hybridize(static_alloc=True)
    train_loop(net, _Loader(synthetic_batches(n=128)), None, 10, 3e-3, mx.cpu(), progress=False)
    # the task's own texts for int8 calibration and export checks, as gluonbert-finetune keeps
    rng = np.random.RandomState(4)
    own_texts = [' '.join(f'w{i}' for i in rng.randint(10, 99, rng.randint(3, 12)))
                 for _ in range(64)]
    net.info = ClassifierInfo(['negative', 'positive'], max_len=16, truncate='head',
                              calibration_texts=own_texts)
    vocab = Vocab(SPECIALS + [f'w{i}' for i in range(5, 99)])
    tokenizer = BERTTokenizer(vocab)
    return net, vocab, tokenizer, synthetic_batches(n=96, batch_size=32, seed=1)


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def logits_and_probs(net, batches):
    logits = np.concatenate([net(*model_inputs(b)).asnumpy() for b in batches])
    return logits, softmax(logits)


def margin(probabilities):
    top = np.sort(probabilities, axis=1)
    return top[:, -1] - top[:, -2]


def test_conversion_leaves_amps_global_list_as_it_was():
    """AMP checks operators against its global float32 list: a conversion adds the fused
    kernels for its own time only (training AMP is process-wide and is tested apart)."""
    from mxnet.contrib.amp.lists import symbol_bf16
    from gluonbert import ops
    from gluonbert.amp import bf16_fp32_ops
    before = list(symbol_bf16.FP32_FUNCS)
    with bf16_fp32_ops():
        inside = list(symbol_bf16.FP32_FUNCS)
        with bf16_fp32_ops():  # nested: nothing added twice
            assert list(symbol_bf16.FP32_FUNCS) == inside
    assert symbol_bf16.FP32_FUNCS == before
    own = ('gluonbert_layer_norm', 'gluonbert_dropout')
    for op in fast.INTERLEAVED_ATTENTION_OPS + own:
        # gluonbert's operators only where they are registered (not with GLUONBERT_FUSED_OPS=0)
        assert inside.count(op) == (1 if op not in own or ops.load() else 0), op


# AMP as bf16 training turns it on, with gluonbert's operators absent. The bfloat16 check
# is answered yes: AMP's set-up computes nothing in bfloat16, so this runs on every CPU.
AMP_WITHOUT_FUSED_OPS = '''
import gluonbert, mxnet as mx
from gluonbert import amp as gluonbert_amp, ops
gluonbert_amp.require_bf16 = lambda *args, **kwargs: None
amp = gluonbert_amp.init_amp_bfloat16()
from mxnet.contrib.amp.lists import symbol_bf16
print(ops.load(), 'gluonbert_layer_norm' in symbol_bf16.FP32_FUNCS,
      '_contrib_interleaved_matmul_selfatt_qk' in symbol_bf16.FP32_FUNCS)
'''


def test_bf16_amp_starts_without_gluonberts_operators():
    env = dict(os.environ, PYTHONPATH=ROOT, GLUONBERT_FUSED_OPS='0')
    done = subprocess.run([sys.executable, '-c', AMP_WITHOUT_FUSED_OPS], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ['False', 'False', 'True']


def test_fold_constants_is_exact(trained):
    net, _, _, batches = trained
    inputs = model_inputs(batches[0])
    names, sym = passes.trace(net, inputs)
    arg_params, _ = passes.param_values(net, sym)
    folded, folded_params, folded_names = fast.fold_constants(sym, arg_params)
    assert folded_names and len(folded.list_arguments()) < len(sym.list_arguments())

    def run(graph, params):
        block = fast.InferenceClassifier(graph, [mx.sym.var(n, dtype='float32') for n in names],
                                         source=net)
        for name, param in block.collect_params().items():
            param._load_init(params[name], mx.cpu())
        return block(*inputs).asnumpy()

    # the same traced graph (MXNet's operators) before and after folding: bit-identical
    unfolded = run(sym, arg_params)
    assert np.array_equal(run(folded, folded_params), unfolded)
    # and the trace computes what the net does (which may use the fused LayerNorm)
    np.testing.assert_allclose(unfolded, net(*inputs).asnumpy(), rtol=1e-5, atol=1e-6)


def test_float32_fast_path_matches_and_leaves_the_net_alone(trained):
    net, _, _, batches = trained
    cached = net._cached_graph
    reference, _ = logits_and_probs(net, batches)
    fused = fast.to_float32(net, static_shape=False)
    assert isinstance(fused, fast.InferenceClassifier) and fused.dtype == 'float32'
    graph = fused._cached_graph[1].tojson()
    assert '_sg_mkldnn_selfatt_qk' in graph and '_sg_mkldnn_fully_connected' in graph
    # batches of other shapes than the one it was partitioned with
    logits, _ = logits_and_probs(fused, batches)
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-5)
    short = tuple(x[:3] for x in model_inputs(batches[0]))
    short = (short[0][:, :5], short[1][:, :5], mx.nd.minimum(short[2], 5))
    np.testing.assert_allclose(fused(*short).asnumpy(), net(*short).asnumpy(), rtol=1e-4,
                               atol=1e-5)
    assert net._cached_graph is cached  # net's own (training) graph is untouched
    prepared = fast.prepare(net, 'float32')
    assert isinstance(prepared, fast.InferenceClassifier) and prepared is not net
    assert net._cached_graph is cached


@needs_native_bf16()
def test_bfloat16_close_to_float32(trained):
    net, _, _, batches = trained
    reference, ref_probs = logits_and_probs(net, batches)
    assert np.abs(reference).max() > 0.5 and margin(ref_probs).max() > 0.5  # it has learnt
    bf16 = fast.to_bfloat16(net)
    assert isinstance(bf16, fast.InferenceClassifier) and bf16.dtype == 'bfloat16'
    logits, probs = logits_and_probs(bf16, batches)
    assert logits.dtype == np.float32
    assert (np.abs(logits - reference) <= 0.05 * np.maximum(1, np.abs(reference))).all()
    assert np.abs(probs - ref_probs).max() <= 0.02
    clear = margin(ref_probs) > 0.05
    assert (logits.argmax(1) == reference.argmax(1))[clear].all()
    assert bf16.label_names == net.label_names and bf16.config == net.config


def test_int8_close_to_float32(trained):
    net, _, _, batches = trained
    reference, ref_probs = logits_and_probs(net, batches)
    calib = [model_inputs(b) for b in synthetic_batches(n=64, batch_size=16, seed=2)]
    int8 = fast.quantize_int8(net, calib)
    assert int8.dtype == 'int8'
    logits, probs = logits_and_probs(int8, batches)
    assert np.abs(probs - ref_probs).max() <= 0.1
    agree = logits.argmax(1) == reference.argmax(1)
    assert agree.mean() >= 0.9
    assert agree[margin(ref_probs) > 0.2].all()
    # accuracy on the task is kept
    data = _Loader(batches)
    assert evaluate_accuracy(int8, data, mx.cpu()) >= evaluate_accuracy(net, data, mx.cpu()) - 0.05


def test_quantize_int8_argument_errors(trained):
    net = trained[0]
    with pytest.raises(ValueError, match='calibration batch'):
        fast.quantize_int8(net, [])
    with pytest.raises(ValueError, match='calib_mode'):
        fast.quantize_int8(net, [fast.example_inputs(net)], calib_mode='percentile')
    with pytest.raises(ValueError, match='dtype must be one of'):
        fast.prepare(net, 'float16')
    with pytest.raises(ValueError, match='calib'):
        fast.prepare(net, 'int8')


@pytest.mark.parametrize('dtype', [pytest.param('bfloat16', marks=needs_native_bf16()),
                                   'int8'])
def test_fast_models_predict_like_float32(trained, dtype):
    net, vocab, tokenizer, _ = trained
    texts = ['w60 w70 w80 w90 w61', 'w10 w20 w30 w40 w11', 'w56 w57 w58 w59 w12',
             'w13 w14 w15 w16 w97 w98 w99']
    expected = gluonbert.predict(net, mx.cpu(), vocab, tokenizer, texts)
    calib = fast.encode_batches(net, vocab, tokenizer, texts * 4, batch_size=8)
    model = (fast.to_bfloat16(net, static_shape=False) if dtype == 'bfloat16' else
             fast.quantize_int8(net, calib, static_shape=False))
    got = gluonbert.predict(model, mx.cpu(), vocab, tokenizer, texts)
    for want, have in zip(expected, got):
        if want.probability > 0.6:  # a clear float32 answer is kept
            assert have.label == want.label
        assert have.probabilities[want.label] == pytest.approx(want.probability, abs=0.1)
    single = gluonbert.predict_sentiment(model, mx.cpu(), vocab, tokenizer, texts[0])
    assert single.label == got[0].label
    assert fast.optimize(net, static_shape=False) is net


IMPORT_WITHOUT_GLUONBERT = r'''
import json, sys
sys.modules['gluonbert'] = None  # importing gluonbert would fail
import numpy as np
import mxnet as mx
prefix, inputs_path, output_path = sys.argv[1:4]
with open(prefix + '-meta.json') as f:
    meta = json.load(f)
net = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', meta['input_names'],
                                   prefix + '-0000.params')
data = np.load(inputs_path)
logits = net(*[mx.nd.array(data[role]) for role in ('words', 'segments', 'valid_length')])
np.save(output_path, logits.asnumpy())
assert not [m for m in sys.modules if m.startswith('gluonbert') and sys.modules[m] is not None]
print('ok', meta['dtype'], logits.shape)
'''


def test_export_reloads_without_gluonbert(trained, tmp_path):
    net, vocab, tokenizer, batches = trained
    inputs = model_inputs(batches[0])
    calib = [model_inputs(b) for b in synthetic_batches(n=32, batch_size=16, seed=3)]
    np.savez(tmp_path / 'inputs.npz', words=inputs[0].asnumpy(), segments=inputs[1].asnumpy(),
             valid_length=inputs[2].asnumpy())
    fused = net(*inputs).asnumpy()
    # the float32 file is identical to the model computed with MXNet's own operators, and
    # within float32 rounding of the model's own graph (gluonbert's fused operators)
    portable = gluonbert.with_kernels(net, kernels='mxnet')  # the same parameters
    portable.hybridize(static_alloc=True)
    reference = portable(*inputs).asnumpy()
    assert np.array_equal(net(*inputs).asnumpy(), fused)  # its own kernels again
    np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-6)
    expected = {}
    for dtype in fast_dtypes('float32', 'bfloat16', 'int8'):  # bf16 where native
        prefix = str(tmp_path / 'out' / dtype)
        meta = export_classifier(net, vocab, tokenizer, prefix, dtype=dtype,
                                 calib_batches=calib if dtype == 'int8' else None,
                                 check_batch=inputs)
        for key in ('symbol', 'params', 'vocab', 'meta'):
            assert os.path.exists(meta['paths'][key])
        assert meta['check']['max_abs_diff_to_converted'] == 0.0
        assert meta['label_names'] == ['negative', 'positive'] and meta['max_len'] == 16
        assert meta['input_names'] == ['data0', 'data1', 'data2']
        assert Vocab.from_file(meta['paths']['vocab']).idx_to_token == vocab.idx_to_token
        assert not list((tmp_path / 'out').glob('.export-*'))  # no staging left behind
        expected[dtype] = meta
    # one interpreter for the three reloads (each start costs seconds)
    script = '\n'.join(f'sys.argv = [None, {str(tmp_path / "out" / d)!r}, '
                       f'{str(tmp_path / "inputs.npz")!r}, {str(tmp_path / (d + ".npy"))!r}]\n'
                       f'exec(BODY)' for d in expected)
    code = f'import sys\nBODY = {IMPORT_WITHOUT_GLUONBERT!r}\n{script}'
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=str(tmp_path), env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('ok') == len(expected)
    for dtype in expected:
        got = np.load(tmp_path / f'{dtype}.npy')
        if dtype == 'float32':
            assert np.array_equal(got, reference)
        else:
            # the bounds of test_bfloat16_close_to_float32 and test_int8_close_to_float32, in
            # probabilities: int8's logit error has no bound of its own without VNNI, where
            # oneDNN's 16-bit pair sums saturate (docs/cpus.md)
            probs, ref_probs = softmax(got), softmax(reference)
            assert np.abs(probs - ref_probs).max() <= {'bfloat16': 0.02, 'int8': 0.1}[dtype]
            assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.9
            assert np.abs(got - reference).max() == pytest.approx(
                expected[dtype]['check']['max_abs_diff_to_float32'], abs=1e-6)


@pytest.fixture(scope='module')
def model_dir(trained, tmp_path_factory):
    net, vocab, tokenizer, _ = trained
    directory = tmp_path_factory.mktemp('fast') / 'model'
    gluonbert.save_pretrained(net, vocab, tokenizer, str(directory))
    return str(directory)


def test_export_cli(model_dir, tmp_path, capsys):
    prefix = str(tmp_path / 'exported' / 'clf')
    assert export_main(['--model-dir', model_dir, '--output', prefix, '--dtype', 'int8',
                        '--calib-size', '8']) == 0
    out = capsys.readouterr().out
    assert 'exported' in out and 'SymbolBlock.imports' in out
    meta = json.loads(open(prefix + '-meta.json', encoding='utf-8').read())
    assert meta['dtype'] == 'int8' and meta['calibration']['examples'] == 8


@pytest.mark.parametrize('flags, message', [
    (['--model-dir', '/nonexistent/model', '--output', 'x'], 'no such model directory'),
    (['--output', 'x/'], 'file prefix'),
    (['--output', 'x', '--calib-file', '/nonexistent.txt'], 'no such calibration file'),
    (['--output', 'x', '--dtype', 'int8', '--fast'], '--fast picks the dtype itself'),
    (['--output', 'x', '--dtype', 'int8', '--calib-file', '/nonexistent.txt'],
     'no such calibration file'),
    (['--output', 'x', '--calib-size', '0'], '--calib-size must be >= 1'),
])
def test_export_cli_errors_are_one_line(model_dir, tmp_path, capsys, flags, message):
    flags = [f if f not in ('x', 'x/') else os.path.join(str(tmp_path), f) for f in flags]
    if '--model-dir' not in flags:
        flags = ['--model-dir', model_dir] + flags
    assert export_main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('gluonbert-export: error:') and message in err
    assert len(err.splitlines()) == 1


def test_predict_cli_fast_paths(model_dir, tmp_path, capsys):
    texts = ['w60 w70 w80 w90', 'w10 w20 w30 w40']
    assert predict_main(['--model-dir', model_dir, *texts]) == 0
    reference = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    calib = tmp_path / 'calib.txt'
    calib.write_text('w60 w61 w62\nw11 w12 w13 w14\n', encoding='utf-8')
    flags_to_try = {'int8': ['--quantize', 'int8', '--calib-file', str(calib)],
                    'bfloat16': ['--dtype', 'bfloat16']}
    for dtype in fast_dtypes('int8', 'bfloat16'):
        # bfloat16 where native; test_hardware covers the refusal on every CPU
        assert predict_main(['--model-dir', model_dir, *flags_to_try[dtype], *texts]) == 0
        captured = capsys.readouterr()
        lines = [json.loads(line) for line in captured.out.splitlines()]
        # int8 asked for on a CPU without VNNI: one line says it changes answers here
        assert ('note: without VNNI' in captured.err) == (dtype == 'int8' and
                                                           bool(sysinfo.int8_caveat()))
        assert [p['label'] for p in lines] == [p['label'] for p in reference]
        for want, have in zip(reference, lines):
            assert have['probability'] == pytest.approx(want['probability'], abs=0.1)
    assert predict_main(['--model-dir', model_dir, '--dtype', 'bfloat16', '--quantize', 'int8',
                         'w60']) == 2
    err = capsys.readouterr().err
    assert 'pick one' in err and len(err.strip().splitlines()) == 1


BF16_TRAINING = r'''
import sys
sys.path.insert(0, {tests!r})
import numpy as np, mxnet as mx
import gluonbert
from gluonbert.train import train_loop
from test_fast import synthetic_batches, _Loader
losses = {{}}
for dtype in ('float32', 'bfloat16'):
    mx.random.seed(0)
    config = gluonbert.BERTConfig.from_preset('tiny', dropout=0.0, attention_dropout=0.0)
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), dropout=0.0)
    net.initialize()
    net.hybridize(static_alloc=True)
    history = train_loop(net, _Loader(synthetic_batches(n=32)), None, 2, 3e-3, mx.cpu(),
                         dtype=dtype, progress=False)
    losses[dtype] = [r['train_loss'] for r in history]
    assert all(p.data().dtype == np.float32 for p in net.collect_params().values())
print(losses)
'''


@needs_native_bf16()
def test_bfloat16_training_steps_are_finite_and_close_to_float32():
    # AMP changes MXNet process-wide: run it in its own interpreter
    code = BF16_TRAINING.format(tests=os.path.join(ROOT, 'tests'))
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr[-2000:]
    losses = eval(result.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used
    assert all(np.isfinite(losses['bfloat16']))
    assert np.allclose(losses['bfloat16'], losses['float32'], atol=0.05)


def test_mxnet_imported_first_warns_that_threads_cannot_be_resized():
    # test_packaging covers import order gluonbert-first and OMP_NUM_THREADS set by the user.
    # MXNet's engine keeps the thread count it read at import, so gluonbert must say so.
    code = ('import warnings\nwarnings.simplefilter("always")\nimport mxnet, gluonbert\n'
            'from gluonbert._env import physical_cores\nprint(physical_cores())')
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    env['PYTHONPATH'] = ROOT
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    cores = int(result.stdout.split()[-1])
    if cores > 1:
        assert 'mxnet was imported before gluonbert' in result.stderr
        assert f'OMP_NUM_THREADS={cores}' in result.stderr


def test_bench_suite_quick_smoke():
    """The benchmark suite runs end to end on tiny sizes and prints a well-formed table."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'bench_suite.py'), '--quick',
         '--hf-python', 'none'],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith('|')]
    header = [c.strip() for c in table[0].strip('|').split('|')]
    assert header[:4] == ['benchmark', 'variant', 'unit', 'min']
    assert set(table[1].replace('|', '').strip()) <= set('-: ')
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in table[2:]]
    assert all(len(row) == len(header) for row in rows)
    kinds = {row[0] for row in rows}
    assert {'inference', 'training', 'tokenization', 'padding waste', 'GEMM peak'} <= kinds
    variants = {(row[0], row[1]) for row in rows}
    for variant in ('gluonbert fp32', 'gluonbert bf16', 'gluonbert int8', 'GluonNLP'):
        assert any(v[1].startswith(variant) for v in variants if v[0] == 'inference'), variant


def test_fast_flag_picks_this_cpus_path_and_says_so(model_dir, tmp_path, capsys, monkeypatch):
    """--fast takes what gluonbert.sysinfo.fastest_path says (forced here both ways), prints
    the choice on stderr, and predicts like float32."""
    from gluonbert.cli import predict as predict_cli
    texts = ['w60 w70 w80 w90', 'w10 w20 w30 w40']
    assert predict_main(['--model-dir', model_dir, *texts]) == 0
    reference = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for choice in ('int8', 'float32'):
        monkeypatch.setattr(predict_cli, 'fastest_path', lambda c=choice: (c, 'forced'))
        assert predict_main(['--model-dir', model_dir, '--fast', *texts]) == 0
        captured = capsys.readouterr()
        assert captured.err == f'gluonbert-predict: --fast: {choice} (forced)\n'
        got = [json.loads(line) for line in captured.out.splitlines()]
        assert [p['label'] for p in got] == [p['label'] for p in reference]
    assert predict_main(['--model-dir', model_dir, '--fast', '--quantize', 'int8', 'w1']) == 2
    assert capsys.readouterr().err == ('gluonbert-predict: error: --fast picks the CPU path '
                                       'itself; drop --dtype, --quantize or --gpus\n')
    from gluonbert.cli import export as export_cli
    monkeypatch.setattr(export_cli, 'fastest_path', lambda: ('int8', 'forced'))
    prefix = str(tmp_path / 'fast' / 'clf')
    assert export_main(['--model-dir', model_dir, '--output', prefix, '--fast',
                        '--calib-size', '8']) == 0
    assert capsys.readouterr().err == 'gluonbert-export: --fast: int8 (forced)\n'
    assert json.loads(open(prefix + '-meta.json', encoding='utf-8').read())['dtype'] == 'int8'


def test_export_and_int8_demand_the_models_own_texts(trained, tmp_path, capsys):
    """A model that kept no texts of its task is not calibrated on movie reviews: the
    command asks for --calib-file."""
    net, vocab, tokenizer, _ = trained
    bare = tmp_path / 'bare'
    info = net.info
    net.info = ClassifierInfo(info.label_names, max_len=info.max_len)
    try:
        gluonbert.save_pretrained(net, vocab, tokenizer, str(bare))
    finally:
        net.info = info
    assert export_main(['--model-dir', str(bare), '--output', str(tmp_path / 'x')]) == 2
    assert capsys.readouterr().err == (
        'gluonbert-export: error: no calibration texts: this model keeps none of its task '
        '(saved before gluonbert kept them, or built in Python); give a file of texts of its '
        'task, one per line (--calib-file FILE)\n')
    texts = tmp_path / 'task.txt'
    texts.write_text('w60 w61 w62\nw11 w12 w13 w14\n', encoding='utf-8')
    assert export_main(['--model-dir', str(bare), '--output', str(tmp_path / 'x'),
                        '--calib-file', str(texts)]) == 0
    assert 'same argmax as float32 on 100% of 2 texts of its task' in capsys.readouterr().out
