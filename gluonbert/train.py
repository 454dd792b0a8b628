"""Fine-tuning loop: ``train_loop(net, train_data, test_data, num_epoch, lr, ctx, loss_fn)``.

Batches are ``(words, valid_length, segments, label)`` as produced by
:func:`gluonbert.data.make_dataloader` (and the seed tutorial's batchify).
"""
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import threading
import time
import warnings

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from . import ops
from ._io import DirectoryLock, atomic_write, boundary, fsync_directory, fsync_file, make_public
from ._io import write_text as _write_text
from .distributed import ServerSchedule, get_group
from .errors import CheckpointError, UsageError
from .hardware import require_bf16
from .timing import NO_TIMER

__all__ = ['train_loop', 'evaluate_accuracy', 'AdamW', 'make_trainer', 'LinearWarmupSchedule',
           'plot_history', 'History', 'atomic_write', 'save_trainer_states',
           'load_trainer_states', 'load_best_parameters']

DTYPES = ('float32', 'float16', 'bfloat16')
NO_DECAY_SUFFIXES = ('gamma', 'beta', 'bias')
PLOT_INTERVAL_SECONDS = 60.0  # history.png is redrawn at most this often, and at the end


def _import_bertadam():
    from gluonnlp.optimizer import BERTAdam  # registers 'bertadam'
    return BERTAdam


@mx.optimizer.register
class AdamW(_import_bertadam()):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), registered as 'adamw'.

    GluonNLP's ``bertadam`` is the same update without Adam's bias correction; here the
    correction ``sqrt(1 - beta2^t) / (1 - beta1^t)`` is folded into the step size, the
    usual fused formulation.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # gradient clipping's factor for the next update, an NDArray of shape (1,), set by
        # the training loops (None: no clipping); folded into rescale_grad
        self.grad_scale = None
        # the Trainer's updater hands over this many arrays per call: all of them, for the
        # fused operator; MXNet's multi-array update (the fallback) takes its own group size
        self._mxnet_aggregate_num = self.aggregate_num
        self.aggregate_num = 1 << 16

    def _update_impl(self, indices, weight, grad, state, multi_precision=False):
        if not isinstance(indices, (list, tuple)):
            indices, weight, grad, state = [indices], [weight], [grad], [state]
        if self.grad_scale is not None and not isinstance(self.rescale_grad, mx.nd.NDArray):
            # Trainer.update() has just set rescale_grad to a float: fold the clipping
            # factor in, so that the update op applies it (no pass over the gradients)
            self.rescale_grad = (self.grad_scale.as_in_context(weight[0].context) *
                                 self.rescale_grad)
        if not multi_precision and self._fused(weight, grad):
            self._fused_update(indices, weight, grad, state)
            return
        self.aggregate_num = self._mxnet_aggregate_num  # MXNet's kernel, in its group size
        try:
            super()._update_impl(indices, weight, grad, state, multi_precision=multi_precision)
        finally:
            self.aggregate_num = 1 << 16

    def _get_lrs(self, indices):
        lrs = super()._get_lrs(indices)
        corrected = []
        for index, lr in zip(indices, lrs):
            step = self._index_update_count[index]
            corrected.append(lr * math.sqrt(1 - self.beta2 ** step) / (1 - self.beta1 ** step))
        return corrected

    def _fused(self, weight, grad):
        """gluonbert's AdamW operator applies: dense float32 arrays on CPU, no clip_gradient.
        (One context per call: the Trainer updates each device separately.)"""
        if self.clip_gradient is not None or weight[0].context.device_type != 'cpu':
            return False
        return ops.load() and all(a.stype == 'default' and a.dtype == np.float32
                                  for a in list(weight) + list(grad))

    def _fused_update(self, indices, weight, grad, state):
        """The update of contrib.adamw_update (lr=1, eta=the step size) for all the arrays
        in one call of gluonbert's vectorised operator, which leaves the gradients alone."""
        self._update_count(indices)
        etas = self._get_lrs(indices)
        wds = self._get_wds(indices)
        scale = self.rescale_grad
        if isinstance(scale, mx.nd.NDArray):
            scale = scale.as_in_context(weight[0].context)
        else:
            scale = mx.nd.full((1,), scale, ctx=weight[0].context)
        means, variances = zip(*state)
        mx.nd.gluonbert_multi_adamw_update(
            *weight, *grad, *means, *variances, scale, out=list(weight),
            num_arrays=len(weight), etas=','.join(map(repr, etas)),
            wds=','.join(map(repr, wds)), beta1=self.beta1, beta2=self.beta2,
            epsilon=self.epsilon)


class LinearWarmupSchedule:
    """Learning rate: linear warm-up from 0 to ``lr`` over ``warmup_steps``, then linear decay
    towards 0, reached one step after ``total_steps`` (so that every update, the last one
    included, has a non-zero rate: a one-update run still trains)."""

    def __init__(self, lr, total_steps, warmup_ratio=0.1):
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f'warmup_ratio must be in [0, 1), got {warmup_ratio}')
        self.lr = lr
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(self.total_steps * warmup_ratio)

    def __call__(self, step):
        """Learning rate for update number ``step`` (1-based)."""
        if step <= self.warmup_steps:
            return self.lr * step / max(1, self.warmup_steps)
        decay_steps = self.total_steps - self.warmup_steps
        # the first decay step has the full rate, the last one lr / decay_steps
        return self.lr * max(0.0, (self.total_steps + 1 - step) / max(1, decay_steps))


def _trainable(net):
    return [p for p in net.collect_params().values() if p.grad_req != 'null']


def make_trainer(net, *, optimizer='adamw', lr=5e-5, weight_decay=0.01, kvstore='device',
                 epsilon=1e-6, update_on_kvstore=False, lr_scheduler=None):
    """A ``gluon.Trainer`` over the trainable parameters only, without weight decay on
    LayerNorm parameters and biases.

    ``kvstore`` is a name or an ``mx.kv.KVStore`` (see :mod:`gluonbert.distributed`).
    ``update_on_kvstore=True`` (``dist_async`` only) runs the optimizer on the servers,
    with ``lr_scheduler`` (a callable of the update count) as its learning-rate schedule.
    """
    if optimizer not in ('bertadam', 'adamw', 'adam', 'sgd'):
        raise ValueError(f"optimizer must be 'bertadam', 'adamw', 'adam' or 'sgd', "
                         f"got {optimizer!r}")
    params = _trainable(net)
    if not params:
        raise ValueError('the network has no trainable parameters')
    for param in params:
        if param.name.endswith(NO_DECAY_SUFFIXES):
            param.wd_mult = 0.0
    options = {'learning_rate': lr, 'wd': weight_decay}
    if optimizer in ('bertadam', 'adamw', 'adam'):
        options['epsilon'] = epsilon
    if lr_scheduler is not None:
        options['lr_scheduler'] = lr_scheduler
    # update_on_kvstore=False: gradients are all-reduced, clipped, then applied locally.
    return gluon.Trainer(params, optimizer, options, kvstore=kvstore,
                         update_on_kvstore=update_on_kvstore)


def _as_contexts(ctx):
    contexts = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    if not contexts or not all(isinstance(c, mx.Context) for c in contexts):
        raise TypeError(f'ctx must be an mx.Context or a list of them, got {ctx!r}')
    return contexts


def _split(batch, contexts):
    """Split each field of a batch across contexts: [(words, valid_length, segments, label)]."""
    fields = [gluon.utils.split_and_load(x, contexts, even_split=False) for x in batch]
    return list(zip(*fields))


def evaluate_accuracy(net, data, ctx, *, group=None):
    """Exact accuracy over every example of ``data`` (not a mean of batch means).

    With a distributed ``group`` (:func:`gluonbert.distributed.get_group`), ``data`` is this
    worker's shard and the counts are summed over the workers (all of them must call it).
    """
    contexts = _as_contexts(ctx)
    correct = total = 0
    for batch in data:
        for words, valid_length, segments, label in _split(batch, contexts):
            logits = net(words, segments, valid_length)
            predicted = logits.argmax(axis=1).astype('int64').asnumpy()
            correct += int((predicted == label.astype('int64').asnumpy()).sum())
            total += int(label.shape[0])
    if group is not None and group.is_distributed:
        correct, total = (int(round(x)) for x in group.allreduce([correct, total]))
    if total == 0:
        raise ValueError('evaluation data is empty')
    return correct / total


class History(list):
    """Per-epoch records (dicts) with ``epoch``, ``train_loss``, ``train_accuracy``,
    ``test_accuracy``, ``seconds``, ``samples_per_second`` and ``lr``."""

    @property
    def best(self):
        scored = [r for r in self if r.get('test_accuracy') is not None]
        return max(scored, key=lambda r: r['test_accuracy']) if scored else None


def plot_history(history, path):
    """Save loss and accuracy curves as a PNG (needs matplotlib)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [r['epoch'] + 1 for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r['train_loss'] for r in history], 'o-', label='train loss')
    ax_loss.set_xlabel('epoch')
    ax_loss.set_ylabel('loss')
    ax_loss.legend()
    ax_acc.plot(epochs, [r['train_accuracy'] for r in history], 'o-', label='train')
    if any(r.get('test_accuracy') is not None for r in history):
        ax_acc.plot(epochs, [r.get('test_accuracy') for r in history], 's-', label='test')
    ax_acc.set_xlabel('epoch')
    ax_acc.set_ylabel('accuracy')
    ax_acc.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    plt.close(fig)


def _seed_epoch(seed, epoch, train_data, rank=0):
    """Derive every RNG from (seed, epoch), so a resumed run replays the same randomness.

    MXNet's RNG state cannot be saved, so it is re-seeded at each epoch boundary instead.
    Distributed workers other than rank 0 get their own streams (their own dropout masks).
    """
    if seed is None:
        return
    base = seed * 1000 + epoch + 104_729 * rank
    mx.random.seed(base)
    np.random.seed(base % (2 ** 32))
    random.seed(base)
    sampler = getattr(train_data, 'batch_sampler', None) or getattr(train_data, '_batch_sampler',
                                                                     None)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)


def _setup_amp(dtype, contexts):
    if dtype == 'float32':
        return None
    from mxnet.contrib import amp
    if dtype == 'float16':
        if any(c.device_type != 'gpu' for c in contexts):
            raise ValueError('dtype float16 (AMP) needs GPU contexts; use bfloat16 on CPU')
        amp.init(target_dtype='float16')
    else:
        if any(c.device_type != 'cpu' for c in contexts):
            raise ValueError('dtype bfloat16 is for CPU contexts; use float16 on GPU')
        # The fused attention kernels have no bf16 version: they are added to AMP's fp32
        # list (passing fp32_ops= instead would replace the whole list, and Dropout,
        # Embedding, LayerNorm, softmax... would then get bf16 inputs they cannot take).
        from .fast import init_amp_bfloat16
        init_amp_bfloat16()
    return amp


STATES_FORMAT = 'gluonbert-trainer-states-1'
NDARRAY_FILE_MAGIC = b'\x12\x01\x00\x00\x00\x00\x00\x00'  # how every mx.nd.save file begins
PICKLED_STATES = ('{path}: optimizer states in the old pickle format are not loaded (unsafe); '
                  'delete it to restart the optimizer from scratch, or start again without '
                  '--resume')


def _updaters(trainer):
    """The trainer's per-context updaters, created if it has not updated yet (as
    ``gluon.Trainer.save_states`` does)."""
    # pylint: disable=protected-access
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    return trainer._updaters


def save_trainer_states(trainer, path):
    """Write ``trainer``'s optimizer state (e.g. Adam's moments) and update counts.

    One ``mx.nd.save`` file (the counts ride along as a JSON byte array), never a pickle:
    also about 3x faster than ``gluon.Trainer.save_states``, which pickles every array
    (0.7 s against 0.25 s for MiniLM's 180 MB on 2 cores). Read it with
    :func:`load_trainer_states`.
    """
    mx.nd.save(path, _trainer_state_arrays(trainer))


def _trainer_state_arrays(trainer, snapshot=False):
    """What :func:`save_trainer_states` writes, as a dict of NDArrays; ``snapshot`` copies
    the states to the CPU (engine-ordered: later updates do not change the copies)."""
    updater = _updaters(trainer)[0]
    optimizer = updater.optimizer
    arrays = {}

    def flatten(value, key):
        if value is None:
            return None
        if isinstance(value, mx.nd.NDArray):
            arrays[key] = value.copyto(mx.cpu()) if snapshot else value
            return key
        if isinstance(value, (tuple, list)):
            return [flatten(v, f'{key}.{i}') for i, v in enumerate(value)]
        raise TypeError(f'cannot save an optimizer state of type {type(value).__name__}')
    layout = {str(index): flatten(state, str(index)) for index, state in updater.states.items()}
    meta = {'format': STATES_FORMAT, 'layout': layout, 'num_update': optimizer.num_update,
            'begin_num_update': optimizer.begin_num_update,
            'index_update_count': {str(k): v for k, v in
                                   optimizer._index_update_count.items()}}  # pylint: disable=protected-access
    arrays['__meta__'] = mx.nd.array(np.frombuffer(json.dumps(meta).encode('utf-8'),
                                                   dtype=np.uint8), dtype='uint8')
    return arrays


def _read_ndarray_file(path, what):
    """``mx.nd.load(path)``: a dict of NDArrays, from a file in MXNet's own format only.

    The header is checked first: a pickle is refused, never unpickled (unpickling runs
    whatever code the file names). ``mx.nd.load`` itself reads MXNet's binary format and
    unpickles nothing; a file it cannot read is reported, not left to its traceback.

    Raises
    ------
    CheckpointError
        Missing, pickled, damaged or not an MXNet file; the message names ``path``.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(len(NDARRAY_FILE_MAGIC))
    except FileNotFoundError:
        raise CheckpointError(f'{path} is missing') from None
    if head != NDARRAY_FILE_MAGIC:
        if head[:1] == b'\x80':  # how pickles of protocol 2 and later begin
            if what == 'optimizer state':
                raise CheckpointError(PICKLED_STATES.format(path=path))
            raise CheckpointError(f'{path}: a Python pickle, not an MXNet {what} file; '
                                  f'pickles are not loaded (unsafe)')
        raise CheckpointError(f'{path}: not an MXNet {what} file (damaged, or another kind '
                              f'of file)')
    try:
        arrays = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise CheckpointError(f'{path}: damaged or truncated {what} file (MXNet cannot '
                              f'read it)') from err
    if not isinstance(arrays, dict):
        raise CheckpointError(f'{path}: not a {what} file (its arrays have no names)')
    return arrays


def _state_keys(spec):
    """The array keys of one optimizer state's layout entry."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    return [key for part in spec for key in _state_keys(part)]


def _known_shape_differs(saved, expected):
    """Whether two shapes differ, where a 0 in ``expected`` (not yet inferred) matches any
    size."""
    return len(saved) != len(expected) or any(e and s != e for s, e in zip(saved, expected))


def load_trainer_states(trainer, path):
    """Restore what :func:`save_trainer_states` wrote into ``trainer``.

    Only that format is read. Older gluonbert checkpoints held pickled
    ``gluon.Trainer.save_states`` files: those are refused (a pickle can run any code when
    loaded); delete such a file to let the optimizer start from scratch.

    Raises
    ------
    CheckpointError
        The file is missing, pickled, damaged, or holds states for other parameters; the
        one-line message names the file (and the state).
    """
    arrays = _read_ndarray_file(path, 'optimizer state')
    if '__meta__' not in arrays:
        raise CheckpointError(f'{path}: not a gluonbert optimizer state file (no __meta__)')
    try:
        meta = json.loads(bytes(arrays.pop('__meta__').asnumpy().astype(np.uint8))
                          .decode('utf-8'))
        if meta.get('format') != STATES_FORMAT:
            raise CheckpointError(f'{path}: unknown optimizer state format '
                                  f'{meta.get("format")!r}')
        layout = {int(index): spec for index, spec in meta['layout'].items()}
        counts = {int(k): v for k, v in meta['index_update_count'].items()}
        num_update, begin_num_update = meta['num_update'], meta['begin_num_update']
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f'{path}: damaged optimizer state file (its layout cannot be '
                              f'read: {err!r})') from err
    params = trainer._params  # pylint: disable=protected-access
    for index, spec in layout.items():
        if not 0 <= index < len(params):
            raise CheckpointError(f'{path}: optimizer state {index} has no parameter in this '
                                  f'trainer ({len(params)} parameters)')
        for key in _state_keys(spec):
            if key not in arrays:
                raise CheckpointError(f'{path}: damaged optimizer state file (no array {key})')
            if _known_shape_differs(arrays[key].shape, params[index].shape):
                raise CheckpointError(
                    f'{path}: optimizer state {key} has shape {arrays[key].shape} but '
                    f'parameter {params[index].name} has shape {params[index].shape}')

    def unflatten(spec, copy):
        if spec is None:
            return None
        if isinstance(spec, str):
            return arrays[spec].copy() if copy else arrays[spec]
        return tuple(unflatten(s, copy) for s in spec)
    for position, updater in enumerate(_updaters(trainer)):
        # as Updater.set_states does; the states move to each weight's context on use
        updater.states = {index: unflatten(spec, copy=position > 0)
                          for index, spec in layout.items()}
        updater.states_synced = dict.fromkeys(updater.states, False)
        optimizer = updater.optimizer
        optimizer.num_update = num_update
        optimizer.begin_num_update = begin_num_update
        index_counts = optimizer._index_update_count  # pylint: disable=protected-access
        index_counts.clear()
        index_counts.update(counts)


# ------------------------------------------------------------------------------ checkpoints
# checkpoint_dir/
#   epoch-0003/    one whole checkpoint: model.params, trainer.states, state.json (the epoch,
#                  history, what the run was, the files' sizes and sha256)
#   last           the name of the current checkpoint, "epoch-0003": replaced (os.replace)
#                  only once that directory is complete on disk
#   best.params    a hard link to the best epoch's model.params
#   .lock          held by the run that writes here
CHECKPOINT_FORMAT = 'gluonbert-checkpoint-2'
POINTER_FILE, BEST_FILE = 'last', 'best.params'
PARAMS_FILE, STATES_FILE, STATE_FILE = 'model.params', 'trainer.states', 'state.json'
LEGACY_FILES = ('last.params', 'last.states', 'last.json')  # the first layout: see below
_CHECKPOINT_NAME = re.compile(r'epoch-[0-9]{4,}')
# what every checkpoint state holds, and of which JSON type
_STATE_FIELDS = {'epoch': int, 'step': int, 'history': list, 'best_accuracy': (int, float),
                 'stale_epochs': int}


def _checkpoint_paths(checkpoint_dir, name):
    """The files of checkpoint ``name`` (e.g. ``'epoch-0003'``) in ``checkpoint_dir``."""
    directory = os.path.join(checkpoint_dir, name)
    return {'dir': directory, 'params': os.path.join(directory, PARAMS_FILE),
            'states': os.path.join(directory, STATES_FILE),
            'state': os.path.join(directory, STATE_FILE)}


def _sha256(path, chunk=1 << 22):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def _file_record(path):
    return {'bytes': os.path.getsize(path), 'sha256': _sha256(path)}


def _is_record(record):
    """Whether ``record`` is a file's ``{'bytes', 'sha256'}`` (e.g. from a damaged state)."""
    return isinstance(record, dict) and isinstance(record.get('bytes'), int) and \
        isinstance(record.get('sha256'), str)


def _verify_file(path, record, hint='start again without --resume'):
    """Check a checkpoint file against its size and sha256 before anything reads it."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path} is missing; {hint}')
    size = os.path.getsize(path)
    if size != record['bytes'] or _sha256(path) != record['sha256']:
        raise CheckpointError(f'{path}: damaged or truncated ({size} bytes, expected '
                              f'{record["bytes"]}; checksum mismatch); {hint}')


def _read_json(path, what):
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f'{path} is missing') from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f'{path}: damaged {what} (not valid JSON: {err})') from err
    if not isinstance(value, dict):
        raise CheckpointError(f'{path}: damaged {what} (not a JSON object)')
    return value


def _read_state(path, legacy=False):
    """A checkpoint's state.json (``legacy``: the first layout's last.json), checked to
    hold what resuming reads."""
    state = _read_json(path, 'checkpoint state')
    fields = dict(_STATE_FIELDS)
    if not legacy:
        if state.get('format') != CHECKPOINT_FORMAT:
            raise CheckpointError(f'{path}: unknown checkpoint format {state.get("format")!r}')
        fields.update(files=dict, run=dict)
    for key, kind in fields.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f'{path}: damaged checkpoint state ({key!r} is missing or '
                                  f'not of its type)')
    return state


def _current_checkpoint(checkpoint_dir):
    """The name the pointer file gives (its directory checked to exist); None if none."""
    pointer = os.path.join(checkpoint_dir, POINTER_FILE)
    try:
        with open(pointer, encoding='utf-8') as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        name = '?'
    if not _CHECKPOINT_NAME.fullmatch(name):
        raise CheckpointError(f'{pointer}: damaged checkpoint pointer (it should name a '
                              f'checkpoint such as epoch-0001); start again without --resume')
    if not os.path.isdir(os.path.join(checkpoint_dir, name)):
        raise CheckpointError(f'{pointer} names {name}, which is missing; start again '
                              f'without --resume')
    return name


def _link_or_copy(source, path):
    """``path`` as a hard link to the (complete, never rewritten in place) file ``source``,
    atomically; a copy where the filesystem has no hard links."""
    tmp = f'{path}.{os.getpid()}.link'
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        atomic_write(path, lambda out: shutil.copyfile(source, out))
        return
    fsync_directory(os.path.dirname(path))


def _is_leftover(name):
    """Files a crash can leave in a checkpoint directory: staging directories and
    temporary files (never the lock, the pointer or best.params)."""
    return (name.startswith('.epoch-') and '.tmp-' in name) or name.endswith('.link') or \
        (name.startswith(f'.{POINTER_FILE}.') and name.endswith('.tmp')) or \
        (name.startswith(f'.{BEST_FILE}.') and name.endswith('.tmp'))


def _prune(checkpoint_dir, keep):
    """Remove every checkpoint but ``keep``, the first layout's files and leftovers."""
    for name in os.listdir(checkpoint_dir):
        if name == keep or not (_CHECKPOINT_NAME.fullmatch(name) or name in LEGACY_FILES or
                                _is_leftover(name)):
            continue
        path = os.path.join(checkpoint_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _commit_checkpoint(checkpoint_dir, params, optimizer_states, state, is_best, best):
    """Write one checkpoint whole, then make it the current one; returns its ``best``
    record (``{'epoch', 'bytes', 'sha256'}`` of the best parameters so far).

    The files go to a hidden staging directory, each flushed to disk, with ``state.json``
    (their sizes and sha256) last; the directory is renamed to ``epoch-NNNN``, and only
    then does the pointer file ``last`` name it (one ``os.replace``). A crash at any point
    leaves the previous checkpoint current and whole. ``best.params`` is linked after the
    pointer moves (a resume repairs it if a crash came in between); older checkpoints and
    the leftovers of interrupted ones are removed last. :func:`gluonbert._io.boundary` is
    called between the steps.
    """
    name = f'epoch-{state["epoch"] + 1:04d}'
    paths = _checkpoint_paths(checkpoint_dir, name)
    os.makedirs(checkpoint_dir, exist_ok=True)
    staging = tempfile.mkdtemp(dir=checkpoint_dir, prefix=f'.{name}.tmp-')
    boundary('checkpoint.staging', staging)
    files = {}
    for file_name, arrays in ((PARAMS_FILE, params), (STATES_FILE, optimizer_states)):
        if arrays is None:  # dist_async: the optimizer states live on the servers
            continue
        path = os.path.join(staging, file_name)
        mx.nd.save(path, arrays)
        fsync_file(path)
        files[file_name] = _file_record(path)
        boundary(f'checkpoint.{file_name}', path)
    if is_best:
        best = {'epoch': state['epoch'], **files[PARAMS_FILE]}
    state = dict(state, format=CHECKPOINT_FORMAT, files=files, best=best)
    with open(os.path.join(staging, STATE_FILE), 'w', encoding='utf-8') as f:
        json.dump(state, f, indent=1)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    make_public(staging)  # mkdtemp's directory is private (0700)
    fsync_directory(staging)
    boundary('checkpoint.state.json', staging)
    if os.path.exists(paths['dir']):  # an interrupted run's, or a run started over's
        if _current_name_or_none(checkpoint_dir) == name:
            os.unlink(os.path.join(checkpoint_dir, POINTER_FILE))
        shutil.rmtree(paths['dir'])
    os.replace(staging, paths['dir'])
    fsync_directory(checkpoint_dir)
    boundary('checkpoint.renamed', paths['dir'])
    _write_text(os.path.join(checkpoint_dir, POINTER_FILE), name + '\n')
    boundary('checkpoint.pointer', checkpoint_dir)
    if is_best:
        _link_or_copy(paths['params'], os.path.join(checkpoint_dir, BEST_FILE))
        boundary('checkpoint.best', checkpoint_dir)
    _prune(checkpoint_dir, keep=name)
    boundary('checkpoint.pruned', checkpoint_dir)
    return best


def _current_name_or_none(checkpoint_dir):
    try:
        return _current_checkpoint(checkpoint_dir)
    except CheckpointError:
        return None


class _CheckpointWriter:
    """Writes checkpoints in a background thread, so that training goes on meanwhile.

    ``save`` snapshots the parameters and optimizer states to CPU copies (ordered by the
    engine before any later update), then commits them (:func:`_commit_checkpoint`), one
    checkpoint at a time. A failed write raises at the next ``save`` or ``wait``.
    """

    def __init__(self):
        self._thread = None
        self._error = None
        self.best = None  # the current checkpoint's record of the best parameters

    def save(self, checkpoint_dir, net, trainer, state, is_best, states=True):
        self.wait()
        params = {name: param._reduce()  # pylint: disable=protected-access
                  for name, param in net._collect_params_with_prefix().items()}  # pylint: disable=protected-access
        optimizer_states = _trainer_state_arrays(trainer, snapshot=True) if states else None
        state = json.loads(json.dumps(state))  # a copy: the caller's history grows
        self._thread = threading.Thread(
            target=self._run, args=(checkpoint_dir, params, optimizer_states, state, is_best,
                                    self.best), name='gluonbert-checkpoint')
        self._thread.start()

    def _run(self, *args):
        try:
            self.best = _commit_checkpoint(*args)
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


def _checked_parameters(net, path):
    """The arrays of parameter file ``path``, checked to fit ``net`` name by name."""
    arrays = _read_ndarray_file(path, 'parameter')
    params = net._collect_params_with_prefix()  # pylint: disable=protected-access
    missing = [name for name in params if name not in arrays]
    if missing:
        raise CheckpointError(f'{path}: cannot resume: parameter {missing[0]} is missing '
                              f'(the checkpoint is of another model)')
    unknown = [name for name in arrays if name not in params]
    if unknown:
        raise CheckpointError(f'{path}: cannot resume: the checkpoint has parameter '
                              f'{unknown[0]}, which this model lacks')
    for name, param in params.items():
        if _known_shape_differs(arrays[name].shape, param.shape):
            raise CheckpointError(f'{path}: cannot resume: parameter {name} has shape '
                                  f'{arrays[name].shape} in the checkpoint, {param.shape} '
                                  f'in this model')
        if param.dtype is not None and np.dtype(param.dtype) != np.dtype(arrays[name].dtype):
            raise CheckpointError(f'{path}: cannot resume: parameter {name} is '
                                  f'{np.dtype(arrays[name].dtype).name} in the checkpoint, '
                                  f'{np.dtype(param.dtype).name} in this model')
    return arrays


def _assign_parameters(net, arrays, contexts):
    """What ``net.load_parameters`` does with a loaded file."""
    params = net._collect_params_with_prefix()  # pylint: disable=protected-access
    for name, param in params.items():
        param._load_init(arrays[name], contexts)  # pylint: disable=protected-access


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
    name = _current_checkpoint(checkpoint_dir)
    if name is not None:
        best = _read_state(_checkpoint_paths(checkpoint_dir, name)['state']).get('best')
        if _is_record(best):
            _verify_file(path, best, hint="delete it to keep the last epoch's weights")
    _assign_parameters(net, _checked_parameters(net, path), _as_contexts(ctx))
    return True


def _repair_best(checkpoint_dir, paths, state):
    """Link best.params to the current checkpoint's parameters where its state says they
    are the best and a crash came before the link."""
    best = state.get('best')
    if not _is_record(best) or best.get('epoch') != state['epoch']:
        return
    path = os.path.join(checkpoint_dir, BEST_FILE)
    try:
        if os.path.samefile(path, paths['params']):
            return
    except OSError:
        pass
    if os.path.isfile(path) and os.path.getsize(path) == best['bytes'] and \
            _sha256(path) == best['sha256']:
        return
    _link_or_copy(paths['params'], path)


# --------------------------------------------------------------- what a checkpoint resumes
def _data_fingerprint(data):
    """``{'examples', 'sha256'}`` of the examples of ``data``: each example's tokens,
    segments (to its valid length) and label, hashed, in sorted order; so the fingerprint
    does not depend on the batching or the shuffling (which the settings fix)."""
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


def _run_record(net, train_data, test_data, settings):
    """What a checkpoint must match to be resumed: the settings that change the results,
    the label names, the model configuration and the data."""
    config = getattr(net, 'config', None)
    labels = getattr(net, 'label_names', None)
    return json.loads(json.dumps({
        'settings': settings,
        'label_names': list(labels) if labels else None,
        'model': config.to_dict() if hasattr(config, 'to_dict') else None,
        'train_data': _data_fingerprint(train_data),
        'test_data': _data_fingerprint(test_data) if test_data is not None else None}))


def _shown(value):
    if value is None:
        return 'none'
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _data_shown(record):
    return (f'{record["examples"]} examples, sha256 {record["sha256"][:12]}' if record
            else 'none')


def _run_difference(saved, current):
    """What differs between a checkpoint's run record and this run's (one phrase), or
    None. The first kind of difference found is named: labels, model, settings, data."""
    saved_labels, labels = saved.get('label_names'), current['label_names']
    if saved_labels is not None and labels is not None and saved_labels != labels:
        return (f'label names differ (checkpoint: {", ".join(map(str, saved_labels))}; '
                f'this run: {", ".join(map(str, labels))})')
    saved_model, model = saved.get('model'), current['model']
    if saved_model is not None and model is not None and saved_model != model:
        keys = [k for k in sorted(set(saved_model) | set(model))
                if saved_model.get(k) != model.get(k)]
        return 'the model differs (' + ', '.join(
            f'{k}: {_shown(saved_model.get(k))} in the checkpoint, {_shown(model.get(k))} in '
            f'this run' for k in keys) + ')'
    saved_settings, settings = saved.get('settings') or {}, current['settings']
    keys = list(settings) + [k for k in saved_settings if k not in settings]
    differences = [f'{k} differs (checkpoint: {_shown(saved_settings.get(k))}; this run: '
                   f'{_shown(settings.get(k))})'
                   for k in keys if saved_settings.get(k) != settings.get(k)]
    if differences:
        return '; '.join(differences)
    for key, what in (('train_data', 'the training data differ'),
                      ('test_data', 'the test data differ')):
        if saved.get(key) != current[key]:
            return (f'{what} (checkpoint: {_data_shown(saved.get(key))}; this run: '
                    f'{_data_shown(current[key])})')
    return None


def _load_checkpoint(checkpoint_dir, net, trainer, contexts, run=None, states=True):
    """Load ``checkpoint_dir``'s current checkpoint into ``net`` and ``trainer``; returns
    its state (epoch, step, history...), or None where there is no checkpoint.

    ``run`` (this run's :func:`_run_record`) is compared with the checkpoint's first;
    every file is checked against its size and sha256 before it is read; nothing is
    unpickled.

    Raises
    ------
    CheckpointError
        One line naming the file, or what differs from this run.
    """
    name = _current_checkpoint(checkpoint_dir)
    if name is None:
        if os.path.exists(os.path.join(checkpoint_dir, 'last.json')):
            return _load_legacy_checkpoint(checkpoint_dir, net, trainer, contexts, states)
        return None
    paths = _checkpoint_paths(checkpoint_dir, name)
    state = _read_state(paths['state'])
    files = state['files']
    if run is not None:
        difference = _run_difference(state['run'], run)
        if difference:
            raise CheckpointError(f'{checkpoint_dir}: cannot resume: {difference}')
    if states and STATES_FILE not in files:
        raise CheckpointError(f'{paths["dir"]} has no optimizer states (written by a '
                              f'dist_async run, whose servers hold them); resume it with '
                              f'--kvstore dist_async')
    needed = {'params': PARAMS_FILE, **({'states': STATES_FILE} if states else {})}
    for key, file_name in needed.items():
        if not _is_record(files.get(file_name)):
            raise CheckpointError(f'{paths["state"]}: damaged checkpoint state (no size and '
                                  f'sha256 of {file_name})')
        _verify_file(paths[key], files[file_name])
    arrays = _checked_parameters(net, paths['params'])
    if states:
        load_trainer_states(trainer, paths['states'])
    _assign_parameters(net, arrays, contexts)
    if run is not None:  # the writing worker: finish what a crash interrupted
        _repair_best(checkpoint_dir, paths, state)
        _prune(checkpoint_dir, keep=name)
    return state


def _load_legacy_checkpoint(checkpoint_dir, net, trainer, contexts, states):
    """A checkpoint of gluonbert's first layout (``last.json``, ``last.params``,
    ``last.states``): the same safety (nothing unpickled, damaged files refused), but it
    records nothing to check this run against."""
    path = os.path.join(checkpoint_dir, 'last.json')
    state = _read_state(path, legacy=True)
    arrays = _checked_parameters(net, os.path.join(checkpoint_dir, 'last.params'))
    states_path = os.path.join(checkpoint_dir, 'last.states')
    if states and os.path.exists(states_path):
        load_trainer_states(trainer, states_path)
    elif states:
        warnings.warn(f'{states_path} is missing: the optimizer restarts from scratch',
                      stacklevel=3)
    _assign_parameters(net, arrays, contexts)
    warnings.warn(f'{checkpoint_dir}: a checkpoint of an older gluonbert, which did not '
                  f'record its settings and data: they are not checked against this run',
                  stacklevel=3)
    return state


def _rewrite_metrics(path, history):
    """Start ``path`` over with one line per epoch of ``history``: a resumed run then has
    exactly one line per epoch, whatever an interrupted run appended after its last
    checkpoint."""
    _write_text(path, ''.join(json.dumps(record) + '\n' for record in history))


def _append_metrics(path, record):
    with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')
        f.flush()
        os.fsync(f.fileno())
    boundary('metrics', path)


def train_loop(net, train_data, test_data, num_epoch, lr, ctx, loss_fn=None, *,
               optimizer='adamw', weight_decay=0.01, warmup_ratio=0.1, max_grad_norm=1.0,
               accumulate=1, dtype='float32', kvstore='device', seed=0,
               checkpoint_dir=None, resume=False, early_stop=None, metrics_path=None,
               plot_path=None, progress=True, on_epoch_end=None, timer=None, run_info=None):
    """Fine-tune ``net`` and evaluate it after every epoch.

    Parameters
    ----------
    net : BERTClassifier (or any block ``net(words, segments, valid_length) -> logits``)
    train_data, test_data : iterables of ``(words, valid_length, segments, label)`` batches
        ``test_data`` may be None.
    num_epoch : int
    lr : float
        Peak learning rate.
    ctx : mx.Context or list of mx.Context
        Several contexts train data-parallel (batches split with ``split_and_load``).
    loss_fn : gluon Loss, default ``SoftmaxCrossEntropyLoss()``
    optimizer : {'adamw', 'bertadam', 'adam', 'sgd'}
        ``adamw`` (default) is Adam with decoupled weight decay and bias correction;
        ``bertadam`` is GluonNLP's BERTAdam (no bias correction). LayerNorm parameters
        and biases get no weight decay.
    weight_decay, warmup_ratio, max_grad_norm : float
        Linear warm-up over ``warmup_ratio`` of the updates, then linear decay to 0;
        gradients clipped to global norm ``max_grad_norm`` (None or 0 disables).
    accumulate : int
        Batches whose gradients are summed per update.
    dtype : {'float32', 'float16', 'bfloat16'}
        float16 is AMP on GPU; bfloat16 is AMP on CPU. AMP changes MXNet process-wide.
    kvstore : {'device', 'local', 'dist_sync', 'dist_device_sync', 'dist_async', 'horovod'}
        ``device``/``local``: one process (the kvstore reduces over ``ctx``). The others train
        with several processes (see :mod:`gluonbert.distributed`): each worker passes its own
        shard of the data (e.g. ``make_dataloader(..., num_shards=group.num_workers,
        shard_index=group.rank)``), with the same number of batches on every worker; the
        gradients are summed over the workers, so an update sees the global batch (batch x
        workers). Metrics are over all workers; only rank 0 writes files.
    seed : int or None
        Seeds MXNet, numpy and Python per epoch, so resumed runs replay the same randomness.
    checkpoint_dir : str, optional
        A checkpoint every epoch, written whole (``epoch-NNNN/``: parameters, optimizer
        states, state) before the pointer file ``last`` names it, so a crash at any point
        leaves the previous one usable; ``best.params`` (best test accuracy) is a hard link.
        The directory is locked (``.lock``) while the run lasts: a second run on it fails.
    resume : bool
        Continue from ``checkpoint_dir``'s last checkpoint (model, trainer, epoch, history),
        bit for bit as if uninterrupted; a fresh start where there is none. The checkpoint
        must be of the same run: label names, model configuration, the data (a fingerprint
        of the examples) and the settings that change the results (``lr``, ``optimizer``,
        ``weight_decay``, ``warmup_ratio``, ``max_grad_norm``, ``accumulate``, ``dtype``,
        ``seed``, the loss, the batches per epoch, the number of workers, ``run_info``)
        are compared, and a difference is a :class:`~gluonbert.errors.CheckpointError`.
        ``num_epoch`` and ``early_stop`` may change: more epochs extend a run (its
        learning-rate schedule is then stretched to the new total from the current step,
        so the result differs from a run started with that many). Distributed workers all
        read the checkpoint, so it must be on a filesystem they share.
    early_stop : int, optional
        Stop after this many epochs without a better test accuracy.
    metrics_path : str, optional
        One JSON line per epoch: started over at the beginning, with the resumed epochs'
        lines, so that it has exactly one line per epoch of the run.
    plot_path : str, optional
        PNG of the loss and accuracy curves, rewritten every epoch.
    progress : bool
        tqdm progress bar with loss and samples/s.
    on_epoch_end : callable(record), optional
    timer : :class:`gluonbert.timing.PhaseTimer`, optional
        Charges the run's wall time to phases (``data``, ``forward_backward``, ``update``,
        ``metrics``, ``evaluate``, ``checkpoint``, ``logging``), draining MXNet's engine at
        the end of each; for finding bottlenecks (a timed run is slightly slower).
    run_info : dict, optional
        Further settings that change the results (e.g. a command line's max_len), JSON
        values: recorded in each checkpoint and compared on resume.

    Returns
    -------
    History
        One dict per epoch: ``epoch, train_loss, train_accuracy, test_accuracy, seconds,
        samples_per_second, lr``.
    """
    contexts = _as_contexts(ctx)
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
    if dtype == 'bfloat16' and all(c.device_type == 'cpu' for c in contexts):
        require_bf16('bfloat16 training', 'use float32 (--dtype float32)')  # checked first
    if not isinstance(num_epoch, int) or num_epoch < 1:
        raise ValueError(f'num_epoch must be a positive integer, got {num_epoch!r}')
    if not lr > 0:
        raise ValueError(f'lr must be > 0, got {lr!r}')
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f'accumulate must be a positive integer, got {accumulate!r}')
    if resume and not checkpoint_dir:
        raise ValueError('resume=True needs a checkpoint_dir')
    if checkpoint_dir and os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
        raise UsageError(f'{checkpoint_dir} is a file; checkpoint_dir must be a directory')
    try:
        batches_per_epoch = len(train_data)
    except TypeError as err:
        raise TypeError('train_data must have a length (e.g. a gluon DataLoader)') from err
    if batches_per_epoch == 0:
        raise ValueError('train_data is empty')
    loss_fn = loss_fn or gluon.loss.SoftmaxCrossEntropyLoss()
    timer = timer or NO_TIMER
    group = get_group(kvstore)
    group.check_contexts(contexts)
    progress = progress and group.is_root
    amp = _setup_amp(dtype, contexts)
    all_params = net.collect_params()
    if any(set(p.list_ctx()) != set(contexts) for p in all_params.values()):
        all_params.reset_ctx(contexts)  # data parallel: a copy of every parameter per context
        if isinstance(net, gluon.HybridBlock):
            # a graph traced for other devices may hold CPU-only operators (gluonbert.ops)
            net._clear_cached_op()  # pylint: disable=protected-access

    updates_per_epoch = math.ceil(batches_per_epoch / accumulate)
    schedule = LinearWarmupSchedule(lr, num_epoch * updates_per_epoch, warmup_ratio)
    # dist_async: the servers run the optimizer, counting every worker's updates
    server_schedule = (ServerSchedule(LinearWarmupSchedule(
        lr, num_epoch * updates_per_epoch * group.num_workers, warmup_ratio))
        if group.update_on_kvstore else None)
    trainer = make_trainer(net, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                           kvstore=group.trainer_kvstore(),
                           update_on_kvstore=group.update_on_kvstore,
                           lr_scheduler=server_schedule)
    if amp is not None and dtype == 'float16':
        amp.init_trainer(trainer)
    params = _trainable(net)
    if accumulate > 1:
        for param in params:
            param.grad_req = 'add'

    # best_accuracy starts below any score: the first epoch is the best so far (a score
    # without test data is -train_loss, which can be below -1)
    history, start_epoch, step, best_accuracy, stale_epochs = History(), 0, 0, -math.inf, 0
    writes = bool(checkpoint_dir) and group.is_root  # only rank 0 writes files
    writer = _CheckpointWriter()
    lock = DirectoryLock(checkpoint_dir) if writes else None  # before anything is read
    try:
        run = None
        if writes:  # what the checkpoints must match to be resumed
            settings = {'lr': lr, 'optimizer': optimizer, 'weight_decay': weight_decay,
                        'warmup_ratio': warmup_ratio, 'max_grad_norm': max_grad_norm or None,
                        'accumulate': accumulate, 'dtype': dtype, 'seed': seed,
                        'loss': type(loss_fn).__name__, 'batches_per_epoch': batches_per_epoch,
                        'workers': group.num_workers,
                        'optimizer_on_servers': group.update_on_kvstore, **(run_info or {})}
            with timer('checkpoint'):
                run = _run_record(net, train_data, test_data, settings)
        if resume:
            state = _load_checkpoint(checkpoint_dir, net, trainer, contexts, run,
                                     states=not group.update_on_kvstore)
            if state is not None:
                history = History(state['history'])
                start_epoch, step = state['epoch'] + 1, state['step']
                best_accuracy, stale_epochs = state['best_accuracy'], state['stale_epochs']
                writer.best = state.get('best')
            group.check_same(start_epoch, 'the epoch to resume from')
        if group.is_distributed:
            if server_schedule is not None:  # the servers' schedule continues where it was
                trainer._optimizer.begin_num_update = trainer._optimizer.num_update = \
                    step * group.num_workers  # pylint: disable=protected-access
            group.sync_parameters(trainer, all_params.values())
        if metrics_path and group.is_root:
            _rewrite_metrics(metrics_path, history)

        plotted = time.perf_counter()
        for epoch in range(start_epoch, num_epoch):
            if early_stop and stale_epochs >= early_stop:
                break
            _seed_epoch(seed, epoch, train_data, rank=group.rank)
            record = _train_one_epoch(net, train_data, contexts, loss_fn, trainer, params,
                                      schedule, step, accumulate, max_grad_norm, amp, epoch,
                                      num_epoch, progress, group, timer)
            step = record.pop('step')
            with timer('evaluate'):
                record['test_accuracy'] = (
                    evaluate_accuracy(net, test_data, contexts, group=group)
                    if test_data is not None else None)
            history.append(record)
            score = record['test_accuracy'] if test_data is not None else -record['train_loss']
            is_best = score > best_accuracy
            if is_best:
                best_accuracy, stale_epochs = score, 0
            else:
                stale_epochs += 1
            if progress:
                test = (f", test acc {record['test_accuracy']:.4f}"
                        if record['test_accuracy'] is not None else '')
                print(f"epoch {epoch + 1}/{num_epoch}: loss {record['train_loss']:.4f}, "
                      f"train acc {record['train_accuracy']:.4f}{test}, "
                      f"{record['samples_per_second']:.1f} samples/s", flush=True)
            with timer('logging'):
                # a resume rewrites this file from its checkpoint: lines appended after
                # the last checkpoint are not repeated
                if metrics_path and group.is_root:
                    _append_metrics(metrics_path, record)
            with timer('checkpoint'):  # written in the background while the plot is drawn
                if writes:
                    writer.save(checkpoint_dir, net, trainer,
                                {'epoch': epoch, 'step': step, 'num_epoch': num_epoch,
                                 'history': list(history), 'best_accuracy': best_accuracy,
                                 'stale_epochs': stale_epochs, 'seed': seed, 'run': run},
                                is_best, states=not group.update_on_kvstore)
            with timer('logging'):
                last_epoch = epoch + 1 == num_epoch or bool(early_stop and
                                                            stale_epochs >= early_stop)
                # matplotlib is slow to start: a short run plots once, at its end
                if plot_path and group.is_root and (
                        last_epoch or time.perf_counter() - plotted >= PLOT_INTERVAL_SECONDS):
                    plot_history(history, plot_path)
                    plotted = time.perf_counter()
            if on_epoch_end is not None:
                on_epoch_end(record)
        with timer('checkpoint'):
            writer.wait()
    except BaseException:
        try:  # let the last checkpoint finish: it is what --resume continues from
            writer.wait()
        except Exception as err:  # noqa: BLE001  (the first error is the one raised)
            warnings.warn(f'writing the last checkpoint failed too: {err}', stacklevel=2)
        raise
    finally:
        if lock is not None:
            lock.release()
    group.release(params)
    return history


def _train_one_epoch(net, train_data, contexts, loss_fn, trainer, params, schedule, step,
                     accumulate, max_grad_norm, amp, epoch, num_epoch, progress, workers=None,
                     timer=NO_TIMER):
    from tqdm.auto import tqdm
    workers = workers or get_group('device')
    loss_scaling = amp is not None and hasattr(trainer, '_amp_loss_scaler')
    total_loss = 0.0
    correct = seen = 0
    batches = len(train_data)
    start = time.perf_counter()
    bar = tqdm(total=batches, desc=f'epoch {epoch + 1}/{num_epoch}', unit='batch',
               disable=not progress, leave=False, dynamic_ncols=True)
    pending = []  # (loss sum, correct count) NDArrays not yet read back
    batch_iterator = iter(train_data)
    for index in range(batches):
        with timer('data'):
            batch = next(batch_iterator, None)
            parts = _split(batch, contexts) if batch is not None else None
        if batch is None:  # a loader shorter than its len()
            break
        # each update averages the mean losses of its `accumulate` batches
        group = min(accumulate, batches - index // accumulate * accumulate)
        normaliser = int(batch[0].shape[0]) * group
        if workers.gradient_divisor > 1:  # summed over the workers: a mean of the global batch
            normaliser *= workers.gradient_divisor
        with timer('forward_backward'):
            with autograd.record():
                losses = []
                for words, valid_length, segments, label in parts:
                    logits = net(words, segments, valid_length)
                    loss_sum = loss_fn(logits, label).sum()
                    losses.append(loss_sum / normaliser)
                    pending.append((loss_sum,
                                    (logits.argmax(axis=1) == label.astype(logits.dtype)).sum()))
            if loss_scaling:
                with amp.scale_loss(losses, trainer) as scaled:
                    autograd.backward(scaled)
            else:
                autograd.backward(losses)
        seen += int(batch[0].shape[0])
        if (index + 1) % accumulate == 0 or index + 1 == batches:
            step += 1
            with timer('update'):
                workers.step(trainer, params, contexts, schedule(step), max_grad_norm)
                if accumulate > 1:
                    for param in params:
                        param.zero_grad()
        # read metrics back every few batches only, so the engine stays asynchronous
        if len(pending) >= 8 * len(contexts) or index + 1 == batches:
            with timer('metrics'):
                for loss_sum, hits in pending:
                    total_loss += float(loss_sum.asscalar())
                    correct += int(hits.asscalar())
                pending = []
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f'{total_loss / seen:.4f}',
                                samples_s=f'{seen / elapsed:.1f}')
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    if workers.is_distributed:  # over every worker's shard
        total_loss, correct, seen = workers.allreduce([total_loss, correct, seen])
    return {'epoch': epoch, 'train_loss': total_loss / seen, 'train_accuracy': correct / seen,
            'seconds': seconds, 'samples_per_second': seen / seconds,
            'lr': schedule(step) if workers.update_on_kvstore else trainer.learning_rate,
            'step': step}
