"""One suite for every task model in the registry (``gluonbert.model.TASK_MODELS``), as
Hugging Face's ModelTesterMixin runs for every ``BertFor*`` class: hybridized equals
imperative, the model directory round trip, every trainable parameter gets a gradient,
LoRA applied and merged (and its adapter round trip for labelled tasks), export taken or
refused in one line. A new head needs a recipe below, or the first test fails."""
import os

import numpy as np
import mxnet as mx
import pytest

import gluonbert
from conftest import FLOAT32_EPS, assert_close, make_batch
from gluonbert.cli import export_main
from gluonbert.lora import apply_lora, load_lora, merge_lora, save_lora, save_lora_base
from gluonbert.model import TASK_MODELS, ClassifierInfo, TaskModel
from gluonbert.tokenizer import BERTTokenizer, Vocab

LABELS = ['neg', 'neu', 'pos']


def _labelled(cls):
    # calibration texts: what export checks the reloaded file on
    info = ClassifierInfo(LABELS, max_len=10, calibration_texts=['w1 w2 w3', 'w4 w5 w6 w7'])
    return lambda bert: cls(bert, num_classes=3, dropout=0.0, info=info)


# How to build each task model, and what its outputs are for a (3, 10) batch.
RECIPES = {
    'BERTClassifier': (_labelled(gluonbert.BERTClassifier), [(3, 3)]),
    'BERTForTokenClassification': (_labelled(gluonbert.BERTForTokenClassification),
                                   [(3, 10, 3)]),
    'BERTForPretraining': (lambda bert: gluonbert.BERTForPretraining(bert=bert),
                           [(3, 10, 32), (3, 32), (3, 3, 99), (3, 2)]),
}
NAMES = sorted(RECIPES)


def _inputs(model):
    words, segments, valid_length = make_batch()
    if model.task == 'pretraining':
        return words, segments, valid_length, mx.nd.array([[1, 2, 3], [0, 6, 1], [2, 0, 1]])
    return words, segments, valid_length


def _outputs(model, inputs):
    out = model(*inputs)
    return [o.asnumpy() for o in (out if isinstance(out, (list, tuple)) else [out])]


def _build(name, seed=0):
    mx.random.seed(seed)
    config = gluonbert.BERTConfig.from_preset('tiny', dropout=0.0, attention_dropout=0.0)
    model = RECIPES[name][0](gluonbert.BERTModel(config))
    model.initialize(mx.init.Normal(0.2))
    return model


def _vocabulary():
    vocab = Vocab(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + [f'w{i}' for i in range(94)])
    return vocab, BERTTokenizer(vocab)


def test_every_task_model_has_a_recipe():
    assert set(TASK_MODELS) == set(RECIPES)
    assert all(issubclass(cls, TaskModel) and cls.task for cls in TASK_MODELS.values())


@pytest.mark.parametrize('name', NAMES)
def test_outputs_and_hybridized_equals_imperative(name):
    model = _build(name)
    inputs = _inputs(model)
    imperative = _outputs(model, inputs)
    assert [o.shape for o in imperative] == RECIPES[name][1]
    model.hybridize(static_alloc=True)
    for _ in range(2):  # the trace, then the cached graph
        for a, b in zip(_outputs(model, inputs), imperative):
            assert_close(a, b, rtol=64 * FLOAT32_EPS, name=name)


@pytest.mark.parametrize('name', NAMES)
def test_bad_inputs_are_refused_before_the_forward_pass(name):
    model = _build(name)
    words, segments, valid_length, *rest = _inputs(model)
    with pytest.raises(ValueError, match='word ids must be in'):
        model(words + 1000, segments, valid_length, *rest)
    model.hybridize()
    with pytest.raises(ValueError, match='valid_length values must be in'):
        model(words, segments, valid_length * 0, *rest)


@pytest.mark.parametrize('name', NAMES)
def test_model_directory_round_trip(name, tmp_path):
    model = _build(name)
    inputs = _inputs(model)
    vocab, tokenizer = _vocabulary()
    gluonbert.save_pretrained(model, vocab, tokenizer, str(tmp_path / 'model'))
    loaded, _, _ = gluonbert.load_pretrained(str(tmp_path / 'model'))
    assert type(loaded) is type(model) and loaded.label_names == model.label_names
    assert loaded.info == model.info
    for a, b in zip(_outputs(loaded, inputs), _outputs(model, inputs)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize('name', NAMES)
def test_every_trainable_parameter_gets_a_gradient(name):
    model = _build(name)
    inputs = _inputs(model)
    with mx.autograd.record():
        out = model(*inputs)
        loss = sum(o.sum() for o in (out if isinstance(out, (list, tuple)) else [out]))
    loss.backward()
    trainable = {n: p for n, p in model.collect_params().items() if p.grad_req != 'null'}
    assert len(trainable) > 10
    without = [n for n, p in trainable.items() if not np.abs(p.grad().asnumpy()).sum() > 0]
    assert without == []


@pytest.mark.parametrize('name', NAMES)
def test_lora_applies_and_merges(name, tmp_path):
    model = _build(name)
    inputs = _inputs(model)
    before = _outputs(model, inputs)
    counts = apply_lora(model, rank=2, targets=('query', 'value'))
    assert counts.lora > 0 and counts.trainable < counts.total
    for a, b in zip(_outputs(model, inputs), before):  # B starts at zero: the same function
        assert_close(a, b, rtol=64 * FLOAT32_EPS, name='LoRA at zero')
    rng = np.random.RandomState(0)
    for n, p in model.collect_params().items():
        if n.endswith('lora_b'):
            p.set_data(mx.nd.array(rng.normal(0, 0.5, p.shape)))
    adapted = _outputs(model, inputs)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(adapted, before))
    if model.info is None:  # an adapter records labels: a task without them has none
        with pytest.raises(TypeError, match='labelled task model'):
            save_lora(model, str(tmp_path / 'adapter'))
    else:
        vocab, tokenizer = _vocabulary()
        base = save_lora_base(model, vocab, tokenizer, str(tmp_path / 'base'))
        save_lora(model, str(tmp_path / 'adapter'), base_model=base)
        loaded, _, _ = load_lora(str(tmp_path / 'adapter'))
        assert type(loaded) is type(model) and loaded.label_names == LABELS
        for a, b in zip(_outputs(loaded, inputs), adapted):
            assert_close(a, b, rtol=64 * FLOAT32_EPS, name='adapter round trip')
    merge_lora(model)
    for a, b in zip(_outputs(model, inputs), adapted):
        assert_close(a, b, rtol=64 * FLOAT32_EPS, name='merged')


@pytest.mark.parametrize('name', NAMES)
def test_export_takes_sentence_classifiers_and_refuses_the_rest(name, tmp_path, capsys):
    model = _build(name)
    vocab, tokenizer = _vocabulary()
    directory = str(tmp_path / 'model')
    gluonbert.save_pretrained(model, vocab, tokenizer, directory)
    code = export_main(['--model-dir', directory, '--output', str(tmp_path / 'out' / 'x')])
    err = capsys.readouterr().err.strip()
    if model.task == 'sequence_classification':
        assert code == 0 and os.path.exists(tmp_path / 'out' / 'x-symbol.json'), err
    else:
        assert code == 2 and len(err.splitlines()) == 1
        assert f'holds a {name}, not a fine-tuned sentence classifier' in err
