"""The schema of a checkpoint's ``state.json``, checked before a resume reads a field.

:func:`check_state` checks every field's type and range and the fields against each other
(the checkpoint's name and its counters, the counters and the run's settings, the best
score and the history), so that a damaged or edited state is one line naming the file and
the field (a :class:`~gluonbert.errors.CheckpointError`), never a traceback or a resume
from an impossible position (``epoch: -5`` once trained 7 epochs for ``--epochs 2``).
"""
import math
import re

from ..errors import CheckpointError
from ..schema import Fields

__all__ = ['check_state', 'STATE_KEYS']

HINT = 'start the run over with --overwrite'
_SHA256 = re.compile('[0-9a-f]{64}')
# every field of a state, per kind (train_loop writes 'epoch' checkpoints, pretrain_loop
# 'step' ones); both write all of them
STATE_KEYS = ('format', 'epoch', 'step', 'batches', 'history', 'best_accuracy',
              'stale_epochs', 'extra', 'seed', 'run', 'files', 'best')
_STATIC = {'epoch': 'num_epoch', 'step': 'steps'}  # the run's length, as it was started
_FILE_NAMES = ('model.params', 'trainer.states')
# the numbers of a record: fine-tuning's epoch records, pre-training's step records
_EPOCH_RECORD = {'train_loss': (0, None), 'train_accuracy': (0, 1), 'seconds': (0, None),
                 'samples_per_second': (0, None), 'lr': (0, None)}
_STEP_RECORD = {'mlm_loss': (0, None), 'mlm_accuracy': (0, 1), 'mlm_perplexity': (0, None),
                'nsp_loss': (0, None), 'nsp_accuracy': (0, 1),
                'sequences_per_second': (0, None), 'lr': (0, None)}
_EVAL_RECORD = {'mlm_loss': (0, None), 'mlm_accuracy': (0, 1), 'mlm_perplexity': (0, None),
                'nsp_loss': (0, None), 'nsp_accuracy': (0, 1)}


def _fields(obj, path, prefix=''):
    return Fields(obj, path, 'checkpoint state', CheckpointError, HINT, prefix)


def _sha256(fields, key):
    value = fields.get(key, str)
    if not _SHA256.fullmatch(value):
        fields.fail(key, 'a sha256 (64 lowercase hex digits)', value)


def _file_record(fields, key, extra=()):
    record = fields.object(key)
    record.only(('bytes', 'sha256', *extra))
    record.get('bytes', int, low=0)
    _sha256(record, 'sha256')
    return record


def _data_record(fields, key):
    if fields.get(key, dict, nullable=True) is None:
        return
    record = fields.object(key)
    record.only(('examples', 'sha256'))
    record.get('examples', int, low=0)
    _sha256(record, 'sha256')


def _check_run(fields):
    """The run record: what a resume compares (see ``resume.run_record``)."""
    run = fields.object('run')
    run.only(('settings', 'label_names', 'model', 'train_data', 'test_data'))
    settings = run.object('settings')
    for key, low in (('accumulate', 1), ('batches_per_epoch', 1), ('workers', 1)):
        if settings.has(key):
            settings.get(key, int, low=low)
    labels = run.get('label_names', list, nullable=True, low=1)
    if labels is not None:
        for index, name in enumerate(labels):
            if not isinstance(name, str):
                run.fail(f'label_names[{index}]', 'a string', name)
        if len(set(labels)) != len(labels):
            run.fail('label_names', 'distinct names', labels)
    run.get('model', dict, nullable=True)
    _data_record(run, 'train_data')
    _data_record(run, 'test_data')
    return run


def _check_record(fields, key, record, numbers, known):
    """A record's fields: each of ``numbers`` (required), ``kernels``, and no field but
    ``known`` (besides them)."""
    record_fields = _fields(record, fields.path, f'{fields.prefix}{key}.')
    record_fields.only((*numbers, 'kernels', *known))
    for name, (low, high) in numbers.items():
        record_fields.get(name, float, low=low, high=high)
    record_fields.get('kernels', str, choices=('fused', 'mxnet'), nullable=True)
    return record_fields


def _check_history(fields, kind, position):
    """The records, in order: epoch records numbered 0, 1, ... (one per epoch done); step
    records at increasing steps up to the state's."""
    history = fields.get('history', list)
    scores, last = [], 0
    for index, record in enumerate(history):
        key = f'history[{index}]'
        if not isinstance(record, dict):
            fields.fail(key, 'an object (a record)', record)
        if kind == 'epoch':
            entry = _check_record(fields, key, record, _EPOCH_RECORD,
                                  ('epoch', 'test_accuracy'))
            entry.get('epoch', int, choices=(index,))
            test = entry.get('test_accuracy', float, nullable=True, low=0, high=1)
            scores.append((test, -record['train_loss']))
        else:
            entry = _check_record(fields, key, record, _STEP_RECORD,
                                  ('step', *(f'eval_{k}' for k in _EVAL_RECORD)))
            step = entry.get('step', int, low=last + 1, high=position)
            last = step
            for name, (low, high) in _EVAL_RECORD.items():  # with held-out data only
                entry.get(f'eval_{name}', float, default=None, low=low, high=high)
            loss = record.get('eval_mlm_loss')
            scores.append((None, -(record['mlm_loss'] if loss is None else loss)))
    if kind == 'epoch' and len(history) != position + 1:
        fields.fail('history', f'{position + 1} records (one per epoch done)', history)
    return scores


def _check_best(fields, kind, scores, test_data):
    """best_accuracy is the best score of the history, stale_epochs the records since it
    (both as ``TrainState.track`` counts them)."""
    if kind == 'epoch':
        values = [test if test_data else loss for test, loss in scores]
    else:
        values = [loss for _, loss in scores]
    best = fields.get('best_accuracy', float, nullable=True)
    stale = fields.get('stale_epochs', int, low=0)
    if not values:
        if best is not None:
            fields.fail('best_accuracy', 'null before the first record', best)
        if stale:
            fields.fail('stale_epochs', '0 before the first record', stale)
        return
    if any(v is None for v in values):
        fields.fail('history', 'records with a test_accuracy (the run has test data)',
                    shown=False)
    first = max(range(len(values)), key=lambda i: (values[i], -i))
    if best != values[first]:
        fields.fail('best_accuracy', f'the best score of the history ({values[first]!r})',
                    best)
    if stale != len(values) - 1 - first:
        fields.fail('stale_epochs', f'{len(values) - 1 - first} (the records since the best)',
                    stale)


def check_state(state, path, kind, number=None):
    """Check the state ``state`` (read from ``path``) of a checkpoint of ``kind``
    (``'epoch'``/``'step'``) named with ``number`` (``epoch-0003``: 3; None: unknown);
    returns it. Raises a one-line CheckpointError naming ``path`` and the field."""
    fields = _fields(state, path)
    static = _STATIC[kind]
    fields.only((*STATE_KEYS, static))
    length = fields.get(static, int, low=1)
    run = _check_run(fields)
    settings = run.object('settings')
    accumulate = settings.get('accumulate', int, default=1)
    if kind == 'epoch':
        epoch = fields.get('epoch', int, low=0, high=length - 1)
        done = epoch + 1
        if number is not None and number != done:
            fields.fail('epoch', f'{number - 1} (the checkpoint is epoch-{number:04d})', epoch)
        # every epoch consumes its batches_per_epoch (a loader shorter than its len()
        # leaves a checkpoint this refuses) and ends with an update
        per_epoch = settings.get('batches_per_epoch', int, default=None)
        if per_epoch is None:
            step = fields.get('step', int, low=done)
            fields.get('batches', int, low=step)
        else:
            fields.get('step', int, choices=(done * math.ceil(per_epoch / accumulate),))
            fields.get('batches', int, choices=(done * per_epoch,))
        position = epoch
    else:
        fields.get('epoch', int, choices=(-1,))
        step = fields.get('step', int, low=1, high=length)
        if number is not None and number != step:
            fields.fail('step', f'{number} (the checkpoint is step-{number:04d})', step)
        fields.get('batches', int, choices=(step * accumulate,))
        position = step
    fields.get('seed', int, nullable=True, low=0)
    scores = _check_history(fields, kind, position)
    _check_best(fields, kind, scores, run.obj.get('test_data'))
    extra = fields.object('extra')
    extra.only(('window',) if kind == 'step' else ())
    if kind == 'step':
        window = extra.get('window', list, default=None, low=7, high=7)
        for index, value in enumerate(window or ()):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                extra.fail(f'window[{index}]', 'a finite number >= 0', value)
    files = fields.object('files')
    files.only(_FILE_NAMES)
    for name in _FILE_NAMES:
        if files.has(name):
            _file_record(files, name)
    _file_record(files, 'model.params')  # present in every checkpoint
    if fields.get('best', dict, nullable=True) is not None:
        best = _file_record(fields, 'best', extra=(kind,))
        best.get(kind, int, low=0 if kind == 'epoch' else 1, high=position)
    return state
