"""gluonbert-export --format onnx, through the console command in-process: the file runs in
onnxruntime with gluonbert's answers, has the Hugging Face/Optimum inputs, and carries its
tokenizer and label files; bad cases are one line and leave nothing behind."""
import builtins
import json
import os

import mxnet as mx
import numpy as np
import pytest

from conftest import assert_close
from export_models import LABELS, MAX_LEN, TEXTS, other_heads, \
    save_classifier, tiny_classifier
from gluonbert.cli.export import export_main
from gluonbert.hf_export import encode_inputs, gluonbert_logits, softmax

onnx = pytest.importorskip('onnx', reason="the onnx extra is not installed "
                                          "(pip install 'gluonbert[onnx]')")
ort = pytest.importorskip('onnxruntime', reason='the onnx extra is not installed')


@pytest.fixture(scope='module')
def model_dir(classifier, vocabulary, tmp_path_factory):
    return save_classifier(classifier, *vocabulary, tmp_path_factory.mktemp('m') / 'model')


@pytest.fixture(scope='module')
def exported(model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('onnx') / 'exported')
    assert export_main(['--model-dir', model_dir, '--output', out, '--format', 'onnx']) == 0
    return out


def session(directory, name='model.onnx'):
    return ort.InferenceSession(os.path.join(directory, name),
                                providers=['CPUExecutionProvider'])


def padded(inputs, length):
    """``inputs`` padded with more [PAD] positions (attention_mask 0) up to ``length``."""
    extra = length - inputs['input_ids'].shape[1]
    return {k: np.pad(v, ((0, 0), (0, extra))) for k, v in inputs.items()}


@pytest.mark.parametrize('rows', [slice(0, 1), slice(2, 7)])  # batch 1 and batch 5
def test_onnx_runs_as_gluonbert_at_two_batches_and_lengths(exported, classifier, vocabulary,
                                                           rows):
    texts = TEXTS[rows]
    inputs = encode_inputs(classifier, *vocabulary, texts)
    run = session(exported)
    for length in (inputs['input_ids'].shape[1], MAX_LEN + 8):
        batch = padded(inputs, length)
        expected = gluonbert_logits(classifier, batch)
        logits = run.run(['logits'], batch)[0]
        assert logits.shape == (len(texts), len(LABELS)) and logits.dtype == np.float32
        # float32 rounding of a 2-layer model: ~1e-6 of the logits; a wrong weight, mask or
        # activation moves them by a good part of themselves. Probabilities lie in [0, 1],
        # so 1e-4 of their largest value is at most 1e-4.
        assert_close(logits, expected, rtol=1e-5, name='logits')
        assert_close(softmax(logits), softmax(expected), rtol=1e-4, name='probabilities')
    if len(texts) > 1:  # the model's answers depend on the text: the comparison means it
        assert np.ptp(softmax(expected), axis=0).max() > 0.1


def test_onnx_graph_has_the_optimum_inputs_and_outputs(exported):
    model = onnx.load(os.path.join(exported, 'model.onnx'))
    onnx.checker.check_model(model)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ['input_ids', 'attention_mask', 'token_type_ids']
    for tensor in inputs.values():
        assert tensor.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor.shape.dim] == ['batch', 'sequence']
        assert all(not d.HasField('dim_value') for d in tensor.shape.dim)
    (output,) = model.graph.output
    dims = output.type.tensor_type.shape.dim
    assert output.name == 'logits' and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert (dims[0].dim_param, dims[1].dim_value) == ('batch', len(LABELS))
    assert max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')) == 17


def test_onnx_directory_names_labels_and_tokenizer(exported, vocabulary):
    vocab, tokenizer = vocabulary
    assert sorted(os.listdir(exported)) == ['config.json', 'model.onnx',
                                            'special_tokens_map.json',
                                            'tokenizer_config.json', 'vocab.txt']
    config = json.load(open(os.path.join(exported, 'config.json'), encoding='utf-8'))
    assert config['id2label'] == {str(i): n for i, n in enumerate(LABELS)}
    assert config['label2id'] == {n: i for i, n in enumerate(LABELS)}
    settings = json.load(open(os.path.join(exported, 'tokenizer_config.json'), encoding='utf-8'))
    assert (settings['do_lower_case'], settings['model_max_length']) == (tokenizer.lower,
                                                                         MAX_LEN)
    with open(os.path.join(exported, 'vocab.txt'), encoding='utf-8') as f:
        assert f.read().splitlines() == list(vocab.idx_to_token)


def test_onnx_check_is_reported(model_dir, tmp_path, capsys):
    out = str(tmp_path / 'gelu')
    assert export_main(['--model-dir', model_dir, '--output', out, '--format', 'onnx']) == 0
    said = capsys.readouterr().out
    assert f'exported {model_dir} to {out}' in said
    assert 'ran in onnxruntime: max |logit diff|' in said and f'on {len(TEXTS)} texts' in said


@pytest.mark.parametrize('config', [dict(activation='gelu_tanh'),
                                    dict(activation='relu', position_embedding='sinusoidal'),
                                    dict(type_vocab_size=3)])
def test_onnx_other_configs_and_a_pair_model(vocabulary, tmp_path, config):
    """The tanh GELU, ReLU with a sinusoidal position table, a pair model with three
    segment types: each equal to gluonbert on the pairs (or texts) of its task."""
    pair = 'type_vocab_size' in config
    net = tiny_classifier(*vocabulary, text_pair=pair, **config)
    directory = save_classifier(net, *vocabulary, tmp_path / 'model')
    out = str(tmp_path / 'out')
    assert export_main(['--model-dir', directory, '--output', out, '--format', 'onnx']) == 0
    inputs = encode_inputs(net, *vocabulary, net.info.calibration_texts)
    if pair:
        assert inputs['token_type_ids'].max() == 1
        inputs['token_type_ids'][:, 1] = 2  # the third segment embedding is exported too
    expected = gluonbert_logits(net, inputs)
    got = session(out).run(['logits'], inputs)[0]
    assert_close(got, expected, rtol=1e-5, name='logits')


def test_onnx_int8_is_measured_against_float32(model_dir, tmp_path, capsys):
    out = str(tmp_path / 'int8')
    assert export_main(['--model-dir', model_dir, '--output', out, '--format', 'onnx',
                        '--dtype', 'int8']) == 0
    assert 'model_int8.onnx: same label as float32 on' in capsys.readouterr().out
    names = {n.op_type for n in onnx.load(os.path.join(out, 'model_int8.onnx')).graph.node}
    assert 'DynamicQuantizeLinear' in names or 'MatMulInteger' in names
    assert session(out, 'model_int8.onnx').run(['logits'], encode_inputs(
        *_loaded(model_dir), TEXTS[:2]))[0].shape == (2, len(LABELS))


def _loaded(model_dir):
    from gluonbert.model_dir import load_classifier
    return load_classifier(model_dir)


def test_a_failed_check_is_one_line_and_leaves_no_file(model_dir, tmp_path, capsys,
                                                       monkeypatch):
    from gluonbert import onnx_export
    real = onnx_export.run_onnx
    monkeypatch.setattr(onnx_export, 'run_onnx', lambda path, inputs: real(path, inputs) +
                        np.float32(1e-3))  # a graph 1e-3 off: beyond 1e-4 of logits ~3
    out = tmp_path / 'off'
    assert export_main(['--model-dir', model_dir, '--output', str(out), '--format', 'onnx']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('gluonbert-export: error: onnxruntime computes logits') and \
        'the export was not written' in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []  # neither the directory nor its staging


@pytest.mark.parametrize('missing', ['onnx', 'onnxruntime'])
def test_missing_onnx_packages_say_what_to_install(model_dir, tmp_path, capsys, monkeypatch,
                                                   missing):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == missing or name.startswith(missing + '.'):
            raise ImportError(f'No module named {missing!r}', name=missing)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', without)
    out = tmp_path / 'x'
    assert export_main(['--model-dir', model_dir, '--output', str(out), '--format', 'onnx']) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"gluonbert-export: error: --format onnx needs the onnx and onnxruntime "
                   f"packages ({missing} is missing): pip install 'gluonbert[onnx]' (onnx and "
                   f"onnxruntime)")
    assert not out.exists()


def test_an_adapter_is_merged_first(vocabulary, tmp_path):
    from gluonbert.lora import apply_lora, save_lora, save_lora_base
    vocab, tokenizer = vocabulary
    net = tiny_classifier(vocab, tokenizer, seed=1)
    save_lora_base(net, vocab, tokenizer, str(tmp_path / 'base'))
    apply_lora(net, rank=2, alpha=4, targets=('query', 'value'))
    for name, param in net.collect_params().items():
        if 'lora' in name:  # B starts at zero: give the update a size
            param.set_data(mx.nd.random.normal(scale=0.3, shape=param.shape))
    inputs = encode_inputs(net, vocab, tokenizer, TEXTS)
    expected = gluonbert_logits(net, inputs)
    adapter = save_lora(net, str(tmp_path / 'adapter'), base_model=str(tmp_path / 'base'))
    texts = tmp_path / 'texts.txt'
    texts.write_text('\n'.join(TEXTS) + '\n', encoding='utf-8')
    out = str(tmp_path / 'out')
    assert export_main(['--model-dir', adapter, '--output', out, '--format', 'onnx',
                        '--calib-file', str(texts)]) == 0
    got = session(out).run(['logits'], inputs)[0]
    assert_close(got, expected, rtol=1e-5, name='logits of the adapted model')



@pytest.mark.parametrize('kind', ['BERTForTokenClassification', 'BERTForPretraining',
                                  'BERTModel'])
def test_other_heads_are_refused_in_one_line(vocabulary, tmp_path, capsys, kind):
    directory = other_heads(*vocabulary, tmp_path, kind)
    assert export_main(['--model-dir', directory, '--output', str(tmp_path / 'out'),
                        '--format', 'onnx']) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f'gluonbert-export: error: {directory} holds a {kind}, not a fine-tuned '
                   f'sentence classifier (export and predict take those only)')
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('flags, message', [
    (['--dtype', 'bfloat16'], '--format onnx writes float32 or int8; drop --dtype bfloat16'),
    (['--fast'], '--format onnx writes float32 or int8; drop --fast'),
])
def test_onnx_flag_errors_are_one_line(model_dir, tmp_path, capsys, flags, message):
    assert export_main(['--model-dir', model_dir, '--output', str(tmp_path / 'o'),
                        '--format', 'onnx', *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('gluonbert-export: error: ') and message in err
    assert len(err.splitlines()) == 1


def test_a_used_output_directory_is_refused(model_dir, tmp_path, capsys):
    (tmp_path / 'used').mkdir()
    (tmp_path / 'used' / 'notes.txt').write_text('mine')
    assert export_main(['--model-dir', model_dir, '--output', str(tmp_path / 'used'),
                        '--format', 'onnx']) == 2
    assert 'exists and is not an empty directory' in capsys.readouterr().err
    assert os.listdir(tmp_path / 'used') == ['notes.txt']
