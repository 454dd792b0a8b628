"""Tiny classifiers on the MiniLM vocabulary (so that Hugging Face's tokenizer sees real
WordPiece text), saved as model directories for the ONNX and Hugging Face export tests."""
import mxnet as mx

import gluonbert
from gluonbert.model import ClassifierInfo
from gluonbert.pretrained import load_vocabulary, save_pretrained
from stand_ins import NEGATIVE, POSITIVE

LABELS = ['negative', 'neutral', 'positive']
MAX_LEN = 24
# accents, capitals, punctuation, digits, a word past the vocabulary, one longer than MAX_LEN
TEXTS = POSITIVE[:3] + NEGATIVE[:3] + [
    'Ça reste UN film très réussi, 10/10!', 'zyxwvut qqq (sic) -- $5.99?',
    ' '.join(['a long and winding review that goes on'] * 6)]
PAIRS = [[a, b] for a, b in zip(POSITIVE, NEGATIVE)] + [[p, p] for p in POSITIVE[:3]]


def minilm_vocabulary():
    return load_vocabulary('minilm')


def tiny_classifier(vocab, tokenizer, *, text_pair=False, activation='gelu', seed=0,
                    **config):
    """A tiny BERTClassifier trained a few steps on its calibration texts (labels cycling
    through LABELS): its answers depend on the input (random weights give every text
    nearly the same [CLS] encoding), so a wrong export shows in them."""
    from gluonbert.hf_export import encode_inputs
    mx.random.seed(seed)
    cfg = gluonbert.BERTConfig.from_preset('tiny', vocab_size=len(vocab), max_length=64,
                                           activation=activation, **config)
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(cfg), num_classes=len(LABELS))
    net.initialize()
    net.info = ClassifierInfo(list(LABELS), max_len=MAX_LEN, text_pair=text_pair,
                              calibration_texts=PAIRS if text_pair else TEXTS)
    inputs = encode_inputs(net, vocab, tokenizer, net.info.calibration_texts)
    words, segments = (mx.nd.array(inputs[k]) for k in ('input_ids', 'token_type_ids'))
    valid_length = mx.nd.array(inputs['attention_mask'].sum(axis=1))
    labels = mx.nd.array([i % len(LABELS) for i in range(words.shape[0])])
    trainer = mx.gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 3e-3})
    loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(40):
        with mx.autograd.record():
            value = loss(net(words, segments, valid_length), labels).mean()
        value.backward()
        trainer.step(1)
    return net


def save_classifier(net, vocab, tokenizer, directory):
    return save_pretrained(net, vocab, tokenizer, str(directory))


def other_heads(vocab, tokenizer, directory, kind):
    """A model directory of ``kind``: a task model other than the sentence classifier, or
    a bare BERTModel."""
    from gluonbert.model import TASK_MODELS
    cfg = gluonbert.BERTConfig.from_preset('tiny', vocab_size=len(vocab), max_length=64)
    bert = gluonbert.BERTModel(cfg)
    if kind == 'BERTModel':
        net = bert
    elif kind == 'BERTForPretraining':
        net = TASK_MODELS[kind](bert=bert)
    else:
        net = TASK_MODELS[kind](bert, num_classes=3)
    net.initialize()
    return save_pretrained(net, vocab, tokenizer, str(directory / kind))
