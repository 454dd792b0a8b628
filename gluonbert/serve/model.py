"""The classifier a server runs: inputs encoded as ``gluonbert-predict`` encodes them (the
model's ClassifierInfo: max_len, truncation, pairs), padded batches to float32 logits and
probabilities (MXNet's softmax, as :func:`gluonbert.predict` computes them).

A :class:`ServedModel` belongs to one thread: the inference worker that loaded it
(MXNet's cached graph is not shared across threads). :meth:`ServedModel.encode` only
reads the vocabulary and the tokenizer and may run on any thread.
"""
import mxnet as mx
import numpy as np

from ..data import BERTTransform, pad_ids
from ..predict import info_of, max_len_for

__all__ = ['ServedModel']


class ServedModel:
    """``net`` (a BERTClassifier or a converted one) with its vocabulary and tokenizer.

    Parameters
    ----------
    net, vocab, tokenizer
        As :func:`gluonbert.model_dir.load_classifier` returns them (``net`` perhaps
        converted by :func:`gluonbert.fast.prepare`).
    ctx : mxnet.Context
    description : dict
        What ``GET /info`` says of how it computes (dtype, kernels, backend).
    """

    def __init__(self, net, vocab, tokenizer, ctx, description):
        self.net, self.vocab, self.ctx = net, vocab, ctx
        self.info = info_of(net)
        self.max_len = max_len_for(net)
        self.labels = list(self.info.label_names)
        self.text_pair = self.info.text_pair
        self.description = dict(description)
        self._transform = BERTTransform(tokenizer, vocab, max_len=self.max_len,
                                        truncate=self.info.truncate, pair=self.text_pair)

    def encode(self, items):
        """``[(ids, segments), ...]`` (int32 arrays) of texts or ``(text, pair)`` tuples."""
        out = []
        for item in items:
            ids, _, segments = self._transform(item)
            out.append((ids, segments))
        return out

    def run(self, encoded):
        """``(logits, probabilities)``: float32 ``(len(encoded), num_classes)`` arrays of
        one padded batch of :meth:`encode`'s outputs."""
        words, valid_length = pad_ids([ids for ids, _ in encoded], self.vocab.pad_id)
        segments, _ = pad_ids([seg for _, seg in encoded], 0)
        ctx = self.ctx
        logits = self.net(mx.nd.array(words, ctx=ctx), mx.nd.array(segments, ctx=ctx),
                          mx.nd.array(valid_length, ctx=ctx)).astype('float32')
        probabilities = mx.nd.softmax(logits, axis=-1)
        return logits.asnumpy(), probabilities.asnumpy()

    def warm_up(self, batch_size, tokens):
        """Run the shapes a server meets first: one short text, and a full batch of
        ``batch_size`` texts of the model's max_len (within ``tokens`` padded tokens), so
        that the first requests do not pay for graph building and memory planning."""
        cls_id, sep_id = self.vocab.cls_id, self.vocab.sep_id
        filler = self.vocab[self.vocab.unknown_token]
        rows = max(1, min(batch_size, tokens // self.max_len))
        for count, length in ((1, 8), (rows, self.max_len)):
            length = min(length, self.max_len)
            ids = np.array([cls_id] + [filler] * (length - 2) + [sep_id], dtype=np.int32)
            segments = np.zeros(length, dtype=np.int32)
            if self.text_pair:
                segments[length // 2:] = 1
            self.run([(ids, segments)] * count)

    def describe(self):
        """``GET /info``'s model part."""
        return {'labels': self.labels, 'max_len': self.max_len,
                'truncation': self.info.truncate, 'text_pair': self.text_pair,
                **self.description}
