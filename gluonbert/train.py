"""Fine-tuning: ``train_loop(net, train_data, test_data, num_epoch, lr, ctx, loss_fn)``.

Batches are ``(words, valid_length, segments, label)`` as produced by
:func:`gluonbert.data.make_dataloader` (and the seed tutorial's batchify). The loop is built
from :mod:`gluonbert.engine` (the step function, checkpoints, callbacks), which
pre-training shares.

The run's settings are a :class:`~gluonbert.engine.TrainConfig`, each field documented
there (optimizer, schedule, clipping, accumulation, dtype, seed, checkpoints, resume,
early stopping, files, distribution); pass one as ``config=``, or its fields as keywords::

    train_loop(net, train, test, 3, 5e-5, mx.cpu())                          # the tutorial's
    train_loop(net, train, test, config=TrainConfig(num_epoch=3, dtype='bfloat16'))
    train_loop(net, train, test, 3, 5e-5, mx.cpu(), checkpoint_dir='runs/x', resume=True)

Parameters of :func:`train_loop`
--------------------------------
net : a task model (``net(words, segments, valid_length) -> logits``)
train_data, test_data : iterables of ``(words, valid_length, segments, label)`` batches
    ``train_data`` must have a length; ``test_data`` may be None (the score of an epoch is
    then minus its training loss).
num_epoch, lr : int, float, optional
    The config's ``num_epoch`` and ``lr``, positionally as the tutorial passes them.
ctx : mx.Context or list of mx.Context, default ``mx.cpu()``
    Several contexts train data-parallel (batches split with ``split_and_load``). With a
    distributed ``kvstore`` each worker passes its own shard of the data, with the same
    number of batches on every worker; metrics are over all workers; only rank 0 writes.
loss_fn : gluon Loss, default ``SoftmaxCrossEntropyLoss()``
config : TrainConfig, optional
on_epoch_end : callable(record), optional
timer : :class:`gluonbert.timing.PhaseTimer`, optional
    Charges the run's wall time to phases (``data``, ``forward_backward``, ``update``,
    ``metrics``, ``evaluate``, ``checkpoint``, ``logging``).
run_info : dict, optional
    Further settings that change the results (e.g. a command line's max_len), JSON values:
    recorded in each checkpoint and compared on resume, with the config's compared
    settings (:meth:`~gluonbert.engine.RunConfig.compared`), the loss, the batches per
    epoch, the number of workers, the label names, the model configuration and a
    fingerprint of the data.
**settings
    Fields of :class:`~gluonbert.engine.TrainConfig` that replace the config's.

Returns: a :class:`History`, one dict per epoch: ``epoch, train_loss, train_accuracy,
test_accuracy, seconds, samples_per_second, lr, kernels`` (``kernels``: 'fused' or
'mxnet', what the optimizer and clipping computed with; also ``History.kernels``).
"""
import math
import os
import time

import mxnet as mx
from mxnet import gluon

from .amp import setup_amp
from .distributed import get_group
from .engine.checkpoint import load_best_parameters
from .engine.loop import (Callback, Checkpointer, EarlyStopping, FunctionCallback,
                          MetricsWriter, Plotter, Session, Step, check_loss, place_parameters,
                          plot_curves, seed_everything)
from .engine.optim import (AdamW, LinearWarmupSchedule, make_trainer, model_kernels,
                           run_trainer, trainable)
from .engine.resume import data_fingerprint, run_record
from .engine.runconfig import TrainConfig
from .engine.states import load_trainer_states, save_trainer_states
from .errors import UsageError
from .hardware import require_bf16
from .timing import NO_TIMER

__all__ = ['train_loop', 'TrainConfig', 'evaluate_accuracy', 'correct_count', 'AdamW',
           'make_trainer', 'LinearWarmupSchedule', 'plot_history', 'History',
           'save_trainer_states', 'load_trainer_states', 'load_best_parameters']

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


def correct_count(logits, label):
    """How many rows of ``logits`` (batch, num_classes) have their largest entry at
    ``label`` (batch,), as a float32 NDArray of one element (read back later, so the
    engine stays asynchronous).

    Both sides are compared as float32, whatever the logits' dtype: under bfloat16 AMP the
    classifier's last Dense layer gives bfloat16 logits, and casting the labels to that
    dtype with ``astype`` gives garbage there (MXNet 1.9.1), so that only label 0 matched.
    """
    predicted = logits.argmax(axis=1).astype('float32')  # AMP: float32 already
    return (predicted == label.astype('float32')).sum()


class History(list):
    """Per-epoch records (dicts) with ``epoch``, ``train_loss``, ``train_accuracy``,
    ``test_accuracy``, ``seconds``, ``samples_per_second``, ``lr`` and ``kernels``;
    ``kernels`` is also an attribute ('fused' or 'mxnet': what the optimizer and the
    clipping computed with; None when unknown)."""

    def __init__(self, records=(), kernels=None):
        super().__init__(records)
        self.kernels = kernels

    @property
    def best(self):
        scored = [r for r in self if r.get('test_accuracy') is not None]
        return max(scored, key=lambda r: r['test_accuracy']) if scored else None


def plot_history(history, path):
    """Save loss and accuracy curves as a PNG (needs matplotlib)."""
    accuracy = [('train', [r['train_accuracy'] for r in history], 'o-')]
    if any(r.get('test_accuracy') is not None for r in history):
        accuracy.append(('test', [r.get('test_accuracy') for r in history], 's-'))
    plot_curves(path, [r['epoch'] + 1 for r in history], 'epoch',
                [('loss', [('train loss', [r['train_loss'] for r in history], 'o-')]),
                 ('accuracy', accuracy)])


def _checked_arguments(train_data, config, ctx):
    """``(contexts, batches per epoch)`` once train_loop's arguments are checked (the
    bfloat16 hardware first: a machine without it is told so before anything else)."""
    contexts = _as_contexts(ctx)
    if config.dtype == 'bfloat16' and all(c.device_type == 'cpu' for c in contexts):
        require_bf16('bfloat16 training', 'use float32 (--dtype float32)')
    checkpoint_dir = config.checkpoint_dir
    if checkpoint_dir and os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
        raise UsageError(f'{checkpoint_dir} is a file; checkpoint_dir must be a directory')
    try:
        batches = len(train_data)
    except TypeError as err:
        raise TypeError('train_data must have a length (e.g. a gluon DataLoader)') from err
    if batches == 0:
        raise ValueError('train_data is empty')
    return contexts, batches


class _EpochLine(Callback):
    """A line per epoch (with ``progress``)."""
    phase = None

    def __init__(self, num_epoch):
        self.num_epoch = num_epoch

    def on_record(self, state, record, is_best, last):
        test = (f", test acc {record['test_accuracy']:.4f}"
                if record['test_accuracy'] is not None else '')
        print(f"epoch {record['epoch'] + 1}/{self.num_epoch}: loss {record['train_loss']:.4f}, "
              f"train acc {record['train_accuracy']:.4f}{test}, "
              f"{record['samples_per_second']:.1f} samples/s", flush=True)


def train_loop(net, train_data, test_data, num_epoch=None, lr=None, ctx=None, loss_fn=None,
               *, config=None, on_epoch_end=None, timer=None, run_info=None, **settings):
    """Fine-tune ``net``, evaluating it after every epoch; returns a :class:`History`.

    The parameters are described in the docstring of :mod:`gluonbert.train`.
    """
    given = {k: v for k, v in (('num_epoch', num_epoch), ('lr', lr)) if v is not None}
    cfg = (config or TrainConfig()).replace(**given, **settings)
    contexts, batches = _checked_arguments(train_data, cfg, ctx or mx.cpu())
    loss_fn = loss_fn or gluon.loss.SoftmaxCrossEntropyLoss()
    timer, group = timer or NO_TIMER, get_group(cfg.kvstore)
    group.check_contexts(contexts)
    progress, root = cfg.progress and group.is_root, group.is_root
    amp = setup_amp(cfg.dtype, contexts)
    place_parameters(net, contexts)
    kernels = model_kernels(net)
    trainer, schedule = run_trainer(
        net, group, optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
        kernels=kernels, total_steps=cfg.num_epoch * math.ceil(batches / cfg.accumulate),
        warmup_ratio=cfg.warmup_ratio)
    if amp is not None and cfg.dtype == 'float16':
        amp.init_trainer(trainer)
    step = Step(trainer, trainable(net), contexts, group, schedule, accumulate=cfg.accumulate,
                max_grad_norm=cfg.max_grad_norm, kernels=kernels, amp=amp, timer=timer)
    settings = {**cfg.compared(), 'loss': type(loss_fn).__name__, 'batches_per_epoch': batches,
                'workers': group.num_workers, 'optimizer_on_servers': group.update_on_kvstore,
                **(run_info or {})}
    callbacks = [
        EarlyStopping(cfg.early_stop), _EpochLine(cfg.num_epoch) if progress else None,
        MetricsWriter(cfg.metrics_path) if cfg.metrics_path and root else None,
        Checkpointer(cfg.checkpoint_dir, kind='epoch', resume=cfg.resume,
                     overwrite=cfg.overwrite,
                     static={'num_epoch': cfg.num_epoch, 'seed': cfg.seed},
                     run=lambda: run_record(net, settings, data_fingerprint(train_data),
                                            data_fingerprint(test_data)
                                            if test_data is not None else None)),
        Plotter(cfg.plot_path, plot_history) if cfg.plot_path and root else None,
        FunctionCallback(on_epoch_end) if on_epoch_end is not None else None]
    session = Session(net, step, callbacks, timer=timer)
    with session as state:
        for epoch in range(state.epoch, cfg.num_epoch):
            if state.stop:
                break
            if cfg.seed is not None:  # every RNG from (seed, epoch); the loader's order too
                seed_everything(cfg.seed, epoch, group.rank)
                _set_sampler_epoch(train_data, epoch)
            record = _train_one_epoch(net, train_data, contexts, loss_fn, step, state, epoch,
                                      cfg.num_epoch, progress, kernels)
            with timer('evaluate'):
                record['test_accuracy'] = (
                    evaluate_accuracy(net, test_data, contexts, group=group)
                    if test_data is not None else None)
            state.epoch = epoch + 1
            score = record['test_accuracy'] if test_data is not None else -record['train_loss']
            session.record(record, score, last=epoch + 1 == cfg.num_epoch)
    return History(state.history, kernels)


def _set_sampler_epoch(train_data, epoch):
    """Give the loader's batch sampler (make_dataloader's shuffles per epoch) the epoch."""
    # a gluon DataLoader keeps its batch sampler in a private attribute only
    sampler = getattr(train_data, 'batch_sampler', None) or getattr(train_data, '_batch_sampler',
                                                                     None)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)


def _train_one_epoch(net, train_data, contexts, loss_fn, step, state, epoch, num_epoch,
                     progress, kernels):
    """One epoch through ``step``; returns its record (without the test accuracy)."""
    from tqdm.auto import tqdm
    group, timer, accumulate = step.group, step.timer, step.accumulate
    total_loss, correct, seen = 0.0, 0, 0
    batches = len(train_data)
    start = time.perf_counter()
    bar = tqdm(total=batches, desc=f'epoch {epoch + 1}/{num_epoch}', unit='batch',
               disable=not progress, leave=False, dynamic_ncols=True)
    pending = []  # (batch, update, loss sum, correct count), the sums not yet read back
    batch_iterator = iter(train_data)
    for index in range(batches):
        with timer('data'):
            batch = next(batch_iterator, None)
            parts = _split(batch, contexts) if batch is not None else None
        if batch is None:  # a loader shorter than its len()
            break
        # each update averages the mean losses of its `accumulate` batches; summed over
        # the workers, a mean of the global batch
        size = min(accumulate, batches - index // accumulate * accumulate)
        normaliser = int(batch[0].shape[0]) * size * max(1, group.gradient_divisor)

        def forward(parts=parts, normaliser=normaliser):
            losses, outputs = [], []
            for words, valid_length, segments, label in parts:
                logits = net(words, segments, valid_length)
                loss_sum = loss_fn(logits, label).sum()
                losses.append(loss_sum / normaliser)
                outputs.append((loss_sum, correct_count(logits, label)))
            return losses, outputs
        updates = (index + 1) % accumulate == 0 or index + 1 == batches
        outputs = step(state, forward, update=updates)
        pending += [(index, state.step + (not updates), *output) for output in outputs]
        seen += int(batch[0].shape[0])
        # read metrics back every few batches only, so the engine stays asynchronous
        if len(pending) >= 8 * len(contexts) or index + 1 == batches:
            with timer('metrics'):
                for batch_index, update, loss_sum, hits in pending:
                    loss = float(loss_sum.asscalar())
                    check_loss(loss, epoch=epoch + 1, batch=batch_index + 1, batches=batches,
                               update=update)
                    total_loss += loss
                    correct += int(hits.asscalar())
                pending = []
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f'{total_loss / seen:.4f}',
                                samples_s=f'{seen / elapsed:.1f}')
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    if group.is_distributed:  # over every worker's shard
        total_loss, correct, seen = group.allreduce([total_loss, correct, seen])
    return {'epoch': epoch, 'train_loss': total_loss / seen, 'train_accuracy': correct / seen,
            'seconds': seconds, 'samples_per_second': seen / seconds,
            'lr': step.learning_rate(state), 'kernels': kernels}
