"""Batching: padding (:func:`pad_ids`, the one padding helper of the package), sharding,
length-bucketed samplers and :func:`make_dataloader`."""
import numpy as np

from ..errors import DataError
from .readers import TextClassificationDataset
from .transform import ClassificationTransform

__all__ = ['pad_ids', 'shard_indices', 'batchify_fn', 'BucketSampler', 'padding_waste',
           'make_dataloader']


def _round_up(length, multiple):
    """``length`` rounded up to a multiple of ``multiple`` (unchanged when it is None/0)."""
    return -(-length // multiple) * multiple if multiple else length


def pad_ids(sequences, pad_id=0, *, length=None, round_to=None, dtype=np.float32):
    """Pad sequences of ids (or segments, positions, ...) into one array.

    Parameters
    ----------
    sequences : sequence of sequences of numbers
        Lists or 1-D arrays, of any lengths.
    pad_id : number, default 0
        Fills the slots after each sequence.
    length : int, optional
        The padded length ``L``; every sequence must fit. Default: the longest sequence,
        rounded up to a multiple of ``round_to``.
    round_to : int, optional
        Round the default length up to a multiple (8 suits GPU tensor cores).
    dtype : numpy dtype, default float32
        Of both results (MXNet models take float32 ids).

    Returns
    -------
    padded : numpy.ndarray
        ``(B, L)``: row ``i`` is ``sequences[i]`` then ``pad_id`` up to ``L``.
    valid_length : numpy.ndarray
        ``(B,)``: ``len(sequences[i])``.
    """
    lengths = [len(seq) for seq in sequences]
    longest = max(lengths, default=0)
    if length is None:
        length = _round_up(longest, round_to)
    elif longest > length:
        raise ValueError(f'a sequence of {longest} items does not fit length {length}')
    padded = np.full((len(lengths), length), pad_id, dtype=dtype)
    for row, (seq, size) in enumerate(zip(sequences, lengths)):
        padded[row, :size] = seq
    return padded, np.asarray(lengths, dtype=dtype)


def shard_indices(num_items, num_shards=1, shard_index=0, *, even=True):
    """Indices of shard ``shard_index`` out of ``num_shards``: every ``num_shards``-th item
    from ``shard_index`` on, so data sorted by label or length spreads over all shards.

    ``even=True`` (training) drops the last ``num_items % num_shards`` items so every shard
    has ``num_items // num_shards`` items and every worker runs the same number of steps;
    ``even=False`` (evaluation) keeps every item, the shards differing by at most one.
    Strided shards also make batch ``i`` of the shards together exactly batch ``i`` of a
    single process whose batch is ``num_shards`` times larger (without shuffling).
    """
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f'num_shards must be a positive integer, got {num_shards!r}')
    if not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
        raise ValueError(f'shard_index must be in [0, {num_shards}), got {shard_index!r}')
    stop = num_items // num_shards * num_shards if even else num_items
    return list(range(shard_index, stop, num_shards))


def batchify_fn(pad_id, round_to=None):
    """Pad a list of ``(input_ids, valid_length, segments, label)`` into NDArrays.

    ``input_ids`` are padded with ``pad_id``; ``segments`` with 0 (padding belongs to no
    second sentence, and the pad id may not be a valid segment id). ``round_to`` pads the
    length up to a multiple (8 suits GPU tensor cores).
    """
    import mxnet as mx

    def batchify(samples):
        words, valid_length = pad_ids([s[0] for s in samples], pad_id, round_to=round_to)
        segments, _ = pad_ids([s[2] for s in samples], 0, length=words.shape[1])
        labels = np.array([s[3] for s in samples], dtype=np.float32)
        return (mx.nd.array(words, dtype='float32'), mx.nd.array(valid_length),
                mx.nd.array(segments), mx.nd.array(labels))
    return batchify


class BucketSampler:
    """Batches of similar lengths, reshuffled reproducibly each epoch.

    Each epoch shuffles the examples, cuts the order into chunks of ``batch_size *
    num_buckets``, sorts each chunk by length and cuts it into batches, then shuffles the
    batches. Long and short examples stop sharing batches, so little padding is wasted,
    while batches still vary from epoch to epoch. Without shuffling, examples are sorted by
    length (deterministic evaluation order).

    Yields lists of indices; ``len(sampler)`` is the number of batches.
    """

    def __init__(self, lengths, batch_size, *, num_buckets=10, shuffle=True, seed=0):
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.lengths = np.asarray(lengths)
        self.batch_size, self.num_buckets = batch_size, max(1, num_buckets)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def batches(self):
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind='stable')
            return [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        rng = np.random.RandomState((self.seed * 1_000_003 + self.epoch) % (2 ** 32))
        order = rng.permutation(n)
        chunk = self.batch_size * self.num_buckets
        batches = []
        for start in range(0, n, chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(self.lengths[part], kind='stable')]
            batches.extend(part[i:i + self.batch_size].tolist()
                           for i in range(0, len(part), self.batch_size))
        rng.shuffle(batches)
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size  # batches


class _PlainSampler(BucketSampler):
    """Unbucketed batches: shuffled (or in order), cut every batch_size examples."""

    def batches(self):
        n = len(self.lengths)
        order = np.arange(n)
        if self.shuffle:
            order = np.random.RandomState(
                (self.seed * 1_000_003 + self.epoch) % (2 ** 32)).permutation(n)
        return [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]


def padding_waste(lengths, batches, round_to=None):
    """Fraction of token slots in padded batches that are padding."""
    lengths = np.asarray(lengths)
    used = total = 0
    for batch in batches:
        batch_lengths = lengths[list(batch)]
        longest = _round_up(batch_lengths.max(), round_to)
        used += batch_lengths.sum()
        total += longest * len(batch_lengths)
    return float(1 - used / total) if total else 0.0


class _Loader:
    """Batches of pre-transformed examples; ``len()``, ``batch_sampler.set_epoch`` and
    ``padding_waste`` as the training loop expects."""

    def __init__(self, samples, batch_sampler, batchify, round_to):
        self.samples, self.batch_sampler, self._batchify = samples, batch_sampler, batchify
        lengths = [s[1] for s in samples]
        self.padding_waste = padding_waste(lengths, batch_sampler.batches(), round_to)
        plain = _PlainSampler(lengths, batch_sampler.batch_size, shuffle=batch_sampler.shuffle,
                              seed=batch_sampler.seed)
        self.padding_waste_unbucketed = padding_waste(lengths, plain.batches(), round_to)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        for indices in self.batch_sampler:
            yield self._batchify([self.samples[i] for i in indices])


def make_dataloader(dataset, transform, *, batch_size=32, shuffle=True, bucket=True, seed=0,
                    pad_id=None, round_to=None, num_buckets=10, progress=None, num_shards=1,
                    shard_index=0, even_shards=True):
    """Transform every example once, up front, and batch them by length.

    Parameters
    ----------
    dataset : TextClassificationDataset or sequence of (text, label)
        Sentence pairs (``text_pairs``, or items ``((text_a, text_b), label)``) need a
        ``pair=True`` transform: segments are then 0 for [CLS] A [SEP], 1 for B [SEP].
    transform : BERTTransform
    bucket : bool
        Length-bucketed batches (:class:`BucketSampler`); False batches in data order.
    pad_id : int, optional
        Id that pads ``input_ids``; default: the transform vocabulary's ``pad_id``.
    num_shards, shard_index : int
        Distributed training: keep only shard ``shard_index`` of ``num_shards``, every
        ``num_shards``-th example (see :func:`shard_indices`); only
        those are tokenized. ``batch_size`` is then per worker.
    even_shards : bool
        Drop the last ``len(dataset) % num_shards`` examples so every shard has the same
        size, hence every worker the same number of batches (training); False keeps every
        example (evaluation, whose counts are summed over the workers).

    Returns
    -------
    An iterable of ``(input_ids, valid_length, segments, label)`` batches with ``len()``,
    ``.batch_sampler`` (call ``set_epoch``), ``.padding_waste`` and
    ``.padding_waste_unbucketed``.
    """
    from tqdm.auto import tqdm
    if pad_id is None:
        pad_id = transform.vocab.pad_id
    pairs = getattr(dataset, 'text_pairs', None) is not None
    if isinstance(dataset, TextClassificationDataset) and \
            pairs != bool(getattr(transform, 'pair', pairs)):
        raise ValueError(f'{dataset.source} holds {"sentence pairs" if pairs else "single texts"}'
                         f': use BERTTransform(..., pair={pairs})')
    classify = ClassificationTransform(transform)
    indices = range(len(dataset))
    if num_shards != 1 or shard_index != 0:
        indices = shard_indices(len(dataset), num_shards, shard_index, even=even_shards)
        if not indices and even_shards:
            raise DataError(f'{getattr(dataset, "source", "the dataset")}: {len(dataset)} '
                            f'examples cannot fill {num_shards} equal shards')
    show = len(indices) > 2000 if progress is None else progress
    samples = [classify(*dataset[i]) for i in tqdm(indices, desc='tokenizing',
                                                   unit='text', disable=not show, leave=False)]
    lengths = [s[1] for s in samples]
    sampler_cls = BucketSampler if bucket else _PlainSampler
    sampler = sampler_cls(lengths, batch_size, num_buckets=num_buckets, shuffle=shuffle,
                          seed=seed)
    return _Loader(samples, sampler, batchify_fn(pad_id, round_to), round_to)
