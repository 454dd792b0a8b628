"""What a checkpoint resumes, and the checks before it does.

- :func:`run_record`: what a run must match to resume a checkpoint (the settings that
  change the results, label names, model configuration, data fingerprints);
- :func:`load_checkpoint`: the current checkpoint into a model and a trainer, every file
  checked against its size and sha256 first, nothing unpickled;
- :func:`rewrite_metrics` / :func:`append_metrics`: a metrics file with exactly one line
  per record of the resumed run.
"""
import hashlib
import json
import os

import numpy as np
import mxnet as mx

from .._io import append_text, boundary, write_text
from ..errors import CheckpointError
from .checkpoint import (BEST_FILE, PARAMS_FILE, STATES_FILE, checkpoint_paths,
                         current_checkpoint, is_record, link_or_copy, prune, read_state,
                         refuse_first_layout, sha256,
                         verify_file)
from .states import assign_parameters, checked_parameters, load_trainer_states

__all__ = ['data_fingerprint', 'run_record', 'run_difference', 'load_checkpoint',
           'rewrite_metrics', 'append_metrics']


def data_fingerprint(data):
    """``{'examples', 'sha256'}`` of the examples of ``data`` (batches of ``(words,
    valid_length, segments, label)``): each example's tokens, segments (to its valid
    length) and label, hashed, in sorted order; so the fingerprint does not depend on the
    batching or the shuffling (which the settings fix)."""
    digests = []
    for batch in data:
        words, valid_length, segments, label = (
            x.asnumpy() if isinstance(x, mx.nd.NDArray) else np.asarray(x) for x in batch)
        lengths = valid_length.astype(np.int64).reshape(-1)
        for row, length in enumerate(lengths):
            example = hashlib.sha256(words[row, :length].astype(np.int64).tobytes())
            example.update(segments[row, :length].astype(np.int64).tobytes())
            example.update(label[row:row + 1].astype(np.int64).tobytes())
            digests.append(example.digest())
    digest = hashlib.sha256()
    for example in sorted(digests):
        digest.update(example)
    return {'examples': len(digests), 'sha256': digest.hexdigest()}


def run_record(net, settings, train_data, test_data=None):
    """What a checkpoint must match to be resumed: ``settings`` (JSON values that change
    the results), the label names, the model configuration and the fingerprints
    (``{'examples', 'sha256'}``) of the training and test data."""
    config = getattr(net, 'config', None)
    labels = getattr(net, 'label_names', None)
    return json.loads(json.dumps({
        'settings': settings,
        'label_names': list(labels) if labels else None,
        'model': config.to_dict() if hasattr(config, 'to_dict') else None,
        'train_data': train_data, 'test_data': test_data}))


def _shown(value, other=None):
    """``value`` for a message; quoted as JSON where it is a string and ``other`` (what it
    is compared with) is not, so that "1.0" and 1.0 do not read the same."""
    if value is None:
        return 'none'
    if isinstance(value, str) and (other is None or isinstance(other, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _data_shown(record):
    return (f'{record["examples"]} examples, sha256 {record["sha256"][:12]}' if record
            else 'none')


def run_difference(saved, current):
    """What differs between a checkpoint's run record and this run's (one phrase), or
    None. The first kind of difference found is named: labels, model, settings, data."""
    saved_labels, labels = saved.get('label_names'), current['label_names']
    if saved_labels is not None and labels is not None and saved_labels != labels:
        return (f'label names differ (checkpoint: {", ".join(map(str, saved_labels))}; '
                f'this run: {", ".join(map(str, labels))})')
    saved_model, model = saved.get('model'), current['model']
    if saved_model is not None and model is not None and saved_model != model:
        keys = [k for k in sorted(set(saved_model) | set(model))
                if k not in saved_model or k not in model or saved_model[k] != model[k]]

        def shown(record, key):
            other = (model if record is saved_model else saved_model).get(key)
            return _shown(record[key], other) if key in record else 'not recorded'
        return 'the model differs (' + ', '.join(
            f'{k}: {shown(saved_model, k)} in the checkpoint, {shown(model, k)} in this run'
            for k in keys) + ')'
    saved_settings, settings = saved.get('settings') or {}, current['settings']
    keys = list(settings) + [k for k in saved_settings if k not in settings]
    def shown(record, key):
        other = (settings if record is saved_settings else saved_settings).get(key)
        return _shown(record[key], other) if key in record else 'not recorded'
    differences = [f'{k} differs (checkpoint: {shown(saved_settings, k)}; this run: '
                   f'{shown(settings, k)})'
                   for k in keys if k not in saved_settings or k not in settings or
                   saved_settings[k] != settings[k]]
    if differences:
        return '; '.join(differences)
    for key, what in (('train_data', 'the training data differ'),
                      ('test_data', 'the test data differ')):
        if saved.get(key) != current[key]:
            return (f'{what} (checkpoint: {_data_shown(saved.get(key))}; this run: '
                    f'{_data_shown(current[key])})')
    return None


def _repair_best(checkpoint_dir, paths, state, kind):
    """Link best.params to the current checkpoint's parameters where its state says they
    are the best and a crash came before the link."""
    best = state.get('best')
    if not is_record(best) or best.get(kind) != state[kind]:
        return
    path = os.path.join(checkpoint_dir, BEST_FILE)
    try:
        if os.path.samefile(path, paths['params']):
            return
    except OSError:
        pass
    if os.path.isfile(path) and os.path.getsize(path) == best['bytes'] and \
            sha256(path) == best['sha256']:
        return
    link_or_copy(paths['params'], path)


def load_checkpoint(checkpoint_dir, net, trainer, contexts, run=None, states=True,
                    kind='epoch'):
    """Load ``checkpoint_dir``'s current checkpoint into ``net`` and ``trainer``; returns
    its state (as state.json holds it), or None where there is no checkpoint.

    ``run`` (this run's :func:`run_record`; the writing worker's only) is compared with
    the checkpoint's first; every file is checked against its size and sha256 before it
    is read; nothing is unpickled. ``states=False`` (``dist_async``, whose servers hold the
    optimizer) loads the parameters only. The writing worker then finishes what a crash
    interrupted (best.params, older checkpoints).

    Raises
    ------
    CheckpointError
        One line naming the file, or what differs from this run.
    """
    name = current_checkpoint(checkpoint_dir, kind)
    if name is None:
        if os.path.exists(os.path.join(checkpoint_dir, 'last.json')):
            refuse_first_layout(checkpoint_dir)
        return None
    paths = checkpoint_paths(checkpoint_dir, name)
    state = read_state(paths['state'], kind)
    files = state['files']
    if run is not None:
        difference = run_difference(state['run'], run)
        if difference:
            raise CheckpointError(f'{checkpoint_dir}: cannot resume: {difference}')
    if states and STATES_FILE not in files:
        raise CheckpointError(f'{paths["dir"]} has no optimizer states (written by a '
                              f'dist_async run, whose servers hold them); resume it with '
                              f'--kvstore dist_async')
    needed = {'params': PARAMS_FILE, **({'states': STATES_FILE} if states else {})}
    for key, file_name in needed.items():
        if not is_record(files.get(file_name)):
            raise CheckpointError(f'{paths["state"]}: damaged checkpoint state (no size and '
                                  f'sha256 of {file_name})')
        verify_file(paths[key], files[file_name])
    arrays = checked_parameters(net, paths['params'])
    if states:
        load_trainer_states(trainer, paths['states'])
    assign_parameters(net, arrays, contexts)
    if run is not None:  # the writing worker: finish what a crash interrupted
        _repair_best(checkpoint_dir, paths, state, kind)
        prune(checkpoint_dir, keep=name, kind=kind)
    return state


def rewrite_metrics(path, history):
    """Start ``path`` over with one line per record of ``history``: a resumed run then has
    exactly one line per record, whatever an interrupted run appended after its last
    checkpoint."""
    write_text(path, ''.join(json.dumps(record, allow_nan=False) + '\n' for record in history))


def append_metrics(path, record):
    """Append one JSON line to ``path``, flushed to disk (then ``boundary('metrics')``)."""
    # a full disk: one line, and no torn line
    append_text(path, json.dumps(record, allow_nan=False) + '\n')
    boundary('metrics', path)
