"""Text classification data: readers, the BERT transform, length-bucketed batching.

A batch is ``(input_ids, valid_length, segments, label)``:

- ``input_ids``: ``(B, L)`` WordPiece ids, padded with the vocabulary's pad id;
- ``valid_length``: ``(B,)`` real tokens per example ([CLS] and [SEP] included);
- ``segments``: ``(B, L)`` 0 for [CLS], sentence A and its [SEP] (and for padding), 1 for B;
- ``label``: ``(B,)`` class ids.
"""
import csv
import dataclasses
import glob
import json
import os
import socket
import threading

import numpy as np

from .errors import DataError

__all__ = ['DataError', 'TextClassificationDataset', 'read_csv', 'read_jsonl', 'read_table',
           'read_aclimdb', 'load_imdb', 'load_sample_reviews', 'load_dataset', 'BERTTransform',
           'ClassificationTransform', 'batchify_fn', 'BucketSampler', 'padding_waste',
           'make_dataloader', 'SAMPLE_DIR']

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'resources', 'reviews')
BINARY_NAMES = ['negative', 'positive']
_BINARY_ALIASES = {'0': 0, '1': 1, 'negative': 0, 'positive': 1, 'neg': 0, 'pos': 1}


@dataclasses.dataclass
class TextClassificationDataset:
    """Texts with integer labels; ``label_names[i]`` names label ``i``."""
    texts: list
    labels: list
    label_names: list
    source: str = '<memory>'

    def __post_init__(self):
        if not self.texts:
            raise DataError(f'{self.source}: the dataset is empty')
        if len(self.texts) != len(self.labels):
            raise DataError(f'{self.source}: {len(self.texts)} texts but {len(self.labels)} '
                            f'labels')

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, index):
        return self.texts[index], self.labels[index]

    def subset(self, indices):
        """A new dataset of the examples at ``indices`` (a range, slice or list)."""
        if isinstance(indices, slice):
            indices = range(len(self))[indices]
        indices = list(indices)
        return TextClassificationDataset([self.texts[i] for i in indices],
                                         [self.labels[i] for i in indices],
                                         list(self.label_names), source=self.source)


# ------------------------------------------------------------------------- readers
class _LabelMap:
    """Maps raw label values to ids, either declared or inferred as binary."""

    def __init__(self, declared, path):
        self.path = path
        self.declared = [str(x) for x in declared] if declared else None

    def names(self):
        return self.declared or BINARY_NAMES

    def __call__(self, raw, line):
        value = str(raw).strip()
        if self.declared:
            if value in self.declared:
                return self.declared.index(value)
            if value.isdigit() and int(value) < len(self.declared):
                return int(value)
            raise DataError(f'{self.path}:{line}: unknown label {value!r}; accepted labels: '
                            f'{", ".join(self.declared)}')
        label = _BINARY_ALIASES.get(value.lower())
        if label is None:
            raise DataError(f'{self.path}:{line}: unknown label {value!r}; expected 0/1 or '
                            f'negative/positive, or declare the label set (labels=[...], '
                            f'--labels a,b,c)')
        return label


def _decode_error(path, err, data=None):
    line = data[:err.start].count(b'\n') + 1 if data is not None else '?'
    return DataError(f'{path}:{line}: invalid UTF-8 at byte {err.start}; the file must be '
                     f'UTF-8 encoded')


def _read_text(path):
    if not os.path.isfile(path):
        raise DataError(f'no such file: {path}')
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as err:
        raise _decode_error(path, err, data) from err


def read_csv(path, *, text_column='text', label_column='label', labels=None, delimiter=None):
    """Read a CSV (or TSV: ``.tsv`` suffix or ``delimiter='\\t'``) file with a header row."""
    text = _read_text(path)
    if delimiter is None:
        delimiter = '\t' if path.lower().endswith('.tsv') else ','
    reader = csv.DictReader(text.splitlines(keepends=True), delimiter=delimiter)
    columns = reader.fieldnames or []
    for column in (text_column, label_column):
        if column not in columns:
            raise DataError(f'{path}:1: no column {column!r}; columns are: '
                            f'{", ".join(columns) or "(none)"}')
    label_map = _LabelMap(labels, path)
    texts, ids = [], []
    for row in reader:
        line = reader.line_num  # physical line where this record ends
        if row.get(text_column) is None or row.get(label_column) is None:
            raise DataError(f'{path}:{line}: row has fewer fields than the header')
        texts.append(row[text_column])
        ids.append(label_map(row[label_column], line))
    return TextClassificationDataset(texts, ids, label_map.names(), source=path)


def read_jsonl(path, *, text_column='text', label_column='label', labels=None):
    """Read JSON lines: one object per line with a text and a label field."""
    label_map = _LabelMap(labels, path)
    texts, ids = [], []
    for line_number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f'{path}:{line_number}: invalid JSON ({err.msg})') from err
        if not isinstance(row, dict):
            raise DataError(f'{path}:{line_number}: expected a JSON object')
        for column in (text_column, label_column):
            if column not in row:
                raise DataError(f'{path}:{line_number}: no field {column!r}; fields are: '
                                f'{", ".join(row)}')
        texts.append(str(row[text_column]))
        ids.append(label_map(row[label_column], line_number))
    return TextClassificationDataset(texts, ids, label_map.names(), source=path)


def read_table(path, **options):
    """Read a ``.csv``, ``.tsv`` or ``.jsonl`` file by its suffix."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in ('.csv', '.tsv'):
        return read_csv(path, **options)
    if suffix in ('.jsonl', '.json', '.ndjson'):
        return read_jsonl(path, **options)
    raise DataError(f'{path}: unsupported file type {suffix or "(none)"!r}; use .csv, .tsv or '
                    f'.jsonl')


def read_aclimdb(root, split='train'):
    """Read the Stanford ``aclImdb`` tree: ``root/<split>/{pos,neg}/*.txt``."""
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    texts, ids = [], []
    for label, folder in enumerate(('neg', 'pos')):
        directory = os.path.join(root, split, folder)
        if not os.path.isdir(directory):
            raise DataError(f'{directory} is missing: expected the aclImdb layout '
                            f'{split}/pos and {split}/neg with one review per .txt file')
        for path in sorted(glob.glob(os.path.join(directory, '*.txt'))):
            texts.append(_read_text(path).strip())
            ids.append(label)
    return TextClassificationDataset(texts, ids, list(BINARY_NAMES),
                                     source=os.path.join(root, split))


def _reachable(host, port=443, timeout=3.0):
    """TCP reachability within ``timeout`` s (name resolution included, via a thread)."""
    if os.environ.get('GLUONBERT_OFFLINE') == '1':
        return False
    result = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


# gluonnlp.data.IMDB's files and their sha1, as its downloader checks them.
IMDB_SHA1 = {'train': '516a0ba06bca4e32ee11da2e129f4f871dff85dc',
             'test': '7d59bd8899841afdc1c75242815260467495b64a'}


def load_imdb(split='train', root=None):
    """IMDB through ``gluonnlp.data.IMDB`` (rating >= 5 is positive); needs the download or a
    cached copy. Fails within seconds, with instructions, when neither is available."""
    import gluonnlp
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = root or os.path.join(gluonnlp.base.get_home_dir(), 'datasets', 'imdb')
    file_name, sha1 = f'{split}.json', IMDB_SHA1[split]
    path = os.path.join(os.path.expanduser(root), file_name)
    from .pretrained import _sha1
    if not os.path.exists(path) or _sha1(path) != sha1:
        repo = os.environ.get('MXNET_GLUON_REPO',
                              'https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/')
        host = repo.split('//', 1)[-1].split('/', 1)[0]
        if not _reachable(host):
            raise DataError(f'IMDB is not cached ({path} is missing or damaged) and its '
                            f'download host {host} is not reachable. Put {file_name} in '
                            f'{root}, or use --dataset /path/to/aclImdb or --train/--test '
                            f'CSV files')
    dataset = gluonnlp.data.IMDB(split, root=root)
    texts = [text for text, _ in dataset]
    ids = [1 if score >= 5 else 0 for _, score in dataset]
    return TextClassificationDataset(texts, ids, list(BINARY_NAMES), source=f'IMDB {split}')


def load_sample_reviews(split='train'):
    """The bundled movie reviews (balanced positive/negative), ``'train'`` or ``'test'``."""
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return read_jsonl(os.path.join(SAMPLE_DIR, f'{split}.jsonl'))


def load_dataset(name_or_path, split='train'):
    """``'sample'`` (bundled), ``'imdb'`` (download), or an ``aclImdb`` directory."""
    if name_or_path == 'sample':
        return load_sample_reviews(split)
    if name_or_path == 'imdb':
        return load_imdb(split)
    if os.path.isdir(name_or_path):
        return read_aclimdb(name_or_path, split)
    raise DataError(f"unknown dataset {name_or_path!r}: use 'sample', 'imdb' or an aclImdb "
                    f"directory")


# ----------------------------------------------------------------------- transform
class BERTTransform:
    """Text (or a text pair) to ``(input_ids, valid_length, segments)`` without padding.

    Parameters
    ----------
    tokenizer : callable str -> list of str
    vocab : Vocab
    max_len : int, default 128
        Longest output, [CLS] and [SEP]s included.
    truncate : {'head', 'head+tail'}
        ``head`` keeps the first tokens. ``head+tail`` keeps the first ``head_tokens`` and
        the last ``max_len - 2 - head_tokens`` tokens (Sun et al. 2019: best for long
        reviews); when ``max_len - 2 <= head_tokens`` it is the same as ``head``.
    pair : bool
        Inputs are ``(text_a, text_b)``; the longer side is trimmed until the pair fits.
    head_tokens : int, default 128
    """

    def __init__(self, tokenizer, vocab, *, max_len=128, truncate='head', pair=False,
                 head_tokens=128):
        if truncate not in ('head', 'head+tail'):
            raise ValueError(f"truncate must be 'head' or 'head+tail', got {truncate!r}")
        minimum = 4 if pair else 3
        if not isinstance(max_len, int) or max_len < minimum:
            raise ValueError(f'max_len must be an integer >= {minimum}, got {max_len!r}')
        self.tokenizer, self.vocab = tokenizer, vocab
        self.max_len, self.truncate, self.pair = max_len, truncate, pair
        self.head_tokens = head_tokens

    def _truncate_single(self, ids):
        budget = self.max_len - 2
        if len(ids) <= budget:
            return ids
        if self.truncate == 'head+tail' and budget > self.head_tokens:
            tail = budget - self.head_tokens
            return ids[:self.head_tokens] + ids[len(ids) - tail:]
        return ids[:budget]

    def __call__(self, text):
        vocab = self.vocab
        if self.pair:
            first, second = (vocab[self.tokenizer(t)] for t in text)
            while len(first) + len(second) > self.max_len - 3:
                (first if len(first) >= len(second) else second).pop()
            ids = [vocab.cls_id] + first + [vocab.sep_id] + second + [vocab.sep_id]
            segments = [0] * (len(first) + 2) + [1] * (len(second) + 1)
        else:
            body = self._truncate_single(vocab[self.tokenizer(text)])
            ids = [vocab.cls_id] + body + [vocab.sep_id]
            segments = [0] * len(ids)
        return (np.asarray(ids, dtype=np.int32), len(ids), np.asarray(segments, dtype=np.int32))


class ClassificationTransform:
    """``(text, label)`` to ``(input_ids, valid_length, segments, label)``."""

    def __init__(self, bert_transform):
        self.bert_transform = bert_transform

    def __call__(self, text, label):
        input_ids, valid_length, segments = self.bert_transform(text)
        return input_ids, valid_length, segments, label


# ------------------------------------------------------------------------ batching
def batchify_fn(pad_id, round_to=None):
    """Pad a list of ``(input_ids, valid_length, segments, label)`` into NDArrays.

    ``input_ids`` are padded with ``pad_id``; ``segments`` with 0 (padding belongs to no
    second sentence, and the pad id may not be a valid segment id). ``round_to`` pads the
    length up to a multiple (8 suits GPU tensor cores).
    """
    import mxnet as mx

    def batchify(samples):
        longest = max(int(s[1]) for s in samples)
        if round_to:
            longest = -(-longest // round_to) * round_to
        words = np.full((len(samples), longest), pad_id, dtype=np.float32)
        segments = np.zeros((len(samples), longest), dtype=np.float32)
        for row, (ids, length, segs, _) in enumerate(samples):
            words[row, :length] = ids
            segments[row, :length] = segs
        valid_length = np.array([s[1] for s in samples], dtype=np.float32)
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
        return -(-len(self.lengths) // self.batch_size)


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
        longest = batch_lengths.max()
        if round_to:
            longest = -(-longest // round_to) * round_to
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
    transform : BERTTransform
    bucket : bool
        Length-bucketed batches (:class:`BucketSampler`); False batches in data order.
    pad_id : int, optional
        Id that pads ``input_ids``; default: the transform vocabulary's ``pad_id``.
    num_shards, shard_index : int
        Distributed training: keep only shard ``shard_index`` of ``num_shards``, every
        ``num_shards``-th example (see :func:`gluonbert.distributed.shard_indices`); only
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
    classify = ClassificationTransform(transform)
    indices = range(len(dataset))
    if num_shards != 1 or shard_index != 0:
        from .distributed import shard_indices
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
