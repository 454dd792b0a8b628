"""Streaming pre-training data from prepared shards (:class:`ShardedPretrainingData`).

An epoch of one worker: its shards (every ``num_shards``-th one from ``shard_index``) in an
order drawn for the epoch, read one after the other into a shuffle buffer of
``shuffle_buffer`` instances; each draw takes a random instance out of the buffer and puts
the next one read in its place. The instance is then masked for the epoch
(:class:`~gluonbert.data.pretraining.Masker`, keyed by the seed, the epoch and the
instance's number in the split, as :class:`~gluonbert.data.PretrainingData` does), so the
examples of an epoch are those of the in-memory definition, in another order.

Memory holds the buffer and one or two open shards, whatever the corpus size. A position in
the epoch is replayed from the random stream alone (no shard is read for the instances
already drawn), so a resumed run continues where it stopped, bit for bit.
"""
import bisect
import collections
import hashlib
import json

import numpy as np

from ..errors import DataError
from .batching import shard_indices
from .pretraining import Masker, batchify, masking_rng, order_rng
from .shards import SPLITS, Shard, check_vocab, manifest_digest, read_manifest

__all__ = ['ShardedPretrainingData']


class _Shards:
    """Open shards by number, the most recent two kept open; each checked once."""

    def __init__(self, directory, records, vocab_size, keep=2):
        self.directory, self.records, self.vocab_size, self.keep = (directory, records,
                                                                    vocab_size, keep)
        self.open, self.verified = collections.OrderedDict(), set()

    def __getitem__(self, number):
        shard = self.open.get(number)
        if shard is None:
            shard = Shard(self.directory, self.records[number], self.vocab_size,
                          verified=number in self.verified)
            self.verified.add(number)
            self.open[number] = shard
            while len(self.open) > self.keep:
                self.open.popitem(last=False)[1].close()
        self.open.move_to_end(number)
        return shard


class _EpochStream:
    """Instance numbers (and instances) of one worker's epoch, drawn through the buffer."""

    def __init__(self, data, shard_numbers, rng, buffer_size):
        self.data, self.rng, self.size = data, rng, buffer_size
        self.order = [int(n) for n in rng.permutation(np.asarray(shard_numbers))]
        self.at, self.local = 0, 0            # the next instance read: order[at], local
        self.buffer, self.held = [], {}       # instance numbers; their instances, if read

    def _read(self, load):
        while self.at < len(self.order):
            number = self.order[self.at]
            if self.local < self.data.records[number]['examples']:
                index = self.data.starts[number] + self.local
                if load:
                    self.held[index] = self.data.shards[number].instance(self.local)
                self.local += 1
                return index
            self.at, self.local = self.at + 1, 0
        return None

    def next(self, load=True):
        """The next instance number (None at the end of the shards); with ``load``, its
        instance is then in :meth:`take`."""
        while len(self.buffer) < self.size:
            index = self._read(load)
            if index is None:
                break
            self.buffer.append(index)
        if not self.buffer:
            return None
        slot = int(self.rng.integers(len(self.buffer)))
        drawn, incoming = self.buffer[slot], self._read(load)
        if incoming is None:
            self.buffer[slot] = self.buffer[-1]
            self.buffer.pop()
        else:
            self.buffer[slot] = incoming
        return drawn

    def take(self, index):
        instance = self.held.pop(index, None)
        return instance if instance is not None else self.data.instance(index)


class ShardedPretrainingData:
    """Masked-LM + next-sentence examples streamed from a shard directory.

    Parameters
    ----------
    directory : str
        Made by :func:`gluonbert.data.prepare_shards` (``gluonbert-pretrain-data``).
    vocab
        The model's vocabulary; it must be the one the shards were prepared with.
    split : {'train', 'heldout'}
    max_predictions, mask_prob, whole_word_masking
        Masking (see :class:`~gluonbert.data.pretraining.Masker`).
    seed : int
        Masking, shard order and shuffle buffer.
    shuffle_buffer : int, default 10000
        Instances in the shuffle buffer.
    max_examples : int, optional
        :meth:`batches` (evaluation) uses at most this many examples of the split.
    """

    def __init__(self, directory, vocab, *, split='train', max_predictions=20, mask_prob=0.15,
                 whole_word_masking=False, seed=0, shuffle_buffer=10000, max_examples=None):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        if shuffle_buffer < 1:
            raise ValueError(f'shuffle_buffer must be >= 1, got {shuffle_buffer}')
        self.manifest = read_manifest(directory)
        check_vocab(self.manifest, vocab, directory)
        self.directory, self.vocab, self.split, self.seed = directory, vocab, split, seed
        self.shuffle_buffer, self.max_examples = shuffle_buffer, max_examples
        self.max_len = self.manifest['settings']['max_len']
        self.masker = Masker(vocab, max_predictions=max_predictions, mask_prob=mask_prob,
                             whole_word=whole_word_masking)
        self.records = self.manifest['shards'][split]
        self.starts = [0]
        for record in self.records:
            self.starts.append(self.starts[-1] + record['examples'])
        self.shards = _Shards(directory, self.records, len(vocab))

    @property
    def max_predictions(self):
        return self.masker.max_predictions

    def __len__(self):
        return self.starts[-1]

    def fingerprint(self):
        """``{'examples', 'sha256'}`` of the shards (their digests) and the masking
        settings: what a resumed run must be given again."""
        decisive = {'shards': manifest_digest(self.manifest), 'split': self.split,
                    'seed': self.seed, 'shuffle_buffer': self.shuffle_buffer,
                    **self.masker.settings()}
        digest = hashlib.sha256(json.dumps(decisive, sort_keys=True).encode('utf-8'))
        return {'examples': len(self), 'sha256': digest.hexdigest()}

    def instance(self, index):
        """Instance number ``index`` of the split: ``(first, second, label)``."""
        number = bisect.bisect_right(self.starts, index) - 1
        return self.shards[number].instance(index - self.starts[number])

    def example(self, index, epoch=0):
        return self.masker(*self.instance(index), masking_rng(self.seed, epoch, index))

    def worker_shards(self, num_shards=1, shard_index=0):
        """The shard numbers a worker reads."""
        if len(self.records) < num_shards:
            raise DataError(f'{self.directory}: {len(self.records)} {self.split} shard(s) for '
                            f'{num_shards} workers; prepare the data with a smaller '
                            f'--examples-per-shard so that every worker has its own shards')
        return shard_indices(len(self.records), num_shards, shard_index, even=False)

    def batches_per_epoch(self, batch_size, num_shards=1):
        """Full batches per epoch, the same for every worker (the smallest share)."""
        shares = [sum(self.records[n]['examples'] for n in self.worker_shards(num_shards, rank))
                  for rank in range(num_shards)]
        count = min(shares) // batch_size
        if count == 0:
            raise DataError(f'{self.directory}: a worker has {min(shares)} {self.split} '
                            f'examples, fewer than a batch of {batch_size}')
        return count

    def stream(self, epoch, *, num_shards=1, shard_index=0):
        """The instance numbers of a worker's epoch in order, read through the buffer (a
        generator; the instances are not loaded)."""
        stream = _EpochStream(self, self.worker_shards(num_shards, shard_index),
                              order_rng(self.seed, epoch), self.shuffle_buffer)
        while (index := stream.next(load=False)) is not None:
            yield index

    def examples(self, epoch=0, *, num_shards=1, shard_index=0):
        """Every example of a worker's epoch, in order (a generator)."""
        stream = _EpochStream(self, self.worker_shards(num_shards, shard_index),
                              order_rng(self.seed, epoch), self.shuffle_buffer)
        while (index := stream.next()) is not None:
            yield self.masker(*stream.take(index), masking_rng(self.seed, epoch, index))

    def epoch_batches(self, batch_size, epoch, ctx=None, *, num_shards=1, shard_index=0,
                      start=0):
        """NDArray batches of a worker's epoch from number ``start`` on (a generator);
        the instances before ``start`` are skipped without reading them."""
        import mxnet as mx
        ctx = ctx or mx.cpu()
        stream = _EpochStream(self, self.worker_shards(num_shards, shard_index),
                              order_rng(self.seed, epoch), self.shuffle_buffer)
        for _ in range(start * batch_size):
            stream.next(load=False)
        for _ in range(start, self.batches_per_epoch(batch_size, num_shards)):
            examples = []
            for _ in range(batch_size):
                index = stream.next()
                examples.append(self.masker(*stream.take(index),
                                            masking_rng(self.seed, epoch, index)))
            yield tuple(mx.nd.array(a, ctx=ctx) for a in
                        batchify(examples, self.vocab.pad_id, self.max_predictions))

    def batches(self, batch_size, epoch=0, ctx=None, *, num_shards=1, shard_index=0,
                even_shards=True):
        """Padded NDArray batches of the split's first ``max_examples`` examples in stored
        order, masked for ``epoch`` (evaluation), every ``num_shards``-th one for this
        worker; ``even_shards`` drops the remainder."""
        import mxnet as mx
        count = len(self) if self.max_examples is None else min(len(self), self.max_examples)
        chosen = shard_indices(count, num_shards, shard_index, even=even_shards)
        batches = []
        for i in range(0, len(chosen), batch_size):
            examples = [self.example(index, epoch) for index in chosen[i:i + batch_size]]
            batches.append(tuple(mx.nd.array(a, ctx=ctx or mx.cpu()) for a in
                                 batchify(examples, self.vocab.pad_id, self.max_predictions)))
        return batches
