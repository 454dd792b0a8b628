"""Sentiment prediction: ``predict_sentiment`` for one text, ``predict`` for many."""
import dataclasses

import numpy as np
import mxnet as mx

from .model import ClassifierInfo

__all__ = ['Prediction', 'predict_sentiment', 'predict', 'label_names_of', 'info_of',
           'encoder_for', 'max_len_for', 'mxnet_probabilities']


@dataclasses.dataclass
class Prediction:
    """A classifier's answer for one text."""
    text: str
    label: str            # e.g. 'positive' / 'negative', or the dataset's label names
    probability: float    # probability of ``label``
    label_id: int
    probabilities: dict   # label name -> probability

    def to_dict(self):
        return {'text': self.text, 'label': self.label,
                'probability': round(self.probability, 6),
                'probabilities': {k: round(v, 6) for k, v in self.probabilities.items()}}

    def __str__(self):
        return f'{self.label} ({self.probability:.3f})'


def info_of(net):
    """The :class:`~gluonbert.model.ClassifierInfo` of a classifier (a
    :class:`~gluonbert.BERTClassifier` or a converted one); for another block with
    ``num_classes``, the default info (classes named by their ids)."""
    info = getattr(net, 'info', None)
    if isinstance(info, ClassifierInfo):
        return info
    return ClassifierInfo.default(getattr(net, 'num_classes', 2))


def label_names_of(net):
    """The class names a classifier was trained with (its info's)."""
    return list(info_of(net).label_names)


def _check_text(text, index=None):
    where = '' if index is None else f' (item {index})'
    if text is None:
        raise TypeError(f'text{where} is None; expected a non-empty string')
    if not isinstance(text, str):
        raise TypeError(f'text{where} must be a string, got {type(text).__name__}')
    if not text.strip():
        raise ValueError(f'text{where} is empty or whitespace only; nothing to classify')


def encoder_for(net, vocabulary, tokenizer, max_len=None):
    """text -> [CLS] tokens [SEP] ids, truncated as the model was trained (its info's
    ``truncate`` and ``max_len``, unless ``max_len`` is given) so that very long text is
    still predicted."""
    from .data import BERTTransform
    transform = BERTTransform(tokenizer, vocabulary, max_len=max_len_for(net, max_len),
                              truncate=info_of(net).truncate)
    return lambda text: transform(text)[0].tolist()


def max_len_for(net, max_len=None):
    """``max_len``, or the model's training max_len, capped at its position table."""
    if max_len is None:
        max_len = info_of(net).max_len
    config = getattr(net, 'config', None)
    if config is not None:
        max_len = min(max_len, config.max_length)
    if max_len < 3:
        raise ValueError(f'max_len must be at least 3, got {max_len}')
    return max_len


def _run(net, ctx, id_lists, pad_id):
    """Probabilities (len(id_lists), num_classes) for one padded batch. ``net`` is an
    MXNet block, or a classifier run by another backend (:mod:`gluonbert.backends`), which
    takes the padded NumPy batch through its ``run_padded(words, valid_length)``."""
    from .data import pad_ids
    words, valid_length = pad_ids(id_lists, pad_id)
    run_padded = getattr(net, 'run_padded', None)
    if run_padded is not None:
        return run_padded(words, valid_length)
    return mxnet_probabilities(net, ctx, words, valid_length)


def mxnet_probabilities(net, ctx, words, valid_length):
    """Probabilities of an MXNet classifier on one padded NumPy batch (``words`` ``(B, L)``
    ids, ``valid_length`` ``(B,)``), float32 softmax whatever the block computes in."""
    words, valid_length = mx.nd.array(words, ctx=ctx), mx.nd.array(valid_length, ctx=ctx)
    logits = net(words, mx.nd.zeros_like(words), valid_length)
    return mx.nd.softmax(logits.astype('float32'), axis=-1).asnumpy()


def _prediction(text, probabilities, names):
    label_id = int(np.argmax(probabilities))
    return Prediction(text=text, label=names[label_id],
                      probability=float(probabilities[label_id]), label_id=label_id,
                      probabilities={n: float(p) for n, p in zip(names, probabilities)})


def predict_sentiment(net, ctx, vocabulary, tokenizer, sentence, max_len=None):
    """Classify one text; the seed tutorial's call.

    Returns
    -------
    Prediction
        ``.label`` (``'positive'``/``'negative'`` or the model's label names) and
        ``.probability``.
    """
    _check_text(sentence)
    names = label_names_of(net)
    ids = encoder_for(net, vocabulary, tokenizer, max_len)(sentence)
    return _prediction(sentence, _run(net, ctx, [ids], vocabulary.pad_id)[0], names)


def predict(net, ctx, vocabulary, tokenizer, texts, batch_size=32, max_len=None):
    """Classify many texts, batching texts of similar length together.

    Returns a list of :class:`Prediction` in the order of ``texts``; identical to calling
    :func:`predict_sentiment` on each.
    """
    if isinstance(texts, str):
        raise TypeError('texts must be a list of strings; use predict_sentiment for one text')
    texts = list(texts)
    if not texts:
        return []
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    for index, text in enumerate(texts):
        _check_text(text, index)
    names = label_names_of(net)
    encode = encoder_for(net, vocabulary, tokenizer, max_len)
    encoded = [encode(text) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        probabilities = _run(net, ctx, [encoded[i] for i in chunk], vocabulary.pad_id)
        for i, row in zip(chunk, probabilities):
            results[i] = _prediction(texts[i], row, names)
    return results
