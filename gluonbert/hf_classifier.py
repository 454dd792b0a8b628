"""Hugging Face sentence classifiers: a fine-tuned ``BertForSequenceClassification``
directory (config.json with ``id2label``, model.safetensors or pytorch_model.bin with the
encoder under ``bert.*`` and ``classifier.weight``/``classifier.bias``, vocab.txt,
tokenizer_config.json), read as a :class:`~gluonbert.model.BERTClassifier` whose
predictions equal transformers'. Whoever wrote the directory (transformers'
``save_pretrained``, ``gluonbert-export --format hf``, a script with safetensors), it is
read the same way.

Before anything is built: config.json's fields (the encoder's, as
:func:`~gluonbert.hf_checkpoint.read_hf_config` checks them, and the head's: ``id2label``
keyed ``"0"``..``"n-1"`` with distinct non-empty names, ``label2id`` its inverse,
``num_labels``, ``problem_type`` single-label, ``classifier_dropout``), the tensors'
dtypes and shapes from the safetensors header (the head's against ``id2label`` and
``hidden_size``), vocab.txt, tokenizer_config.json's ``model_max_length``. Each problem is
one line naming the file and what was expected.

The :class:`~gluonbert.model.ClassifierInfo`: label names from ``id2label``; max_len
from ``model_max_length``, capped at ``max_position_embeddings`` (128 where the tokenizer
says "no limit", as Hugging Face writes 1e30); truncation 'head' (what BertTokenizer does
to one text); single texts (``text_pair`` False: a config does not say whether the model
was trained on pairs; set ``net.info = net.info_with(text_pair=True)`` if it was).
"""
import dataclasses
import os

import mxnet as mx

from .convert import assign_parameters
from .hf_checkpoint import (SEQUENCE_CLASSIFIER, check_hf_header, head_tensors,
                            hf_architecture, load_hf_checkpoint, read_hf_config,
                            read_hf_vocabulary, read_hf_weights)
from .model import BERTClassifier, BERTModel, ClassifierInfo
from .model_files import PretrainedError
from .schema import Fields, load_json

__all__ = ['load_hf_classifier', 'load_hf_directory', 'read_hf_head', 'read_hf_max_len',
           'require_hf_sentence_classifier', 'start_head_from', 'HFHead',
           'DEFAULT_MAX_LEN']

DEFAULT_MAX_LEN = 128  # where the tokenizer sets no limit
_NO_LIMIT = 10 ** 12   # Hugging Face writes int(1e30) for "no limit"
_MAX_LABELS = 100_000
_HINT = 'fix config.json, or use the one the model came with'


@dataclasses.dataclass(frozen=True)
class HFHead:
    """What config.json says of a sentence classifier's head."""
    label_names: list
    dropout: float


def _fields(path, what='config', hint=_HINT):
    return Fields(load_json(path, what, PretrainedError), path, what, PretrainedError, hint)


def read_hf_head(config_path):
    """The :class:`HFHead` of a ``BertForSequenceClassification`` config.json, checked:
    ``problem_type`` absent, null or ``single_label_classification``; ``id2label`` keyed
    ``"0"``..``"n-1"`` exactly, its names distinct and non-empty (absent: ``num_labels``,
    default 2, classes named ``LABEL_0``.. as transformers names them); ``num_labels`` and
    ``label2id`` (where present) agreeing with it; at least 2 classes (1 is a regression
    head); ``classifier_dropout`` (default ``hidden_dropout_prob``) in [0, 1)."""
    fields = _fields(config_path)
    problem = fields.get('problem_type', str, default=None, nullable=True)
    if problem not in (None, 'single_label_classification'):
        raise PretrainedError(f'{config_path}: problem_type {problem!r} is not supported; '
                              f'gluonbert loads single-label classifiers '
                              f'(single_label_classification: a softmax over id2label)')
    num_labels = fields.get('num_labels', int, default=None, low=1, high=_MAX_LABELS)
    id2label = fields.object('id2label', default=None)
    if id2label is None:
        names = [f'LABEL_{i}' for i in range(2 if num_labels is None else num_labels)]
    else:
        names = _id2label_names(fields, id2label)
        if num_labels is not None and num_labels != len(names):
            fields.fail('num_labels', f'{len(names)} (id2label has {len(names)} labels)',
                        num_labels)
    if not names:
        fields.fail('id2label', 'the names of at least 2 classes', {})
    if len(names) < 2:
        raise PretrainedError(f'{config_path}: id2label has 1 label: a regression head '
                              f'(transformers\' problem_type regression); gluonbert loads '
                              f'classifiers of at least 2 classes')
    label2id = fields.object('label2id', default=None)
    if label2id is not None:
        if sorted(label2id.obj) != sorted(names):
            fields.fail('label2id', f'the inverse of id2label (keys {", ".join(names)})',
                        sorted(label2id.obj))
        for index, name in enumerate(names):
            label2id.get(name, int, low=index, high=index)
    dropout = fields.get('classifier_dropout', float, default=None, nullable=True,
                         low=0.0, high=1.0)
    if dropout is None:
        dropout = fields.get('hidden_dropout_prob', float, default=0.1, low=0.0, high=1.0)
    if dropout == 1.0:
        fields.fail('classifier_dropout', 'in [0, 1)', dropout)
    return HFHead(names, dropout)


def _id2label_names(fields, id2label):
    """The label names of ``id2label`` (a :class:`Fields`) in class id order, checked."""
    count = len(id2label.obj)
    expected = [str(i) for i in range(count)]
    if count > _MAX_LABELS or sorted(id2label.obj) != sorted(expected):
        fields.fail('id2label', f'keyed by the class ids "0".."{count - 1}" exactly',
                    sorted(id2label.obj, key=lambda k: (len(k), k)))
    names = [id2label.get(key, str, low=1) for key in expected]
    if len(set(names)) != len(names):
        repeated = next(n for n in names if names.count(n) > 1)
        fields.fail('id2label', f'distinct label names ({repeated!r} is there twice)',
                    id2label.obj)
    return names


def read_hf_max_len(directory, config):
    """max_len from tokenizer_config.json's ``model_max_length`` (an integer of at least 3),
    capped at the position table (``config.max_length``); :data:`DEFAULT_MAX_LEN` (capped
    too) where the file or the field is absent or says "no limit" (at least 1e12: Hugging
    Face writes 1e30)."""
    path = os.path.join(directory, 'tokenizer_config.json')
    default = min(DEFAULT_MAX_LEN, config.max_length)
    if not os.path.exists(path):
        return default
    fields = _fields(path, 'tokenizer settings', 'fix tokenizer_config.json')
    raw = fields.obj.get('model_max_length')
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= _NO_LIMIT:
        return default  # an integer too large for a float is no limit as well
    value = fields.get('model_max_length', float, default=None, nullable=True)
    if value is None or value >= _NO_LIMIT:
        return default
    if value != int(value) or value < 3:
        fields.fail('model_max_length', 'an integer of at least 3 (tokens, [CLS] and [SEP] '
                    'included), or 1e30 for no limit', raw)
    return min(int(value), config.max_length)


def _check_head_shapes(shapes, head, config, tensors_path, config_path):
    """Refuse a missing head tensor, or one whose shape is not id2label's class count by
    hidden_size (``shapes``: ``{HF name: shape}``)."""
    count, units = len(head.label_names), config.units
    expected = {'classifier.weight': (count, units), 'classifier.bias': (count,)}
    why = (f'id2label in {config_path} has {count} labels; hidden_size is {units}')
    for name, want in expected.items():
        shape = shapes.get(name, shapes.get(f'bert.{name}'))
        shown = 'x'.join(map(str, want))
        if shape is None:
            raise PretrainedError(f'{tensors_path}: no tensor {name}; a {SEQUENCE_CLASSIFIER} '
                                  f'has one of shape {shown} ({why})')
        if tuple(shape) != want:
            raise PretrainedError(f'{tensors_path}: {name} is {"x".join(map(str, shape))}, '
                                  f'expected {shown} ({why})')


def load_hf_classifier(directory, ctx=None):
    """``(BERTClassifier, vocab, tokenizer)`` of a ``BertForSequenceClassification``
    directory, every file checked before anything is built (see the module)."""
    config_path = os.path.join(directory, 'config.json')
    config = read_hf_config(config_path)
    head = read_hf_head(config_path)
    heads = head_tensors(SEQUENCE_CLASSIFIER)
    tensors_path, shapes = check_hf_header(directory, config, heads)
    if shapes is not None:
        _check_head_shapes(shapes, head, config, tensors_path, config_path)
    vocab, tokenizer = read_hf_vocabulary(directory, config)
    info = ClassifierInfo(head.label_names, max_len=read_hf_max_len(directory, config))
    mapped, hf_names = read_hf_weights(tensors_path, config, heads=heads,
                                       checked=shapes is not None)
    if shapes is None:  # a PyTorch pickle: its shapes are known now
        _check_head_shapes({hf_names[n]: v.shape for n, v in mapped.items()}, head, config,
                           tensors_path, config_path)
    net = BERTClassifier(BERTModel(config), num_classes=len(head.label_names),
                         dropout=head.dropout, info=info)
    assign_parameters(net, mapped, source=tensors_path, source_names=hf_names,
                      ctx=mx.cpu() if ctx is None else ctx)
    return net, vocab, tokenizer


def load_hf_directory(directory, *, ctx=None, with_heads=False):
    """What :func:`gluonbert.load_pretrained` returns for a Hugging Face directory: a
    ``BertForSequenceClassification`` as a :class:`BERTClassifier`
    (:func:`load_hf_classifier`; ``with_heads`` does not apply), any other BERT as its
    encoder (:func:`~gluonbert.hf_checkpoint.load_hf_checkpoint`)."""
    if hf_architecture(os.path.join(directory, 'config.json')) == SEQUENCE_CLASSIFIER:
        return load_hf_classifier(directory, ctx=ctx)
    return load_hf_checkpoint(directory, ctx=ctx, with_heads=with_heads)


def require_hf_sentence_classifier(directory):
    """Refuse, in one line and before any weight is read, a Hugging Face directory that is
    not a ``BertForSequenceClassification`` (for the commands that take a classifier)."""
    config_path = os.path.join(directory, 'config.json')
    architecture = hf_architecture(config_path)
    if architecture != SEQUENCE_CLASSIFIER:
        what = f'a {architecture}' if architecture else 'no architecture (an encoder)'
        raise PretrainedError(f'{config_path}: architectures names {what}, not a sentence '
                              f'classifier; gluonbert-predict, -evaluate and -export take '
                              f'{SEQUENCE_CLASSIFIER} directories (or gluonbert-finetune '
                              f'output)')


def start_head_from(net, source):
    """Start the head of ``net`` (a new :class:`BERTClassifier` on ``source``'s encoder)
    from ``source``'s, when ``source`` is a sentence classifier with the same label names
    in the same order: fine-tuning continues from it. Returns the line that says what was
    done (None when ``source`` has no classifier head: an encoder)."""
    if getattr(source, 'task', None) != 'sequence_classification':
        return None
    if source.label_names != net.label_names:
        return (f'note: the model\'s classifier has labels {", ".join(source.label_names)}, '
                f'the data {", ".join(net.label_names)}: a fresh classifier is trained on '
                f'its encoder')
    for mine, theirs in zip(net.classifier[1].collect_params().values(),
                            source.classifier[1].collect_params().values()):
        mine.set_data(theirs.data(theirs.list_ctx()[0]))
    return (f'continuing from the model\'s classifier (labels '
            f'{", ".join(net.label_names)}, as the data\'s)')
