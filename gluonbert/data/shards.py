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

from .._io import atomic_write, check_format_version, read_json_object
from ..errors import DataError

__all__ = ['FORMAT', 'FORMAT_VERSION', 'MANIFEST', 'SPLITS', 'shard_name', 'shard_paths',
           'write_shard', 'Shard', 'read_manifest', 'vocab_record', 'check_vocab']

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


_MANIFEST_KEYS = {'format': str, 'version': int, 'settings': dict, 'vocab': dict,
                  'counts': dict, 'shards': dict, 'inputs': list, 'dtype': str}


def read_manifest(directory):
    """The manifest of a shard directory, checked; DataError when missing or malformed."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise DataError(f'{directory}: no such directory (prepare it with '
                        f'gluonbert-pretrain-data)')
    if not os.path.isfile(path):
        partial = os.path.isfile(os.path.join(directory, 'progress.json'))
        raise DataError(f'{directory}: no {MANIFEST}; ' + (
            'its preparation did not finish (run the same gluonbert-pretrain-data command '
            'again to continue it)' if partial else 'not a directory of prepared shards'))
    manifest = read_json_object(path, 'shard manifest', DataError)
    if manifest.get('format') != FORMAT:
        raise DataError(f'{path}: not a gluonbert shard manifest')
    check_format_version(manifest, path, FORMAT_VERSION, 'shard', 'prepare the shards again',
                         DataError)
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise DataError(f'{path}: {key!r} is missing or not {kind.__name__}')
    max_len = manifest['settings'].get('max_len')
    if not isinstance(max_len, int) or isinstance(max_len, bool) or not 5 <= max_len <= 4096:
        raise DataError(f'{path}: settings.max_len is missing or not a length ({max_len!r})')
    if not isinstance(manifest['vocab'].get('size'), int) or \
            not isinstance(manifest['vocab'].get('sha256'), str):
        raise DataError(f'{path}: vocab record is missing its size or sha256')
    for split in SPLITS:
        records = manifest['shards'].get(split)
        if not isinstance(records, list) or not all(
                isinstance(r, dict) and isinstance(r.get('name'), str) and
                isinstance(r.get('examples'), int) and r['examples'] >= 0 and
                isinstance(r.get('sha256'), str) and os.sep not in r['name'] and
                not r['name'].startswith('.') for r in records):
            raise DataError(f'{path}: malformed shard list {split!r}')
    return manifest


def manifest_digest(manifest):
    """sha256 of what decides the instances: settings, vocabulary and shard digests."""
    decisive = {key: manifest[key] for key in ('settings', 'vocab', 'shards', 'dtype')}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode('utf-8')).hexdigest()
