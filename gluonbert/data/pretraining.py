"""BERT's pre-training examples: sentence packing, next-sentence pairs, dynamic masking.

An *instance* is ``(first, second, label)``: the ids of segment A and segment B (no special
tokens) and the next-sentence label, made by :func:`pack_documents` as BERT's
``create_pretraining_data`` makes them:

- consecutive sentences of a document are gathered until they reach a target length
  (``max_len - 3``; with probability ``short_seq_prob`` a random length from 2 up, so the
  model also sees short sequences), then split at a random sentence boundary into A and B;
- half the time (always, when the gathered sentences are one) B is replaced by a span of
  *another document* starting at a random sentence (label :data:`NOT_NEXT`), and the
  sentences B would have used start the next instance; else B is the true continuation
  (label :data:`IS_NEXT`);
- a pair too long is trimmed one token at a time from the longer side, A at its start and B
  at its end, so that a positive pair always meets at the true boundary.

Documents are packed in chunks of ``documents_per_chunk`` (the random B comes from another
document of the chunk), each chunk with its own random stream: the instances are the same
whether the chunks are packed in one process or many, in memory or into shards.

An *example* is an instance masked for one epoch by :class:`Masker`: ``(ids, segments,
positions, targets, label)``, with ``ids`` = ``[CLS] A [SEP] B [SEP]``. Masking is dynamic:
drawn per (seed, epoch, instance number), so any example can be made again on its own.

Shapes of a batch (:func:`batchify`): ``input_ids, segments (B, L)``, ``valid_length
(B,)``, ``masked_positions, masked_ids, masked_weights (B, M)``, ``nsp_labels (B,)``.
"""
import hashlib
import json
import math

import numpy as np

from ..errors import DataError
from .batching import pad_ids, shard_indices
from .transform import truncate_pair

__all__ = ['IS_NEXT', 'NOT_NEXT', 'tokenize_document', 'chunk_documents', 'pack_documents',
           'pack_chunk', 'packing_rng', 'masking_rng', 'order_rng', 'Masker', 'batchify',
           'ids_dtype', 'PretrainingData']

IS_NEXT, NOT_NEXT = 0, 1
# random streams, told apart by a tag: packing a chunk, masking an example, ordering an epoch
_PACKING, _MASKING, _ORDER = 0, 1, 2


def ids_dtype(vocab_size):
    """The narrowest integer type that holds ids of a vocabulary (uint16 for BERT's)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def tokenize_document(sentences, tokenizer, vocab, dtype=np.int32):
    """The WordPiece ids of each sentence (1-D arrays), sentences without tokens left out."""
    ids = (vocab[tokenizer(sentence)] for sentence in sentences)
    return [np.asarray(piece, dtype=dtype) for piece in ids if piece]


def chunk_documents(documents, size):
    """``(index, chunk)`` of consecutive documents, ``size`` at a time; a last chunk of a
    single document joins the one before, so that every chunk has another document for the
    random B (a corpus of one document gives one chunk of one)."""
    if size < 2:
        raise ValueError(f'documents_per_chunk must be at least 2, got {size}')
    pending, current, index = None, [], 0
    for document in documents:
        current.append(document)
        if len(current) == size:
            if pending is not None:
                yield index, pending
                index += 1
            pending, current = current, []
    if pending is not None and len(current) == 1:
        pending, current = pending + current, []
    if pending is not None:
        yield index, pending
        index += 1
    if current:
        yield index, current


def pack_chunk(documents, *, index, tokenizer, vocab, max_len, short_seq_prob, seed,
               dtype=np.int32):
    """``(instances, counts)`` of chunk number ``index`` of raw documents (lists of
    sentences): tokenized, then packed with the chunk's own random stream. ``counts``:
    documents, sentences and tokens packed, and ``skipped_documents`` (no tokens; a chunk
    left with fewer than 2 documents is skipped whole, as NSP needs a second one)."""
    tokenized = [tokenize_document(document, tokenizer, vocab, dtype) for document in documents]
    packed = [document for document in tokenized if document]
    counts = {'documents': len(packed), 'sentences': sum(len(d) for d in packed),
              'tokens': sum(len(s) for d in packed for s in d),
              'skipped_documents': len(documents) - len(packed)}
    if len(packed) < 2:
        return [], {'documents': 0, 'sentences': 0, 'tokens': 0,
                    'skipped_documents': len(documents)}
    return pack_documents(packed, max_len=max_len, short_seq_prob=short_seq_prob,
                          rng=packing_rng(seed, index)), counts


def packing_rng(seed, chunk_index):
    """The random stream that packs chunk ``chunk_index``."""
    return np.random.default_rng([seed, _PACKING, chunk_index])


def _trimmed(first, second, max_tokens):
    """A and B trimmed to ``max_tokens`` together: A loses its start, B its end."""
    keep_a, keep_b = (len(x) for x in truncate_pair(range(len(first)), range(len(second)),
                                                    max_tokens))
    return first[len(first) - keep_a:], second[:keep_b]


def pack_documents(documents, *, max_len, short_seq_prob=0.1, rng):
    """Instances ``(first, second, label)`` of a chunk of tokenized documents (lists of
    1-D id arrays), in document order. See the module's description."""
    if len(documents) < 2:
        raise DataError('next-sentence prediction needs at least 2 documents with text')
    max_tokens = max_len - 3
    instances = []
    for number, document in enumerate(documents):
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        gathered, length, i = [], 0, 0
        while i < len(document):
            gathered.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                a_end = int(rng.integers(1, len(gathered))) if len(gathered) > 1 else 1
                first = np.concatenate(gathered[:a_end])
                if len(gathered) == 1 or rng.random() < 0.5:
                    label = NOT_NEXT
                    second = _random_span(documents, number, target - len(first), rng)
                    i -= len(gathered) - a_end  # the unused sentences start the next one
                else:
                    label = IS_NEXT
                    second = np.concatenate(gathered[a_end:])
                first, second = _trimmed(first, second, max_tokens)
                instances.append((first, second, label))
                gathered, length = [], 0
            i += 1
    return instances


def _random_span(documents, number, wanted, rng):
    """Sentences of a document other than ``number``, from a random one on, until they
    hold ``wanted`` tokens (at least one sentence)."""
    other = int(rng.integers(len(documents) - 1))
    other += other >= number
    document = documents[other]
    start = int(rng.integers(len(document)))
    pieces, length = [], 0
    for sentence in document[start:]:
        pieces.append(sentence)
        length += len(sentence)
        if length >= wanted:
            break
    return np.concatenate(pieces)


class Masker:
    """Masks an instance into an example: ``mask_prob`` of the tokens of A and B (at least
    one, at most ``max_predictions``) become targets; of those 80% are replaced by [MASK],
    10% by a random token and 10% stay.

    With ``whole_word=True`` the targets are whole words: a WordPiece continuation
    (``##...``) is chosen with the pieces before it, and a word that would exceed the
    budget is passed over for a shorter one, as in BERT's whole-word masking.
    """

    def __init__(self, vocab, *, max_predictions=20, mask_prob=0.15, whole_word=False):
        if max_predictions < 1:
            raise ValueError(f'max_predictions must be >= 1, got {max_predictions}')
        if not 0 < mask_prob < 1:
            raise ValueError(f'mask_prob must be in (0, 1), got {mask_prob}')
        self.cls_id, self.sep_id, self.mask_id = vocab.cls_id, vocab.sep_id, vocab.mask_id
        self.max_predictions, self.mask_prob, self.whole_word = (max_predictions, mask_prob,
                                                                 whole_word)
        tokens = list(vocab.idx_to_token)
        special = {vocab.cls_id, vocab.sep_id, vocab.pad_id, vocab.mask_id, vocab.unk_id}
        self.random_ids = np.array([i for i in range(len(tokens)) if i not in special])
        self.continues = np.array([t.startswith('##') for t in tokens], dtype=bool)

    def settings(self):
        return {'max_predictions': self.max_predictions, 'mask_prob': self.mask_prob,
                'whole_word_masking': self.whole_word}

    def __call__(self, first, second, label, rng):
        """``(ids, segments, positions, targets, label)`` of one instance."""
        ids = np.concatenate([[self.cls_id], first, [self.sep_id], second, [self.sep_id]]
                             ).astype(np.int64)
        segments = np.zeros(len(ids), dtype=np.int64)
        segments[len(first) + 2:] = 1
        eligible = np.concatenate([np.arange(1, len(first) + 1),
                                   np.arange(len(first) + 2, len(ids) - 1)])
        count = min(self.max_predictions, max(1, int(round(len(eligible) * self.mask_prob))))
        if self.whole_word:
            positions = self._whole_words(ids, eligible, count, rng)
        else:
            positions = np.sort(rng.choice(eligible, size=min(count, len(eligible)),
                                           replace=False))
        targets = ids[positions]
        draws = rng.random(len(positions))
        ids[positions[draws < 0.8]] = self.mask_id
        randomised = positions[(draws >= 0.8) & (draws < 0.9)]
        ids[randomised] = self.random_ids[rng.integers(len(self.random_ids),
                                                       size=len(randomised))]
        return ids, segments, positions, targets, label

    def _whole_words(self, ids, eligible, count, rng):
        words = []
        for position in eligible:  # a continuation joins the word before it, if eligible
            if words and self.continues[ids[position]] and words[-1][-1] == position - 1:
                words[-1].append(position)
            else:
                words.append([position])
        chosen = []
        for word in (words[k] for k in rng.permutation(len(words))):
            if len(chosen) >= count:
                break
            if len(chosen) + len(word) <= count:
                chosen.extend(word)
        return np.array(sorted(chosen), dtype=np.int64)


def batchify(examples, pad_id, max_predictions):
    """Numpy arrays of a batch of examples (see the module's shapes), float32 as MXNet's
    models take them. Padding is segment 0; unused prediction slots point at position 0
    with weight 0."""
    m = max_predictions
    input_ids, valid_length = pad_ids([e[0] for e in examples], pad_id)
    segments, _ = pad_ids([e[1] for e in examples], 0, length=input_ids.shape[1])
    positions, predicted = pad_ids([e[2] for e in examples], 0, length=m)
    targets, _ = pad_ids([e[3] for e in examples], 0, length=m)
    weights = (np.arange(m) < predicted[:, None]).astype(np.float32)          # (B, M)
    labels = np.array([e[4] for e in examples], dtype=np.float32)
    return input_ids, segments, valid_length, positions, targets, weights, labels


def masking_rng(seed, epoch, index):
    """The random stream that masks instance ``index`` in ``epoch``."""
    return np.random.default_rng([seed, _MASKING, epoch, index])


def order_rng(seed, epoch):
    """The random stream that orders the examples (or shards) of ``epoch``."""
    return np.random.default_rng([seed, _ORDER, epoch])


class PretrainingData:
    """Masked-LM + next-sentence examples of documents held in memory (small corpora,
    notebooks, tests; :class:`gluonbert.data.ShardedPretrainingData` streams large ones
    prepared into shards, and makes the same examples).

    Parameters
    ----------
    documents : list of list of str
        Documents as sentences (raw text).
    tokenizer, vocab
        WordPiece tokenizer and vocabulary.
    max_len : int
        Sequence length with [CLS] and two [SEP]s.
    max_predictions : int
        Most masked positions per sequence (M).
    mask_prob : float, default 0.15
    short_seq_prob : float, default 0.1
        Chance that a document's instances aim at a random shorter length.
    whole_word_masking : bool, default False
    documents_per_chunk : int, default 256
        The random B of an instance comes from another document of its chunk.
    seed : int
        Packs the instances, masks them and orders every epoch.
    """

    def __init__(self, documents, tokenizer, vocab, *, max_len=128, max_predictions=20,
                 mask_prob=0.15, short_seq_prob=0.1, whole_word_masking=False,
                 documents_per_chunk=256, seed=0):
        if max_len < 5:
            raise ValueError(f'max_len must be at least 5, got {max_len}')
        self.vocab, self.max_len, self.seed = vocab, max_len, seed
        self.masker = Masker(vocab, max_predictions=max_predictions, mask_prob=mask_prob,
                             whole_word=whole_word_masking)
        self.packing = {'max_len': max_len, 'short_seq_prob': short_seq_prob,
                        'documents_per_chunk': documents_per_chunk, 'seed': seed}
        self.instances = []
        for index, chunk in chunk_documents((d for d in documents if d), documents_per_chunk):
            self.instances.extend(pack_chunk(
                chunk, index=index, tokenizer=tokenizer, vocab=vocab, max_len=max_len,
                short_seq_prob=short_seq_prob, seed=seed, dtype=ids_dtype(len(vocab)))[0])
        if not self.instances:
            raise DataError('pre-training needs at least 2 documents with text')

    @property
    def max_predictions(self):
        return self.masker.max_predictions

    def __len__(self):
        return len(self.instances)

    def fingerprint(self):
        """``{'examples', 'sha256'}`` of the instances and the settings that make the
        examples: what a resumed run must be given again."""
        settings = {**self.packing, **self.masker.settings(), 'vocab': len(self.vocab)}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode('utf-8'))
        for first, second, label in self.instances:  # lengths first: one parse only
            digest.update(np.array([len(first), len(second), label], np.int64).tobytes())
            digest.update(first.astype(np.int64).tobytes())
            digest.update(second.astype(np.int64).tobytes())
        return {'examples': len(self), 'sha256': digest.hexdigest()}

    def example(self, index, epoch=0):
        """Instance ``index`` masked for ``epoch``."""
        return self.masker(*self.instances[index], masking_rng(self.seed, epoch, index))

    def examples(self, epoch=0):
        """All examples of one epoch, in the epoch's order; masking differs per epoch."""
        order = order_rng(self.seed, epoch).permutation(len(self))
        return [self.example(int(i), epoch) for i in order]

    def batches(self, batch_size, epoch=0, ctx=None, *, num_shards=1, shard_index=0,
                even_shards=True):
        """Padded NDArray batches of one epoch (the last one may be smaller).

        ``num_shards``/``shard_index``: only this worker's shard of the epoch's examples
        (every ``num_shards``-th one); ``even_shards`` drops the remainder so every shard
        has the same size.
        """
        return list(self._batches(batch_size, epoch, ctx, num_shards, shard_index,
                                  even_shards, 0))

    def _batches(self, batch_size, epoch, ctx, num_shards, shard_index, even, start):
        import mxnet as mx
        order = order_rng(self.seed, epoch).permutation(len(self))
        chosen = [int(order[i]) for i in shard_indices(len(order), num_shards, shard_index,
                                                       even=even)]
        for i in range(start * batch_size, len(chosen), batch_size):
            examples = [self.example(index, epoch) for index in chosen[i:i + batch_size]]
            yield tuple(mx.nd.array(a, ctx=ctx or mx.cpu()) for a in
                        batchify(examples, self.vocab.pad_id, self.max_predictions))

    # the protocol of pretrain_loop's data
    def batches_per_epoch(self, batch_size, num_shards=1):
        return math.ceil(len(self) // num_shards / batch_size)

    def epoch_batches(self, batch_size, epoch, ctx=None, *, num_shards=1, shard_index=0,
                      start=0):
        """The batches of ``epoch`` from number ``start`` on, made as they are taken (a
        generator)."""
        return self._batches(batch_size, epoch, ctx, num_shards, shard_index, True, start)
