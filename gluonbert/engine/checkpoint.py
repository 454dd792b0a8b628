"""Checkpoints as transactions: a crash at any point leaves the previous checkpoint whole.

Layout of a checkpoint directory (``KIND`` is ``epoch`` for fine-tuning, ``step`` for
pre-training)::

    checkpoint_dir/
      KIND-0003/     one whole checkpoint: model.params, trainer.states, state.json (the
                     training state, what the run was, the files' sizes and sha256)
      last           the name of the current checkpoint, "KIND-0003": replaced (os.replace)
                     only once that directory is complete on disk
      best.params    a hard link to the best checkpoint's model.params (fine-tuning)
      .lock          held by the run that writes here (gluonbert._io.DirectoryLock)

:func:`commit_checkpoint` writes one; :class:`CheckpointWriter` does it in a background
thread; :func:`gluonbert.engine.resume.load_checkpoint` reads one back, checked.
"""
import json
import os
import re
import shutil
import tempfile
import threading

from .._io import (atomic_write, boundary, check_space, file_digest, fsync_directory, make_public,
                   ndarray_file_bytes, save_ndarrays, write_text, writing)
from ..errors import CheckpointError
from ..schema import load_json
from . import mxnet_internals as internals
from .runstate import check_state
from .states import assign_parameters, checked_parameters, trainer_state_arrays

__all__ = ['CHECKPOINT_FORMAT', 'KINDS', 'CheckpointWriter', 'commit_checkpoint',
           'checkpoint_name', 'checkpoint_paths', 'current_checkpoint', 'read_state',
           'load_best_parameters', 'prune', 'refuse_first_layout', 'held_checkpoint',
           'discard_checkpoints']

CHECKPOINT_FORMAT = 'gluonbert-checkpoint-2'
KINDS = ('epoch', 'step')
POINTER_FILE, BEST_FILE = 'last', 'best.params'
PARAMS_FILE, STATES_FILE, STATE_FILE = 'model.params', 'trainer.states', 'state.json'
LEGACY_FILES = ('last.params', 'last.states', 'last.json')  # the first layout (refused)
FIRST_LAYOUT = 'gluonbert-checkpoint-1'


def checkpoint_name(kind, number):
    """``'epoch-0003'``, ``'step-0120'``: the directory of checkpoint ``number``."""
    return f'{kind}-{number:04d}'


def _is_checkpoint_name(name, kind):
    return re.fullmatch(f'{kind}-[0-9]{{4,}}', name) is not None


def checkpoint_paths(checkpoint_dir, name):
    """The files of checkpoint ``name`` (e.g. ``'epoch-0003'``) in ``checkpoint_dir``."""
    directory = os.path.join(checkpoint_dir, name)
    return {'dir': directory, 'params': os.path.join(directory, PARAMS_FILE),
            'states': os.path.join(directory, STATES_FILE),
            'state': os.path.join(directory, STATE_FILE)}


def sha256(path):
    """The hex SHA-256 of a checkpoint file."""
    return file_digest(path, 'sha256', chunk=1 << 22)


def _file_record(path):
    return {'bytes': os.path.getsize(path), 'sha256': sha256(path)}


def is_record(record):
    """Whether ``record`` is a file's ``{'bytes', 'sha256'}`` (e.g. from a damaged state)."""
    return isinstance(record, dict) and isinstance(record.get('bytes'), int) and \
        isinstance(record.get('sha256'), str)


def verify_file(path, record, hint='start the run over with --overwrite'):
    """Check a checkpoint file against its size and sha256 before anything reads it."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path} is missing; {hint}')
    size = os.path.getsize(path)
    if size != record['bytes'] or sha256(path) != record['sha256']:
        raise CheckpointError(f'{path}: damaged or truncated ({size} bytes, expected '
                              f'{record["bytes"]}; checksum mismatch); {hint}')


def read_json(path, what):
    """A JSON object from ``path``, read strictly (:func:`gluonbert.schema.load_json`); a
    one-line CheckpointError if it is not one."""
    return load_json(path, what, CheckpointError)


def read_state(path, kind='epoch'):
    """A checkpoint's state.json, checked (:func:`gluonbert.engine.runstate.check_state`:
    every field's type and range, and the fields against each other and the checkpoint's
    name) to hold what resuming a checkpoint of ``kind`` reads."""
    state = read_json(path, 'checkpoint state')
    if state.get('format') != CHECKPOINT_FORMAT:
        shown = state.get('format')
        shown = shown if isinstance(shown, str) and len(shown) <= 60 else type(shown).__name__
        raise CheckpointError(f'{path}: unknown checkpoint format {shown!r}; start the run over '
                              f'with --overwrite')
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    number = int(name.split('-', 1)[1]) if _is_checkpoint_name(name, kind) else None
    return check_state(state, path, kind, number)


def refuse_first_layout(checkpoint_dir):
    """Raise the one-line CheckpointError for a checkpoint of the first layout (``last.json``,
    ``last.params``, ``last.states``), which this gluonbert does not read."""
    raise CheckpointError(f'{checkpoint_dir}: a checkpoint of an older gluonbert (the first '
                          f'layout, {FIRST_LAYOUT}: last.json, last.params, last.states); '
                          f'this version resumes {CHECKPOINT_FORMAT} only: start the run over '
                          f'with --overwrite')


def current_checkpoint(checkpoint_dir, kind='epoch'):
    """The name the pointer file gives (its directory checked to exist); None if none."""
    pointer = os.path.join(checkpoint_dir, POINTER_FILE)
    try:
        with open(pointer, 'rb') as f:
            raw = f.read(256)  # a name is a few bytes: a longer file is no pointer
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raw = b'?'
    try:
        name = raw.decode('utf-8').strip()
    except UnicodeDecodeError:
        name = '?'
    if not _is_checkpoint_name(name, kind):
        raise CheckpointError(f'{pointer}: damaged checkpoint pointer (it should name a '
                              f'checkpoint such as {checkpoint_name(kind, 1)}); start the run over '
                              f'with --overwrite')
    if not os.path.isdir(os.path.join(checkpoint_dir, name)):
        raise CheckpointError(f'{pointer} names {name}, which is missing; start the run over '
                              f'with --overwrite')
    return name


def _current_name_or_none(checkpoint_dir, kind):
    try:
        return current_checkpoint(checkpoint_dir, kind)
    except CheckpointError:
        return None


def link_or_copy(source, path):
    """``path`` as a hard link to the (complete, never rewritten in place) file ``source``,
    atomically; a copy where the filesystem has no hard links."""
    tmp = f'{path}.{os.getpid()}.link'
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        atomic_write(path, lambda out: shutil.copyfile(source, out),
                     needed=os.path.getsize(source))
        return
    fsync_directory(os.path.dirname(path))


def _is_leftover(name, kind):
    """Files a crash can leave in a checkpoint directory: staging directories and
    temporary files (never the lock, the pointer or best.params)."""
    return (name.startswith(f'.{kind}-') and '.tmp-' in name) or name.endswith('.link') or \
        (name.startswith(f'.{POINTER_FILE}.') and name.endswith('.tmp')) or \
        (name.startswith(f'.{BEST_FILE}.') and name.endswith('.tmp'))


def prune(checkpoint_dir, keep, kind='epoch'):
    """Remove every checkpoint but ``keep``, the first layout's files and leftovers."""
    for name in os.listdir(checkpoint_dir):
        if name == keep or not (_is_checkpoint_name(name, kind) or name in LEGACY_FILES or
                                _is_leftover(name, kind)):
            continue
        path = os.path.join(checkpoint_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def held_checkpoint(checkpoint_dir, kind='epoch'):
    """The name of a checkpoint of ``kind`` in ``checkpoint_dir`` (the current one, else
    any, the first layout's included), or None where it holds none: whether a run started
    there without resuming would replace another run's checkpoints."""
    if not os.path.isdir(checkpoint_dir):
        return None
    current = _current_name_or_none(checkpoint_dir, kind)
    if current is not None:
        return current
    names = sorted(n for n in os.listdir(checkpoint_dir)
                   if _is_checkpoint_name(n, kind) or n in LEGACY_FILES)
    return names[-1] if names else None


def discard_checkpoints(checkpoint_dir, kind='epoch'):
    """Remove every checkpoint of ``kind`` in ``checkpoint_dir``, its pointer and
    ``best.params`` (a run that starts over, ``overwrite=True``); the lock stays."""
    for name in (POINTER_FILE, BEST_FILE):
        try:
            os.unlink(os.path.join(checkpoint_dir, name))
        except FileNotFoundError:
            pass
    prune(checkpoint_dir, keep=None, kind=kind)
    fsync_directory(checkpoint_dir)


def _write_state(path, data):
    with open(path, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _check_room(paths, sizes):
    """Refuse a checkpoint that cannot fit, before anything of it is written."""
    if sizes:
        biggest = max(sizes, key=sizes.get)
        check_space(paths['dir'], sum(sizes.values()), largest=sizes[biggest],
                    largest_path=os.path.join(paths['dir'], biggest))


def commit_checkpoint(checkpoint_dir, name, params, optimizer_states, state, is_best, best,
                      kind='epoch'):
    """Write checkpoint ``name`` whole, then make it the current one; returns its ``best``
    record (``{'epoch' or 'step', 'bytes', 'sha256'}`` of the best parameters so far).

    The files go to a hidden staging directory, each flushed to disk, with ``state.json``
    (their sizes and sha256) last; the directory is renamed to ``name``, and only then
    does the pointer file ``last`` name it (one ``os.replace``). A crash at any point
    leaves the previous checkpoint current and whole. ``best.params`` is linked after the
    pointer moves (a resume repairs it if a crash came in between); older checkpoints and
    the leftovers of interrupted ones are removed last. :func:`gluonbert._io.boundary` is
    called between the steps.

    A full disk: a checkpoint whose files (their sizes known from the arrays) cannot fit is
    refused before anything is written; a write that still runs out of room removes the
    staging directory (or the renamed one, if the pointer could not be written). Either
    way the previous checkpoint stays current, and the error is one
    :class:`~gluonbert.errors.StorageError` line naming the file.
    """
    paths = checkpoint_paths(checkpoint_dir, name)
    contents = [(file_name, arrays) for file_name, arrays in
                ((PARAMS_FILE, params), (STATES_FILE, optimizer_states))
                if arrays is not None]  # dist_async: the optimizer states live on the servers
    sizes = {file_name: ndarray_file_bytes(arrays) for file_name, arrays in contents}
    os.makedirs(checkpoint_dir, exist_ok=True)
    _check_room(paths, sizes)
    with writing(paths['dir']) as target:
        staging = tempfile.mkdtemp(dir=checkpoint_dir, prefix=f'.{name}.tmp-')
        try:
            boundary('checkpoint.staging', staging)
            files = {}
            for file_name, arrays in contents:
                path = os.path.join(staging, file_name)
                shown = os.path.join(paths['dir'], file_name)
                target.expect(shown, sizes[file_name], total=sum(sizes.values()))
                save_ndarrays(path, arrays, name=shown, check=False)  # flushed to disk
                files[file_name] = _file_record(path)
                boundary(f'checkpoint.{file_name}', path)
            if is_best:
                best = {kind: state[kind], **files[PARAMS_FILE]}
            data = json.dumps(dict(state, format=CHECKPOINT_FORMAT, files=files, best=best),
                              indent=1, allow_nan=False) + '\n'
            total = sum(sizes.values()) + len(data)
            target.expect(paths['state'], len(data), total=total)  # ASCII: json escapes

            _write_state(os.path.join(staging, STATE_FILE), data.encode('ascii'))
            make_public(staging)  # mkdtemp's directory is private (0700)
            fsync_directory(staging)
            boundary('checkpoint.state.json', staging)
            if os.path.exists(paths['dir']):  # an interrupted run's, or a run started over's
                if _current_name_or_none(checkpoint_dir, kind) == name:
                    os.unlink(os.path.join(checkpoint_dir, POINTER_FILE))
                shutil.rmtree(paths['dir'])
            os.replace(staging, paths['dir'])
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_directory(checkpoint_dir)
        boundary('checkpoint.renamed', paths['dir'])
        pointer = os.path.join(checkpoint_dir, POINTER_FILE)
        target.expect(pointer, len(name) + 1, total=total + len(name) + 1)
        try:
            write_text(pointer, name + '\n')
        except BaseException:
            if _current_name_or_none(checkpoint_dir, kind) != name:  # the previous stays
                shutil.rmtree(paths['dir'], ignore_errors=True)
            raise
        boundary('checkpoint.pointer', checkpoint_dir)
        if is_best:
            target.expect(os.path.join(checkpoint_dir, BEST_FILE))
            link_or_copy(paths['params'], os.path.join(checkpoint_dir, BEST_FILE))
            boundary('checkpoint.best', checkpoint_dir)
    prune(checkpoint_dir, keep=name, kind=kind)
    boundary('checkpoint.pruned', checkpoint_dir)
    return best


class CheckpointWriter:
    """Writes checkpoints in a background thread, so that training goes on meanwhile.

    ``save`` snapshots the parameters and optimizer states to CPU copies (ordered by the
    engine before any later update), then commits them (:func:`commit_checkpoint`), one
    checkpoint at a time. A failed write raises at the next ``save`` or ``wait``.
    """

    def __init__(self, kind='epoch'):
        self.kind = kind
        self._thread = None
        self._error = None
        self.best = None  # the current checkpoint's record of the best parameters

    def save(self, checkpoint_dir, name, net, trainer, state, is_best, states=True):
        """Start writing checkpoint ``name`` of ``net`` and ``trainer`` (``states``: with
        the optimizer states), with ``state`` (JSON values) as its state.json."""
        self.wait()
        params = {name_: internals.reduced_data(param)
                  for name_, param in internals.structural_parameters(net).items()}
        optimizer_states = trainer_state_arrays(trainer, snapshot=True) if states else None
        state = json.loads(json.dumps(state))  # a copy: the caller's history grows
        self._thread = threading.Thread(
            target=self._run, args=(checkpoint_dir, name, params, optimizer_states, state,
                                    is_best, self.best, self.kind),
            name='gluonbert-checkpoint')
        self._thread.start()

    def _run(self, *args):
        try:
            self.best = commit_checkpoint(*args)
        except BaseException as err:  # noqa: BLE001  (raised by wait, in the caller's thread)
            self._error = err

    def wait(self):
        """Block until the checkpoint being written is complete; raise its error if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_best_parameters(net, checkpoint_dir, ctx):
    """Load ``checkpoint_dir/best.params`` into ``net``, checked against the current
    checkpoint's record of it (its size and sha256).

    Parameters
    ----------
    net : Block
        The model the checkpoints were written for.
    checkpoint_dir : str
    ctx : mx.Context or list of mx.Context
        Where ``net``'s parameters live.

    Returns
    -------
    bool
        False (nothing loaded) where there is no best.params.

    Raises
    ------
    CheckpointError
        best.params is damaged or does not fit ``net``.
    """
    path = os.path.join(checkpoint_dir, BEST_FILE)
    if not os.path.exists(path):
        return False
    name = current_checkpoint(checkpoint_dir)
    if name is not None:
        best = read_state(checkpoint_paths(checkpoint_dir, name)['state']).get('best')
        if is_record(best):
            verify_file(path, best, hint="delete it to keep the last epoch's weights")
    contexts = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    assign_parameters(net, checked_parameters(net, path), contexts)
    return True
