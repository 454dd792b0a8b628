"""Pre-training BERT from raw text: masked-LM + next-sentence data and ``pretrain_loop``.

Batches are ``(input_ids, segments, valid_length, masked_positions, masked_ids,
masked_weights, nsp_labels)`` with shapes ``(B, L), (B, L), (B,), (B, M), (B, M), (B, M),
(B,)``. ``masked_weights`` is 1 for real predictions and 0 for padding slots, so padded
predictions do not count. NSP label 0 means "B follows A", 1 means "B is random".

The loop is built from :mod:`gluonbert.engine`, as fine-tuning is: the same step function,
optimizer, seeding, callbacks and transactional checkpoints.

Parameters of :func:`pretrain_loop`
-----------------------------------
model : BERTForPretraining
data : PretrainingData or ShardedPretrainingData
    Documents in memory, or shards streamed (:mod:`gluonbert.data`); re-masked every
    epoch (dynamic masking); epochs repeat until ``steps`` is reached. Its ``max_len`` must
    fit the model's position embeddings (a UsageError otherwise). Any object with their
    ``max_len``, ``fingerprint()``, ``batches_per_epoch(batch_size, num_shards)`` and
    ``epoch_batches(batch_size, epoch, ctx, num_shards=, shard_index=, start=)`` serves.
config : PretrainConfig, optional
    The run's settings, each documented in :class:`~gluonbert.engine.PretrainConfig`:
    ``steps`` (a resumed run may be given more: its schedule is stretched),
    ``batch_size`` (per worker; ``accumulate`` batches make an update), the optimizer and
    schedule as for fine-tuning, ``seed`` (seeds every RNG before every update, so a
    resumed run replays the dropout), ``log_interval``, ``checkpoint_every``,
    ``checkpoint_dir``, ``resume``, ``metrics_path``, ``plot_path``, ``early_stop``,
    ``progress`` and ``kvstore``.
ctx : mx.Context, default ``mx.cpu()``
eval_data : PretrainingData, optional
    Held-out examples, evaluated at every logged step.
**settings
    Fields of :class:`~gluonbert.engine.PretrainConfig` that replace the config's.

Checkpoints (``step-NNNN/`` directories and the pointer file ``last``, see
:mod:`gluonbert.engine.checkpoint`; the directory is locked while the run lasts) come every
``checkpoint_every`` updates and after the last one. Each records the exact data position
(batches consumed) and the metric sums not yet logged, so that ``resume=True`` continues
bit for bit as if uninterrupted, the metrics file included (but for
``sequences_per_second``). A resume checks the checkpoint is of the same run: model
configuration, data (a fingerprint of the tokenized documents and the masking settings)
and the config's compared settings (a :class:`~gluonbert.errors.CheckpointError` names
what differs).

Distributed kinds (``kvstore``, see :mod:`gluonbert.distributed`): each worker takes every
N-th example of each epoch (in memory) or reads every N-th shard (streamed), all for the
same number of batches, ``batch_size`` is per worker, the gradients (each worker's mean
loss) are averaged over the workers, the logged and evaluated metrics are over all
workers, and only rank 0 writes files. Every worker passes the same ``data``,
``eval_data`` and ``seed``.
"""
import functools
import math
import time

import numpy as np
import mxnet as mx
from mxnet import gluon

from .data import (IS_NEXT, NOT_NEXT, PretrainingData, ShardedPretrainingData, read_corpus,
                   split_sentences)
from .errors import UsageError
from .distributed import get_group
from .engine.loop import (Checkpointer, DivergedError, EarlyStopping, MetricsWriter, Plotter,
                          Session, Step, check_loss, place_parameters, plot_curves,
                          seed_everything)
from .engine.optim import model_kernels, run_trainer, trainable
from .engine.resume import run_record
from .engine.runconfig import PretrainConfig

__all__ = ['read_corpus', 'split_sentences', 'PretrainingData', 'ShardedPretrainingData',
           'pretrain_loop', 'PretrainConfig', 'evaluate_pretraining', 'IS_NEXT', 'NOT_NEXT']


# ------------------------------------------------------------------------------ loop
def _losses(model, batch, loss_fn):
    input_ids, segments, valid_length, positions, targets, weights, labels = batch
    _, _, mlm_logits, nsp_logits = model(input_ids, segments, valid_length, positions)
    vocab_size = mlm_logits.shape[-1]
    mlm_per_slot = loss_fn(mlm_logits.reshape((-1, vocab_size)), targets.reshape((-1,)),
                           weights.reshape((-1, 1)))
    num_targets = weights.sum()
    mlm_loss = mlm_per_slot.sum() / num_targets
    nsp_loss = loss_fn(nsp_logits, labels).mean()
    mlm_hits = ((mlm_logits.argmax(axis=-1) == targets) * weights).sum()
    nsp_hits = (nsp_logits.argmax(axis=-1) == labels).sum()
    return mlm_loss, nsp_loss, (mlm_per_slot.sum(), num_targets, mlm_hits, nsp_hits,
                                nsp_loss * labels.shape[0], labels.shape[0])


def _summarise(sums):
    mlm_sum, mlm_count, mlm_hits, nsp_hits, nsp_sum, nsp_count = sums
    mlm_loss = mlm_sum / max(mlm_count, 1)
    return {'mlm_loss': mlm_loss, 'mlm_accuracy': mlm_hits / max(mlm_count, 1),
            'mlm_perplexity': math.exp(min(mlm_loss, 50.0)),
            'nsp_loss': nsp_sum / max(nsp_count, 1), 'nsp_accuracy': nsp_hits / max(nsp_count, 1)}


def _read(stats):
    return [float(s.asscalar()) if isinstance(s, mx.nd.NDArray) else float(s) for s in stats]


def evaluate_pretraining(model, batches, *, group=None):
    """MLM loss/accuracy/perplexity and NSP loss/accuracy over ``batches``.

    With a distributed ``group``, ``batches`` are this worker's shard and the sums are taken
    over every worker (all of them must call it).
    """
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    totals = np.zeros(6)
    for batch in batches:
        _, _, stats = _losses(model, batch, loss_fn)
        totals += _read(stats)
    if group is not None and group.is_distributed:
        totals = group.allreduce(totals)
    return _summarise(totals)


class _Window:
    """The training metric sums since the last logged record (what a record averages)."""

    def __init__(self, saved=None):
        self.reset(saved)

    def reset(self, saved=None):
        """Empty, or the sums a checkpoint saved (:meth:`saved`)."""
        saved = saved or [0.0] * 7
        self.sums, self.sequences = np.array(saved[:6], dtype=np.float64), saved[6]
        self.start = time.perf_counter()

    def add(self, stats, sequences, where):
        """Add a batch's metric sums, its losses checked first (``where``: the keywords of
        :func:`~gluonbert.engine.loop.check_loss` that name the batch)."""
        values = _read(stats)
        for loss in (values[0], values[4]):  # the MLM and NSP loss sums
            check_loss(loss, **where)
        self.sums += values
        self.sequences += sequences

    def fold(self, group):
        """Sum the windows of the workers into rank 0's (all workers call it), so that a
        checkpoint holds them all; the record later sums them again."""
        if group.is_distributed and group.metrics_are_global:
            total = group.allreduce([*self.sums, self.sequences])
            self.sums, self.sequences = (total[:6], total[6]) if group.is_root else \
                (np.zeros(6), 0)

    def saved(self):
        return [float(x) for x in self.sums] + [float(self.sequences)]

    def record(self, step, lr, group):
        """The record of the window (over every worker), then an empty window."""
        if group.is_distributed:  # over every worker's shard
            *sums, sequences = group.allreduce([*self.sums, self.sequences])
        else:
            sums, sequences = self.sums, self.sequences
        record = {'step': step, **_summarise(sums),
                  'sequences_per_second': sequences / (time.perf_counter() - self.start),
                  'lr': lr}
        self.reset()
        return record


class _EpochBatches:
    """Batch number ``position`` of the run (epochs follow each other), read on from the
    previous one, or from its epoch's start when the position jumps (a resume)."""

    def __init__(self, data, batch_size, ctx, shards):
        self.data, self.batch_size, self.ctx, self.shards = data, batch_size, ctx, shards
        self.per_epoch = data.batches_per_epoch(batch_size, shards.get('num_shards', 1))
        self.following, self.batches = None, None

    def where(self, state, accumulate):
        """The last batch read, as :func:`~gluonbert.engine.loop.check_loss` names it."""
        epoch, index = divmod(state.batches - 1, self.per_epoch)
        return {'epoch': epoch + 1, 'batch': index + 1, 'batches': self.per_epoch,
                'update': state.step + (state.batches % accumulate != 0)}

    def __getitem__(self, position):
        epoch, index = divmod(position, self.per_epoch)
        if (epoch, index) != self.following:
            self.batches = self.data.epoch_batches(self.batch_size, epoch, self.ctx,
                                                   start=index, **self.shards)
        self.following = (epoch, index + 1)
        return next(self.batches)


def plot_pretraining(records, path):
    """Save the MLM and NSP loss and accuracy curves of ``records`` as a PNG."""
    def lines(*keys):  # the curves of the metrics the records have
        return [(label, [r.get(key) for r in records], style) for key, label, style in keys
                if any(r.get(key) is not None for r in records)]
    plot_curves(path, [r['step'] for r in records], 'step', [
        ('loss', lines(('mlm_loss', 'MLM', 'o-'), ('nsp_loss', 'NSP', 'o-'),
                       ('eval_mlm_loss', 'held-out MLM', 's-'))),
        ('accuracy', lines(('mlm_accuracy', 'MLM', 'o-'), ('nsp_accuracy', 'NSP', 'o-'),
                           ('eval_mlm_accuracy', 'held-out MLM', 's-')))])


def _check_lengths(model, data, eval_data):
    """UsageError when the data are longer than the model's position embeddings."""
    max_length = model.config.max_length
    for what, source in (('training', data), ('held-out', eval_data)):
        if source is not None and source.max_len > max_length:
            raise UsageError(f'the {what} examples are {source.max_len} tokens long, but the '
                             f'model has {max_length} position embeddings (max_length)')


def pretrain_loop(model, data, *, config=None, ctx=None, eval_data=None, **settings):
    """Pre-train a :class:`BERTForPretraining` with MLM + NSP for ``config.steps`` updates;
    returns the logged records. The parameters are described in :mod:`gluonbert.pretrain`.
    """
    from tqdm.auto import tqdm
    cfg = (config or PretrainConfig()).replace(**settings)
    steps, batch_size, accumulate, seed = cfg.steps, cfg.batch_size, cfg.accumulate, cfg.seed
    every, log_interval = cfg.checkpoint_every, cfg.log_interval
    ctx, group = ctx or mx.cpu(), get_group(cfg.kvstore)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    root, shards = group.is_root, ({'num_shards': group.num_workers, 'shard_index': group.rank}
                                   if group.is_distributed else {})
    _check_lengths(model, data, eval_data)
    place_parameters(model, [ctx])
    kernels = model_kernels(model)
    trainer, schedule = run_trainer(model, group, optimizer=cfg.optimizer, lr=cfg.lr,
                                    kernels=kernels, weight_decay=cfg.weight_decay,
                                    total_steps=steps, warmup_ratio=cfg.warmup_ratio)
    step = Step(trainer, trainable(model), [ctx], group, schedule, accumulate=accumulate,
                max_grad_norm=cfg.max_grad_norm, kernels=kernels)
    settings = {**cfg.compared(), 'workers': group.num_workers,
                'optimizer_on_servers': group.update_on_kvstore}
    session = Session(model, step, [
        EarlyStopping(cfg.early_stop),
        MetricsWriter(cfg.metrics_path) if cfg.metrics_path and root else None,
        Checkpointer(cfg.checkpoint_dir, kind='step', every=every, total=steps,
                     resume=cfg.resume, overwrite=cfg.overwrite,
                     static={'steps': steps, 'seed': seed}, run=lambda: run_record(
                         model, settings, data.fingerprint(),
                         eval_data.fingerprint() if eval_data else None)),
        Plotter(cfg.plot_path, plot_pretraining) if cfg.plot_path and root else None])
    eval_batches = eval_data.batches(batch_size, epoch=0, ctx=ctx, even_shards=False,
                                     **shards) if eval_data else None
    batches = _EpochBatches(data, batch_size, ctx, shards)
    divisor = max(1, group.gradient_divisor)  # summed over the workers: their mean
    with session as state:
        window = _Window(state.extra.get('window') if root else None)
        bar = tqdm(total=steps, initial=state.step, desc='pre-training', unit='step',
                   disable=not (cfg.progress and root), dynamic_ncols=True)
        while state.step < steps and not state.stop:
            seed_everything(seed, state.step, group.rank)  # dropout: a function of the step
            for index in range(accumulate):
                batch = batches[state.batches]
                stats = step(state, functools.partial(_forward, model, batch, loss_fn,
                                                      accumulate, divisor),
                             update=index + 1 == accumulate)
                window.add(stats, batch[0].shape[0], batches.where(state, accumulate))
            bar.update(1)
            if state.step % log_interval == 0 or state.step == steps:
                record = dict(window.record(state.step, schedule(state.step), group),
                              kernels=kernels)
                if eval_batches is not None:
                    record.update(_held_out(model, eval_batches, group, state.step))
                bar.set_postfix(mlm=f"{record['mlm_loss']:.3f}",
                                nsp=f"{record['nsp_accuracy']:.2f}")
                session.record(record, -record.get('eval_mlm_loss', record['mlm_loss']),
                               last=state.step == steps)
            elif cfg.checkpoint_dir and state.step % every == 0:
                window.fold(group)  # the checkpoint holds every worker's sums
            state.extra['window'] = window.saved()
            session.updated()
        bar.close()
    return state.history


def _held_out(model, eval_batches, group, step):
    """The held-out metrics after update ``step`` (``eval_`` keys); a DivergedError when
    a loss is not finite (the weights overflowed at the update), before anything records
    or saves it."""
    metrics = evaluate_pretraining(model, eval_batches, group=group)
    for key in ('mlm_loss', 'nsp_loss'):
        if not math.isfinite(metrics[key]):
            raise DivergedError(f'training diverged: the held-out {key} is {metrics[key]} '
                                f'after update {step}; the run stopped and saved nothing from '
                                f'there on (--resume continues from the last checkpoint, if '
                                f'any): lower the learning rate (--lr)')
    return {f'eval_{k}': v for k, v in metrics.items()}


def _forward(model, batch, loss_fn, accumulate, divisor):
    """The loss of one batch for :class:`~gluonbert.engine.Step` (divided so that the
    gradients of an update are those of the mean over its batches and the workers), and
    the batch's metric sums."""
    mlm_loss, nsp_loss, stats = _losses(model, batch, loss_fn)
    loss = (mlm_loss + nsp_loss) / accumulate
    if divisor > 1:
        loss = loss / divisor
    return [loss], stats
