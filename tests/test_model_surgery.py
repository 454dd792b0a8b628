"""Model surgery the commands ask of the library: initialise what a checkpoint did not
provide (gluonbert.params.initialize_missing), and a LoRA model's settings and frozen base
(gluonbert.lora.lora_settings, normalise_targets, save_lora_base)."""
import mxnet as mx
import numpy as np
import pytest

import gluonbert
from gluonbert.lora import (apply_lora, base_parameters, lora_settings, normalise_targets,
                            save_lora_base)
from gluonbert.params import initialize_missing, named_parameters


def _tiny_bert(vocab_size=100):
    mx.random.seed(0)
    bert = gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny', vocab_size=vocab_size))
    bert.initialize()
    return bert


def test_initialize_missing_initialises_only_the_new_parameters():
    bert = _tiny_bert()
    before = {name: p.data().asnumpy().copy() for name, p in named_parameters(bert).items()}
    model = gluonbert.BERTForPretraining(bert=bert)  # heads the encoder has no weights for
    fresh = initialize_missing(model, mx.cpu())
    params = named_parameters(model)
    assert fresh and sorted(fresh) == sorted(n for n in params if not n.startswith('bert.'))
    for name, value in before.items():  # the loaded encoder is untouched
        np.testing.assert_array_equal(params[f'bert.{name}'].data().asnumpy(), value)
    assert initialize_missing(model) == []  # nothing left to initialise
    dense = mx.gluon.nn.Dense(3)  # in_units unknown: a deferred initialisation counts
    dense.initialize()
    assert initialize_missing(dense) == []


def test_lora_settings_targets_and_the_saved_base(tmp_path):
    _, vocab, tokenizer = gluonbert.load_pretrained('minilm')
    net = gluonbert.BERTClassifier(_tiny_bert(len(vocab)))
    net.classifier.initialize()
    assert normalise_targets('ffn_1, output,query,query') == ['query', 'out_proj', 'ffn_1']
    with pytest.raises(ValueError, match="unknown LoRA target"):
        normalise_targets('query,bogus')
    apply_lora(net, rank=2, alpha=4, targets='value,query')
    assert lora_settings(net) == (2, 4, 0.0, ['query', 'value'])
    directory = save_lora_base(net, vocab, tokenizer, str(tmp_path / 'base'),
                               extra={'base_model': 'tiny'})
    base, _, _ = gluonbert.load_pretrained(directory)
    assert type(base) is gluonbert.BERTModel  # pylint: disable=unidiomatic-typecheck
    saved = named_parameters(base)
    frozen = base_parameters(net.bert)  # without LoRA's matrices, named as without LoRA
    assert sorted(saved) == sorted(frozen)
    for name, param in frozen.items():
        np.testing.assert_array_equal(saved[name].data().asnumpy(), param.data().asnumpy())
