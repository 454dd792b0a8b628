"""gluonbert-predict --backend mxnet|onnxruntime|openvino|auto (gluonbert.backends), on a
tiny classifier: each backend gives gluonbert's float32 probabilities, the ONNX export is
cached beside the model and redone when the model changes, auto measures once and records
its choice, and a missing package is one line naming the extra."""
import io
import json
import os
import shutil

import numpy as np
import pytest

from export_models import LABELS, TEXTS, save_classifier, tiny_classifier
from gluonbert import backends
from gluonbert import onnx_export
from gluonbert.backends import choice as choice_module
from gluonbert.backends import runners
from gluonbert.cli import predict_main
from gluonbert.cli.info import main as info_main
from gluonbert.errors import EnvironmentProblem
from gluonbert.hf_export import encode_inputs, gluonbert_logits, logit_tolerance, softmax
from gluonbert.predict import predict

pytest.importorskip('onnxruntime', reason="the onnx extra is not installed "
                                          "(pip install 'gluonbert[onnx]')")
JSON_ROUNDING = 5e-7  # Prediction.to_dict rounds probabilities to 6 decimals


def openvino_or_skip():
    return pytest.importorskip('openvino', reason="the openvino extra is not installed "
                                                  "(pip install 'gluonbert[openvino]')")


@pytest.fixture(scope='module')
def saved(vocabulary, tmp_path_factory):
    """A saved tiny classifier, and a second one of other weights (seed 1)."""
    root = tmp_path_factory.mktemp('backends')
    first = save_classifier(tiny_classifier(*vocabulary), *vocabulary, root / 'first')
    other = save_classifier(tiny_classifier(*vocabulary, seed=1), *vocabulary, root / 'other')
    return first, other


@pytest.fixture
def model_dir(saved, tmp_path):
    """A fresh copy of the first model (its cache is written into it)."""
    return shutil.copytree(saved[0], tmp_path / 'model')


def reference(model_dir):
    """gluonbert's float32 probabilities of TEXTS, and their tolerance: softmax's
    derivative is at most 1/2 in each logit, so probabilities move by at most half the
    logits' float32 rounding (logit_tolerance), which is taken whole."""
    from gluonbert.model_dir import load_classifier
    net, vocab, tokenizer = load_classifier(str(model_dir))
    logits = gluonbert_logits(net, encode_inputs(net, vocab, tokenizer, TEXTS))
    return softmax(logits), logit_tolerance(logits)


def probabilities_of(predictor, vocab, tokenizer):
    return np.array([[p.probabilities[name] for name in LABELS]
                     for p in predict(predictor, None, vocab, tokenizer, TEXTS, batch_size=4)])


@pytest.mark.parametrize('backend, precision', [
    ('mxnet', None), ('onnxruntime', 'float32'), ('openvino', 'f32')])
def test_each_float32_backend_gives_gluonbert_probabilities(model_dir, backend, precision):
    if backend == 'openvino':
        openvino_or_skip()
    expected, tolerance = reference(model_dir)
    if backend == 'openvino':  # f32 whatever the CPU (--backend openvino follows it)
        net, vocab, tokenizer, _ = backends.load_backend(str(model_dir), 'mxnet')
        directory = backends.onnx_export_dir(str(model_dir), net, vocab, tokenizer)
        predictor = runners.onnx_classifier(directory, net, 'openvino', 'f32')
    else:
        predictor, vocab, tokenizer, said = backends.load_backend(str(model_dir), backend)
        assert said == f'{backend} {precision or "float32"}'
    got = probabilities_of(predictor, vocab, tokenizer)
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= tolerance
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()


def test_openvino_follows_the_cpu_precision(model_dir, monkeypatch):
    openvino_or_skip()
    predictor, *_ = backends.load_backend(str(model_dir), 'openvino')
    assert predictor.precision == backends.openvino_precision()
    from gluonbert.hardware import CPUInfo
    assert backends.openvino_precision(CPUInfo('x', frozenset({'avx512_bf16'}))) == 'bf16'
    assert backends.openvino_precision(CPUInfo('x', frozenset({'amx_bf16'}))) == 'bf16'
    assert backends.openvino_precision(CPUInfo('x', frozenset({'avx512f'}))) == 'f32'


def test_export_is_cached_and_redone_for_a_changed_model(model_dir, saved, monkeypatch):
    exported = []
    first, vocab, tokenizer, _ = backends.load_backend(str(model_dir), 'onnxruntime',
                                                       exported=exported)
    assert len(exported) == 1 and exported[0]['check']['max_abs_logit_diff'] <= \
        exported[0]['check']['tolerance']
    cache = os.path.join(str(model_dir), backends.CACHE_DIR_NAME, 'onnx')
    (old,) = [n for n in os.listdir(cache) if not n.startswith('.')]
    assert sorted(os.listdir(os.path.join(cache, old)))[:3] == ['config.json', 'model.onnx',
                                                                'model_int8.onnx']

    real_export = onnx_export.export_onnx

    def no_export(*args, **kwargs):
        raise AssertionError('exported again although the model is unchanged')
    monkeypatch.setattr(onnx_export, 'export_onnx', no_export)
    again, *_ = backends.load_backend(str(model_dir), 'onnxruntime', exported=exported)
    assert len(exported) == 1
    assert np.array_equal(probabilities_of(again, vocab, tokenizer),
                          probabilities_of(first, vocab, tokenizer))

    monkeypatch.setattr(onnx_export, 'export_onnx', real_export)
    for name in ('gluonbert.json', 'model.params'):  # other weights in the same directory
        shutil.copy(os.path.join(saved[1], name), os.path.join(str(model_dir), name))
    changed, *_ = backends.load_backend(str(model_dir), 'onnxruntime', exported=exported)
    assert len(exported) == 2
    assert [n for n in os.listdir(cache) if not n.startswith('.')] == \
        [backends.model_fingerprint(str(model_dir))] != [old]
    expected, tolerance = reference(model_dir)
    assert float(np.abs(probabilities_of(changed, vocab, tokenizer) - expected).max()) <= \
        tolerance


def test_read_only_model_caches_under_the_user_cache(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv('GLUONBERT_CACHE_DIR', str(tmp_path / 'user-cache'))
    monkeypatch.setattr(runners.os, 'access', lambda path, mode: False)
    assert backends.cache_root(str(model_dir)) == str(tmp_path / 'user-cache' / 'models')
    backends.load_backend(str(model_dir), 'onnxruntime')
    fingerprint = backends.model_fingerprint(str(model_dir))
    assert os.path.isfile(tmp_path / 'user-cache' / 'models' / 'onnx' / fingerprint /
                          'model.onnx')
    assert not os.path.exists(os.path.join(str(model_dir), backends.CACHE_DIR_NAME))


def test_auto_records_its_choice_and_reads_it_back(model_dir, monkeypatch):
    predictor, vocab, tokenizer, said = backends.load_backend(str(model_dir), 'auto')
    assert 'measured now' in said
    record = backends.read_choice(str(model_dir), 'auto')
    measured = {(r['backend'], r['precision']): r for r in record['measured']}
    assert set(measured) == set(backends.candidates(backends.available_backends()))
    assert ('onnxruntime', 'float32') in measured and ('mxnet', 'float32') in measured
    kept = [r for r in record['measured'] if r.get('keeps_answers')]
    fastest = max(kept, key=lambda r: r['texts_per_s'])
    assert (record['choice']['backend'], record['choice']['precision']) == \
        (fastest['backend'], fastest['precision'])
    assert all(r['label_agreement'] >= backends.MIN_AGREEMENT for r in kept)
    assert measured[('mxnet', 'float32')]['label_agreement'] == 1.0
    from gluonbert import __version__
    from gluonbert.hardware import cpu_info
    assert record['gluonbert'] == __version__ and record['cpu'] == cpu_info().describe()

    def no_measure(*args, **kwargs):
        raise AssertionError('measured again although a choice is recorded')
    monkeypatch.setattr(choice_module, 'measure', no_measure)
    again, _, _, said = backends.load_backend(str(model_dir), 'auto')
    assert 'as measured before' in said
    assert type(again) is type(predictor)
    expected, _ = reference(model_dir)
    got = probabilities_of(again, vocab, tokenizer)
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    assert agreement == pytest.approx(fastest['label_agreement'], abs=1 / len(TEXTS))

    out = io.StringIO()
    assert info_main(['--model-dir', str(model_dir)], stdout=out) == 0
    text = out.getvalue()
    assert (f"--backend auto runs {record['choice']['backend']} "
            f"{record['choice']['precision']}") in text
    assert 'onnxruntime float32: ' in text and ' texts/s, ' in text
    out = io.StringIO()
    assert info_main(['--json', '--model-dir', str(model_dir)], stdout=out) == 0
    assert json.loads(out.getvalue())['backends']['choice']['choice'] == record['choice']


def hide(monkeypatch, *packages):
    real = runners._import

    def fake(name):
        if name in packages:
            raise ImportError(f'No module named {name!r}', name=name)
        return real(name)
    monkeypatch.setattr(runners, '_import', fake)


def test_a_missing_package_is_one_line_naming_the_extra(model_dir, monkeypatch, capsys):
    hide(monkeypatch, 'openvino')
    assert predict_main(['--model-dir', str(model_dir), '--backend', 'openvino', 'w']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "pip install 'gluonbert[openvino]'" in err
    assert 'openvino package' in err
    with pytest.raises(EnvironmentProblem, match=r"gluonbert\[openvino\]"):
        backends.load_backend(str(model_dir), 'openvino')
    assert backends.available_backends() == ['mxnet', 'onnxruntime']
    hide(monkeypatch, 'onnxruntime', 'openvino')
    assert predict_main(['--model-dir', str(model_dir), '--backend', 'onnxruntime', 'w']) == 2
    assert "pip install 'gluonbert[onnx]'" in capsys.readouterr().err


def test_auto_without_onnx_runtimes_falls_back_to_mxnet(model_dir, monkeypatch):
    hide(monkeypatch, 'onnxruntime', 'openvino')
    predictor, *_ = backends.load_backend(str(model_dir), 'auto')
    assert not hasattr(predictor, 'run_padded')  # an MXNet block
    record = backends.read_choice(str(model_dir), 'auto')
    assert record['choice']['backend'] == 'mxnet'
    assert {r['backend'] for r in record['measured']} == {'mxnet'}
    report = backends.backend_report(str(model_dir))
    assert report['auto'].startswith('mxnet only') and "gluonbert[onnx]" in report['auto']
    assert report['backends']['onnxruntime'].startswith('no: ')


def test_predict_main_onnxruntime_prints_mxnets_answers(model_dir, capsys):
    answers = {}
    for backend in ('mxnet', 'onnxruntime'):
        assert predict_main(['--model-dir', str(model_dir), '--backend', backend,
                             *TEXTS]) == 0
        captured = capsys.readouterr()
        answers[backend] = [json.loads(line) for line in captured.out.splitlines()]
        if backend == 'onnxruntime':
            assert captured.err == 'gluonbert-predict: --backend onnxruntime: onnxruntime ' \
                                   'float32\n'
    _, tolerance = reference(model_dir)
    assert len(answers['mxnet']) == len(answers['onnxruntime']) == len(TEXTS)
    for mx_answer, ort_answer in zip(answers['mxnet'], answers['onnxruntime']):
        assert ort_answer['text'] == mx_answer['text']
        assert ort_answer['label'] == mx_answer['label']
        assert max(abs(ort_answer['probabilities'][n] - mx_answer['probabilities'][n])
                   for n in LABELS) <= tolerance + 2 * JSON_ROUNDING


def test_backend_flags_that_do_not_combine(model_dir, capsys):
    assert predict_main(['--model-dir', str(model_dir), '--backend', 'onnxruntime',
                         '--dtype', 'bfloat16', 'w']) == 2
    assert '--backend onnxruntime runs on the CPU at its own precision' in \
        capsys.readouterr().err
