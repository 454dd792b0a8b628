"""Prepare a pre-training corpus once into shards (:func:`prepare_shards`).

The corpus is streamed: documents are read in order, packed a chunk at a time
(:func:`gluonbert.data.pretraining.pack_chunk`) in ``workers`` processes with a bounded
number of chunks in flight, and the instances are written in order into fixed-size shards.
Memory holds a few chunks and one shard, whatever the corpus size, and the shards are the
same for any number of workers.

Every ``held-out_every``-th instance (until ``heldout_max`` of them) goes to the held-out
split instead of training.

A run that stops (killed, Ctrl-C, a full disk) keeps the shards it wrote: each shard commit
ends with ``progress.json`` (the position in the corpus after the shard, the shard records,
the held-out instances not yet in a shard), and the same call continues from there and
ends with the same shards as an uninterrupted run. ``manifest.json`` is written last; its
presence means the directory is complete.
"""
import collections
import json
import multiprocessing
import os


from .._io import DirectoryLock, boundary, write_text
from ..errors import DataError, UsageError
from ..schema import Fields, load_json
from .corpus import expand_inputs, iter_documents
from .pretraining import chunk_documents, ids_dtype, pack_chunk
from .shards import (FORMAT, FORMAT_VERSION, MANIFEST, SPLITS, Shard, check_manifest,
                     check_shard_list, shard_name, shard_paths, vocab_record, write_shard)

__all__ = ['prepare_shards', 'PROGRESS']

PROGRESS = 'progress.json'
_PENDING = 'heldout-pending'
_COUNTS = ('documents', 'sentences', 'tokens', 'skipped_documents')


def _json(value):
    return json.dumps(value, indent=1, sort_keys=True, allow_nan=False) + '\n'


def _check_progress(saved, path):
    """Check ``progress.json``'s own fields (its identity is compared by the caller)."""
    fields = Fields(saved, path, 'preparation progress', DataError,
                    'pass --overwrite to prepare again')
    position = fields.get('position', list, low=2, high=2)
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in position):
        fields.fail('position', 'two integers >= 0 (chunk, instances)', position)
    fields.get('instances_seen', int, low=0)
    shards = fields.object('shards')
    shards.only(SPLITS)
    for split in SPLITS:
        check_shard_list(shards, split)
    counts = fields.object('counts')
    counts.only(_COUNTS)
    for key in _COUNTS:
        counts.get(key, int, low=0)
    pending = fields.object('pending')  # every commit records it
    pending.only(('name', 'examples', 'tokens', 'sha256'))
    pending.get('name', str, choices=(_PENDING,))
    examples = pending.get('examples', int, low=0)
    pending.get('tokens', int, low=2 * examples)
    pending.get('sha256', str, low=64, high=64)
    committed = sum(r['examples'] for split in SPLITS for r in saved['shards'][split])
    fields.get('instances_seen', int, choices=(committed + examples,))
    return saved


def _differences(saved, current):
    return [key for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


class _Progress:
    """What is committed: the position after the last shard, and the records so far."""

    def __init__(self, identity, saved=None):
        saved = saved or {}
        self.identity = identity
        self.chunk, self.skip = saved.get('position', (0, 0))
        self.seen = saved.get('instances_seen', 0)
        self.shards = {split: list(saved.get('shards', {}).get(split, [])) for split in SPLITS}
        self.counts = dict(saved.get('counts') or dict.fromkeys(_COUNTS, 0))
        self.pending = saved.get('pending')  # the held-out instances not in a shard yet

    def record(self, chunk, skip):
        return {**self.identity, 'position': [chunk, skip], 'instances_seen': self.seen,
                'shards': self.shards, 'counts': self.counts}


def _identity(paths, vocab, settings):
    return {'format': FORMAT, 'version': FORMAT_VERSION, 'settings': settings,
            'vocab': vocab_record(vocab), 'dtype': ids_dtype(len(vocab)).name,
            'inputs': [{'path': p, 'bytes': os.path.getsize(p)} for p in paths]}


def _remove_outputs(directory):
    for name in os.listdir(directory):
        if name.endswith('.npy') or name in (MANIFEST, PROGRESS):
            os.unlink(os.path.join(directory, name))


def _start(directory, identity, overwrite):
    """``(manifest or None, saved progress or None)``: a finished directory of the same
    preparation, a partial one to continue, or neither (a fresh start)."""
    for name, what in ((MANIFEST, 'shard manifest'), (PROGRESS, 'preparation progress')):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        saved = load_json(path, what, DataError)
        differing = _differences({k: saved.get(k) for k in identity}, identity)
        if not differing:
            return (check_manifest(saved, path), None) if name == MANIFEST else \
                (None, _check_progress(saved, path))
        if not overwrite:
            raise UsageError(f'{directory} holds shards of another preparation '
                             f'({", ".join(differing)} differ); pass --overwrite to replace '
                             f'them, or choose another --output')
        _remove_outputs(directory)
        return None, None
    if overwrite:
        _remove_outputs(directory)
    return None, None


class _Pool:
    """Chunks packed in order by ``workers`` processes, at most ``2 * workers`` in flight
    (the corpus is read only as fast as it is packed)."""

    def __init__(self, workers, options):
        self.workers, self.options = workers, options
        self.pool = None
        if workers > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')
            self.pool = context.Pool(workers, initializer=_set_worker_options,
                                     initargs=(options,))

    def map(self, chunks):
        if self.pool is None:
            for chunk in chunks:
                yield _pack(chunk, self.options)
            return
        pending = collections.deque()
        for chunk in chunks:
            pending.append(self.pool.apply_async(_pack_in_worker, (chunk,)))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# a worker process's settings, set once when it starts (in that process only)
_WORKER_OPTIONS = {}


def _set_worker_options(options):
    _WORKER_OPTIONS.update(options)


def _pack_in_worker(chunk):
    return _pack(chunk, _WORKER_OPTIONS)


def _pack(chunk, options):
    index, documents = chunk
    if documents is None:  # a chunk already in the shards: only its place is kept
        return index, None, None
    instances, counts = pack_chunk(documents, index=index, **options)
    return index, instances, counts


class _Writer:
    """Instances routed to their split, written a full shard at a time, each commit
    recorded in ``progress.json``."""

    def __init__(self, directory, progress, settings, dtype, vocab_size):
        self.directory, self.progress, self.dtype = directory, progress, dtype
        self.size = settings['examples_per_shard']
        self.every, self.most = settings['heldout_every'], settings['heldout_max']
        self.buffers = {split: [] for split in SPLITS}
        record = progress.pending
        if record is not None:
            if not (isinstance(record, dict) and record.get('name') == _PENDING and
                    isinstance(record.get('examples'), int) and
                    isinstance(record.get('sha256'), str)):
                raise DataError(f'{directory}: damaged {PROGRESS} (its pending record); '
                                f'pass --overwrite to prepare again')
            shard = Shard(directory, record, vocab_size)  # checked: sha256, structure
            self.buffers['heldout'] = [shard.instance(i) for i in range(len(shard))]
            shard.close()
        self.heldout = sum(r['examples'] for r in progress.shards['heldout']) + \
            len(self.buffers['heldout'])

    def add(self, instance, chunk, skip):
        split = 'train'
        if self.every and self.progress.seen % self.every == self.every - 1 and \
                self.heldout < self.most:
            split = 'heldout'
            self.heldout += 1
        self.progress.seen += 1
        self.buffers[split].append(instance)
        if len(self.buffers[split]) == self.size:
            self.flush(split)
            if split == 'train':  # a commit holds every instance before its position: the
                # held-out ones in shards or pending, none of training's in a buffer (a
                # held-out shard written before is written again, the same, on a resume)
                self.commit(chunk, skip)

    def flush(self, split):
        if self.buffers[split]:
            records = self.progress.shards[split]
            records.append(write_shard(self.directory, shard_name(split, len(records)),
                                       self.buffers[split], self.dtype))
            self.buffers[split] = []

    def commit(self, chunk, skip):
        """Record the position after (``chunk``, ``skip`` instances of it), and the held-out
        instances not in a shard yet."""
        record = self.progress.record(chunk, skip)
        record['pending'] = write_shard(self.directory, _PENDING, self.buffers['heldout'],
                                        self.dtype)
        write_text(os.path.join(self.directory, PROGRESS), _json(record))
        boundary('prepare.commit', self.directory)


def prepare_shards(inputs, output_dir, tokenizer, vocab, *, max_len=128, short_seq_prob=0.1,
                   seed=0, workers=1, examples_per_shard=8192, documents_per_chunk=256,
                   heldout_every=20, heldout_max=5000, text_column='text', overwrite=False,
                   progress=True):
    """Prepare text files into pre-training shards; returns the manifest (a dict).

    Parameters
    ----------
    inputs : str or list of str
        Files or glob patterns (see :func:`gluonbert.data.iter_documents` for formats).
    output_dir : str
        Created if missing; locked while preparing.
    tokenizer, vocab
        WordPiece tokenizer and vocabulary (of the model to pre-train).
    max_len, short_seq_prob, documents_per_chunk, seed
        Packing (see :mod:`gluonbert.data.pretraining`).
    workers : int
        Processes that tokenize and pack; the shards do not depend on it.
    examples_per_shard : int
    heldout_every, heldout_max : int
        Every ``heldout_every``-th instance, up to ``heldout_max``, is held out (0: none).
    text_column : str
        Of CSV/JSON-lines documents.
    overwrite : bool
        Replace the shards of another preparation in ``output_dir`` (refused otherwise).
        A finished directory of the same preparation is kept as it is (delete it to
        prepare it again).
    progress : bool
        A tqdm bar over the bytes read.

    A finished directory of the same preparation is returned as it is; a partial one is
    continued.
    """
    from tqdm.auto import tqdm
    for name, value, least in (('max_len', max_len, 5), ('workers', workers, 1),
                               ('examples_per_shard', examples_per_shard, 1),
                               ('documents_per_chunk', documents_per_chunk, 2),
                               ('heldout_every', heldout_every, 0),
                               ('heldout_max', heldout_max, 0)):
        if not isinstance(value, int) or value < least:
            raise UsageError(f'{name} must be an integer >= {least}, got {value!r}')
    if not 0 <= short_seq_prob <= 1:
        raise UsageError(f'short_seq_prob must be in [0, 1], got {short_seq_prob}')
    paths = expand_inputs(inputs)
    settings = {'max_len': max_len, 'short_seq_prob': short_seq_prob, 'seed': seed,
                'documents_per_chunk': documents_per_chunk, 'text_column': text_column,
                'examples_per_shard': examples_per_shard, 'heldout_every': heldout_every,
                'heldout_max': heldout_max}
    identity = _identity(paths, vocab, settings)
    dtype = ids_dtype(len(vocab))
    with DirectoryLock(output_dir):
        manifest, saved = _start(output_dir, identity, overwrite)
        if manifest is not None:
            return manifest
        state = _Progress(identity, saved)
        writer = _Writer(output_dir, state, settings, dtype, len(vocab))
        bytes_read = [0]
        total = sum(item['bytes'] for item in identity['inputs'])
        bar = tqdm(total=total, unit='B', unit_scale=True, desc='preparing', disable=not progress,
                   dynamic_ncols=True)
        chunks = ((index, docs if index >= state.chunk else None) for index, docs in
                  chunk_documents(iter_documents(paths, text_column=text_column,
                                                 bytes_read=bytes_read), documents_per_chunk))
        pool = _Pool(workers, {'tokenizer': tokenizer, 'vocab': vocab, 'max_len': max_len,
                               'short_seq_prob': short_seq_prob, 'seed': seed, 'dtype': dtype})
        try:
            for index, instances, counts in pool.map(chunks):
                bar.update(bytes_read[0] - bar.n)
                if instances is None:
                    continue
                for k in range(state.skip if index == state.chunk else 0, len(instances)):
                    writer.add(instances[k], index, k + 1)
                for key in _COUNTS:
                    state.counts[key] += counts[key]
                bar.set_postfix(examples=state.seen, refresh=False)
        finally:
            pool.close()
            bar.close()
        return _finish(output_dir, writer, state, identity)


def _finish(directory, writer, state, identity):
    for split in SPLITS:
        writer.flush(split)
    examples = {split: sum(r['examples'] for r in state.shards[split]) for split in SPLITS}
    if examples['train'] == 0:
        raise DataError('the corpus has no training examples: pre-training needs at least 2 '
                        'documents with text')
    manifest = {**identity, 'shards': state.shards,
                'counts': {**state.counts, 'train_examples': examples['train'],
                           'heldout_examples': examples['heldout'],
                           'train_tokens': sum(r['tokens'] for r in state.shards['train'])}}
    write_text(os.path.join(directory, MANIFEST), _json(manifest))
    for path in (*shard_paths(directory, _PENDING), os.path.join(directory, PROGRESS)):
        if os.path.exists(path):
            os.unlink(path)
    return manifest
