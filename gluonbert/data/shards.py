"""The on-disk format of prepared pre-training data: fixed-size shards and a manifest.

A directory made by :func:`gluonbert.data.prepare_shards` holds::

    manifest.json              what was prepared, how, and every shard (below)
    train-00000.ids.npy        the ids of A then B of each instance, one after the other
    train-00000.index.npy      (examples, 4) int64: offset in ids, len(A), len(B), NSP label
    ...
    heldout-00000.ids.npy      held-out instances, the same way

``.npy`` files are memory-mapped when read, so a shard costs only the pages in use. The
ids are ``uint16`` for vocabularies up to 65,536 tokens (``int32`` above). Every shard has
``examples_per_shard`` instances but the last of its split.

The manifest records, for each shard, its examples, tokens and the sha256 of its two files;
:class:`Shard` checks the digest and the structure (offsets, lengths, labels, ids within the
vocabulary) before it serves an instance, so a corrupt or altered file is a
:class:`~gluonbert.errors.DataError` naming it, never wrong data.
"""
import hashlib
import io
import json
import os

import numpy as np

from .._io import atomic_write, check_format_version
from ..errors import DataError
from ..schema import Fields, load_json

__all__ = ['FORMAT', 'FORMAT_VERSION', 'MANIFEST', 'SPLITS', 'shard_name', 'shard_paths',
           'write_shard', 'Shard', 'read_manifest', 'check_manifest', 'check_shard_list',
           'vocab_record', 'check_vocab']

FORMAT, FORMAT_VERSION = 'gluonbert-pretraining-shards', 1
MANIFEST = 'manifest.json'
SPLITS = ('train', 'heldout')


def shard_name(split, number):
    return f'{split}-{number:05d}'


def shard_paths(directory, name):
    """``(ids path, index path)`` of shard ``name``."""
    return (os.path.join(directory, f'{name}.ids.npy'),
            os.path.join(directory, f'{name}.index.npy'))


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write_bytes(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def write_shard(directory, name, instances, dtype):
    """Write ``instances`` (``(first, second, label)``) as shard ``name``; returns its
    manifest record ``{'name', 'examples', 'tokens', 'sha256'}``. Each file is written
    atomically."""
    index = np.zeros((len(instances), 4), dtype=np.int64)
    pieces, offset = [], 0
    for row, (first, second, label) in enumerate(instances):
        index[row] = offset, len(first), len(second), label
        pieces.extend((first, second))
        offset += len(first) + len(second)
    ids = np.concatenate(pieces).astype(dtype) if pieces else np.zeros(0, dtype)
    digest = hashlib.sha256()
    for path, array in zip(shard_paths(directory, name), (ids, index)):
        data = _npy_bytes(array)
        digest.update(data)
        atomic_write(path, lambda tmp, data=data: _write_bytes(tmp, data), needed=len(data))
    return {'name': name, 'examples': len(instances), 'tokens': int(offset),
            'sha256': digest.hexdigest()}


def _sha256(paths):
    digest = hashlib.sha256()
    for path in paths:
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
    return digest.hexdigest()


class Shard:
    """One shard, memory-mapped and checked (digest, then structure) when opened.

    ``instance(i)`` returns copies, so the shard can be closed while they are in use.
    """

    def __init__(self, directory, record, vocab_size, *, verified=False):
        self.name = record['name']
        ids_path, index_path = shard_paths(directory, self.name)
        for path in (ids_path, index_path):
            if not os.path.isfile(path):
                raise DataError(f'{path}: shard file missing (prepare the data again)')
        if not verified and _sha256((ids_path, index_path)) != record['sha256']:
            raise DataError(f'{directory}: shard {self.name} does not match its sha256 in '
                            f'{MANIFEST} (a corrupt or altered file; prepare the data again)')
        try:
            self.ids = np.load(ids_path, mmap_mode='r', allow_pickle=False)
            self.index = np.load(index_path, mmap_mode='r', allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f'{ids_path}: not a readable shard ({err})') from err
        self._check(ids_path, record, vocab_size)

    def _check(self, path, record, vocab_size):
        index, ids, examples = self.index, self.ids, record['examples']
        if index.dtype != np.int64 or index.shape != (examples, 4) or ids.ndim != 1 or \
                ids.dtype.kind not in 'iu':
            raise DataError(f'{path}: not a shard of {examples} examples (index '
                            f'{index.dtype}{index.shape}, ids {ids.dtype}{ids.shape})')
        lengths = index[:, 1] + index[:, 2]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if examples else lengths
        if (index[:, 1] < 1).any() or (index[:, 2] < 1).any() or \
                not np.array_equal(index[:, 0], offsets) or int(lengths.sum()) != ids.size or \
                not np.isin(index[:, 3], (0, 1)).all():
            raise DataError(f'{path}: inconsistent shard index (offsets, lengths or labels)')
        if ids.size and int(ids.max()) >= vocab_size:
            raise DataError(f'{path}: token id {int(ids.max())} is outside the vocabulary '
                            f'({vocab_size} tokens)')

    def __len__(self):
        return self.index.shape[0]

    def instance(self, local):
        offset, len_a, len_b, label = (int(x) for x in self.index[local])
        first = np.array(self.ids[offset:offset + len_a])
        second = np.array(self.ids[offset + len_a:offset + len_a + len_b])
        return first, second, label

    def close(self):
        self.ids = self.index = None  # the maps close with their last reference


def vocab_record(vocab):
    """``{'size', 'sha256'}`` of a vocabulary's tokens in id order, and its special ids."""
    digest = hashlib.sha256('\n'.join(vocab.idx_to_token).encode('utf-8')).hexdigest()
    return {'size': len(vocab), 'sha256': digest, 'pad_id': vocab.pad_id,
            'cls_id': vocab.cls_id, 'sep_id': vocab.sep_id, 'mask_id': vocab.mask_id}


def check_vocab(manifest, vocab, directory):
    """DataError unless ``vocab`` is the vocabulary the shards were prepared with."""
    saved, current = manifest['vocab'], vocab_record(vocab)
    if saved != current:
        raise DataError(f'{directory}: the shards were prepared with another vocabulary '
                        f'({saved.get("size")} tokens, sha256 {str(saved.get("sha256"))[:12]}; '
                        f'the model has {current["size"]}, {current["sha256"][:12]}); prepare '
                        f'them with the same --model')


_SHA256_LENGTH = 64
MAX_LEN_LIMIT = 8192  # the longest examples a manifest may say its shards hold
MANIFEST_COUNTS = ('documents', 'sentences', 'tokens', 'skipped_documents', 'train_examples',
                   'heldout_examples', 'train_tokens')


def _sha256_field(fields, key):
    value = fields.get(key, str, low=_SHA256_LENGTH, high=_SHA256_LENGTH)
    if any(c not in '0123456789abcdef' for c in value):
        fields.fail(key, 'a sha256 (64 lowercase hex digits)', value)


def check_shard_list(shards, split):
    """The records of ``split`` in ``shards`` (a :class:`~gluonbert.schema.Fields`): names as
    :func:`shard_name` makes them, in order."""
    records = shards.get(split, list)
    for number, record in enumerate(records):
        key = f'{split}[{number}]'
        if not isinstance(record, dict):
            shards.fail(key, 'an object (a shard record)', record)
        entry = Fields(record, shards.path, shards.what, shards.error, shards.hint,
                       f'{shards.prefix}{key}.')
        entry.only(('name', 'examples', 'tokens', 'sha256'))
        entry.get('name', str, choices=(shard_name(split, number),))
        examples = entry.get('examples', int, low=1)
        entry.get('tokens', int, low=2 * examples)
        _sha256_field(entry, 'sha256')
    return records


def check_manifest(manifest, path):
    """Check a shard manifest's fields (types, ranges, one another); returns it."""
    fields = Fields(manifest, path, 'shard manifest', DataError, 'prepare the shards again')
    fields.only(('format', 'version', 'settings', 'vocab', 'counts', 'shards', 'inputs',
                 'dtype'))
    settings = fields.object('settings')
    settings.only(('max_len', 'short_seq_prob', 'seed', 'documents_per_chunk', 'text_column',
                   'examples_per_shard', 'heldout_every', 'heldout_max'))
    settings.get('max_len', int, low=5, high=MAX_LEN_LIMIT)
    for key, low in (('examples_per_shard', 1), ('documents_per_chunk', 2),
                     ('heldout_every', 0), ('heldout_max', 0), ('seed', 0)):
        settings.get(key, int, low=low)
    settings.get('short_seq_prob', float, low=0, high=1)
    settings.get('text_column', str, low=1)
    vocab = fields.object('vocab')
    size = vocab.get('size', int, low=5)
    _sha256_field(vocab, 'sha256')
    for key in ('pad_id', 'cls_id', 'sep_id', 'mask_id'):
        vocab.get(key, int, low=0, high=size - 1, default=None)
    fields.get('dtype', str, choices=('uint16', 'int32'))
    shards = fields.object('shards')
    shards.only(SPLITS)
    examples = {split: check_shard_list(shards, split) for split in SPLITS}
    counts = fields.object('counts')
    counts.only(MANIFEST_COUNTS)
    for key in MANIFEST_COUNTS:
        counts.get(key, int, low=0)
    for split, key in (('train', 'train_examples'), ('heldout', 'heldout_examples')):
        total = sum(r['examples'] for r in examples[split])
        counts.get(key, int, choices=(total,))
    inputs = fields.get('inputs', list, low=1)
    for number, item in enumerate(inputs):
        if not isinstance(item, dict):
            fields.fail(f'inputs[{number}]', 'an object (a corpus file)', item)
        entry = Fields(item, path, 'shard manifest', DataError, fields.hint,
                       f'inputs[{number}].')
        entry.only(('path', 'bytes'))
        entry.get('path', str, low=1)
        entry.get('bytes', int, low=0)
    return manifest


def read_manifest(directory):
    """The manifest of a shard directory, checked (:func:`check_manifest`); a one-line
    DataError when missing or malformed."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise DataError(f'{directory}: no such directory (prepare it with '
                        f'gluonbert-pretrain-data)')
    if not os.path.isfile(path):
        partial = os.path.isfile(os.path.join(directory, 'progress.json'))
        raise DataError(f'{directory}: no {MANIFEST}; ' + (
            'its preparation did not finish (run the same gluonbert-pretrain-data command '
            'again to continue it)' if partial else 'not a directory of prepared shards'))
    manifest = load_json(path, 'shard manifest', DataError)
    if manifest.get('format') != FORMAT:
        raise DataError(f'{path}: not a gluonbert shard manifest')
    check_format_version(manifest, path, FORMAT_VERSION, 'shard', 'prepare the shards again',
                         DataError)
    return check_manifest(manifest, path)


def manifest_digest(manifest):
    """sha256 of what decides the instances: settings, vocabulary and shard digests."""
    decisive = {key: manifest[key] for key in ('settings', 'vocab', 'shards', 'dtype')}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode('utf-8')).hexdigest()
