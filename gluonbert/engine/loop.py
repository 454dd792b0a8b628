"""What both training loops are made of: the state, seeding, the step function, callbacks
and the session around them.

- :class:`TrainState`: counters (epochs, updates, batches consumed), the records so far,
  the best score; what a checkpoint saves and a resume restores.
- :func:`seed_everything`: MXNet, numpy and Python seeded from (seed, counter, rank).
- :class:`Step`: forward, backward, accumulation, clipping and the update for one batch.
- Callbacks: :class:`MetricsWriter`, :class:`Checkpointer`, :class:`Plotter`,
  :class:`EarlyStopping` (and :class:`FunctionCallback` for a plain function).
- :class:`Session`: resumes, synchronises the workers, calls the callbacks, and on the way
  out waits for the last checkpoint and releases the directory lock.
"""
import contextlib
import dataclasses
import math
import random
import time
import warnings
from typing import Optional

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from .._io import DirectoryLock, atomic_write
from ..errors import CheckpointError, GluonbertError
from ..timing import NO_TIMER
from . import mxnet_internals as internals
from .checkpoint import CheckpointWriter, checkpoint_name, discard_checkpoints, held_checkpoint
from .optim import optimizer_step
from .resume import append_metrics, load_checkpoint, rewrite_metrics

__all__ = ['TrainState', 'seed_everything', 'Step', 'Callback', 'MetricsWriter',
           'Checkpointer', 'Plotter', 'EarlyStopping', 'FunctionCallback', 'Session',
           'place_parameters', 'sync_parameters', 'release_parameters', 'plot_curves',
           'DivergedError', 'check_loss', 'check_weights',
           'SEED_STRIDE', 'RANK_STRIDE', 'PLOT_INTERVAL_SECONDS']

SEED_STRIDE = 1_000_003  # seeds s and s + 1 share no stream for a million counters
RANK_STRIDE = 104_729  # a prime: each worker's streams apart from the others'
PLOT_INTERVAL_SECONDS = 60.0  # a plot is redrawn at most this often, and at the end


@dataclasses.dataclass
class TrainState:
    """Where a training run is: what a checkpoint saves and a resume restores.

    Attributes
    ----------
    epoch : int
        Epochs completed (fine-tuning).
    step : int
        Optimizer updates done.
    batches : int
        Batches consumed since the start: the data position (pre-training resumes there).
    history : list of dict
        One record per epoch (fine-tuning) or per logged step (pre-training).
    best_score : float
        The best score so far (higher is better); ``-inf`` before the first.
    stale : int
        Records since the best one.
    best : dict or None
        The current checkpoint's record of ``best.params`` (its size and sha256).
    extra : dict
        JSON values a loop saves besides (pre-training: its unlogged metric sums).
    stop : bool
        Set by :class:`EarlyStopping`; not saved.
    """
    epoch: int = 0
    step: int = 0
    batches: int = 0
    history: list = dataclasses.field(default_factory=list)
    best_score: float = -math.inf
    stale: int = 0
    best: Optional[dict] = None
    extra: dict = dataclasses.field(default_factory=dict)
    stop: bool = False

    def track(self, score):
        """Count ``score`` (of the record just made): whether it is a new best."""
        if score > self.best_score:
            self.best_score, self.stale = score, 0
            return True
        self.stale += 1
        return False

    def to_json(self):
        """The state as checkpoints write it (``epoch``: the last epoch done, 0-based;
        ``best_accuracy``/``stale_epochs``: the field names of the checkpoint format,
        :data:`~gluonbert.engine.checkpoint.CHECKPOINT_FORMAT`)."""
        return {'epoch': self.epoch - 1, 'step': self.step, 'batches': self.batches,
                'history': list(self.history),
                'best_accuracy': self.best_score if math.isfinite(self.best_score) else None,
                'stale_epochs': self.stale, 'extra': self.extra}

    @classmethod
    def from_json(cls, saved):
        """The state of a checkpoint's state.json (see :meth:`to_json`)."""
        best = saved.get('best_accuracy')
        return cls(epoch=saved.get('epoch', -1) + 1, step=saved['step'],
                   batches=saved.get('batches', 0), history=list(saved['history']),
                   best_score=-math.inf if best is None else best,
                   stale=saved.get('stale_epochs', 0), best=saved.get('best'),
                   extra=dict(saved.get('extra') or {}))


class DivergedError(GluonbertError, ArithmeticError):
    """Training met a loss that is not finite (NaN or infinite): the run stops there, and
    nothing is written from that batch on (no checkpoint, no model), so that the last
    checkpoint stays the one to resume from."""


def check_loss(value, *, epoch, batch, batches, update):
    """Raise :class:`DivergedError` unless the loss ``value`` (a Python float) is finite.

    Both loops call it on a number they read back anyway (fine-tuning: each batch's loss
    sum, read every few batches for the running metrics; pre-training: each batch's
    metric sums, read every batch): the check adds no synchronisation with the engine and
    no extra pass over the weights or gradients. Fine-tuning checkpoints only after an
    epoch's losses were all read, and pre-training reads a batch's before its update can
    be saved, so no checkpoint is written after the first non-finite loss.

    ``epoch``, ``batch`` (both 1-based, the batch within its epoch), ``batches`` (per
    epoch) and ``update`` (the update the batch belongs to) name it in the message.
    """
    if math.isfinite(value):
        return
    raise DivergedError(
        f'training diverged: the loss is {value} at epoch {epoch}, batch {batch} of '
        f'{batches} (update {update}); the run stopped and saved nothing from there on '
        f'(--resume continues from the last checkpoint, if any): lower the learning rate '
        f'(--lr) or clip the gradients')


def check_weights(net, step):
    """Raise :class:`DivergedError` unless every parameter of ``net`` is finite (after
    update ``step``). Called before each checkpoint, so that no checkpoint holds weights an
    update overflowed (the losses are checked before the update): one elementwise pass
    and one number read back per checkpoint, next to the copy the checkpoint makes."""
    names, params = zip(*internals.structural_parameters(net).items())
    finite = mx.nd.concat(*[mx.nd.contrib.isfinite(p.data()).min().reshape((1,))
                            .as_in_context(mx.cpu()) for p in params], dim=0)
    if float(finite.min().asscalar()) == 1:
        return
    bad = next(name for name, ok in zip(names, finite.asnumpy()) if not ok)
    raise DivergedError(f'training diverged: the weights after update {step} are not finite '
                        f'({bad}); the run stopped and saved nothing from there on (--resume '
                        f'continues from the last checkpoint, if any): lower the learning '
                        f'rate (--lr) or clip the gradients')


def seed_everything(seed, counter, rank=0):
    """Seed MXNet, numpy and Python from ``(seed, counter, rank)``; returns the seed used
    (None, and nothing seeded, when ``seed`` is None).

    MXNet's RNG state cannot be saved, so both loops re-seed at fixed points (fine-tuning
    each epoch, pre-training each update, with the epoch or update count as ``counter``):
    a resumed run replays the same randomness. Workers other than rank 0 get their own
    streams (their own dropout masks).
    """
    if seed is None:
        return None
    value = (seed * SEED_STRIDE + counter + RANK_STRIDE * rank) % (2 ** 31)
    mx.random.seed(value)
    np.random.seed(value)
    random.seed(value)
    return value


class Step:
    """The step function of both loops: forward, backward, gradient accumulation,
    clipping and the optimizer update, for one batch.

    Parameters
    ----------
    trainer : gluon.Trainer
    params : list of Parameter
        The trainable parameters (``accumulate > 1`` sets their ``grad_req`` to 'add').
    contexts : list of mx.Context
    group : gluonbert.distributed.Group
    schedule : callable
        Learning rate of update number ``step`` (1-based).
    accumulate : int
        Batches per update (the loop says which batch ends a group, see ``update``).
    max_grad_norm : float or None
        Global-norm clipping (None or 0: none).
    kernels : {'fused', 'mxnet'}
        Of the clipping norm (the optimizer has its own, see ``make_trainer``).
    amp : module, optional
        MXNet's ``amp``; with a loss scaler on the trainer (float16) the backward pass
        scales the loss.
    timer : gluonbert.timing.PhaseTimer, optional
        Charged with ``forward_backward`` and ``update``.
    """

    def __init__(self, trainer, params, contexts, group, schedule, *, accumulate=1,
                 max_grad_norm=None, kernels='mxnet', amp=None, timer=NO_TIMER):
        self.trainer, self.params, self.contexts, self.group = trainer, params, contexts, group
        self.schedule, self.accumulate, self.max_grad_norm = schedule, accumulate, max_grad_norm
        self.kernels, self.amp, self.timer = kernels, amp, timer
        self.loss_scaling = amp is not None and internals.uses_amp_loss_scaling(trainer)
        if accumulate > 1:  # gradients summed over the batches of an update
            for param in params:
                param.grad_req = 'add'

    def __call__(self, state, forward, *, update):
        """Run ``forward()`` under ``autograd.record``, back-propagate, and with ``update``
        apply one update; returns what ``forward`` returned besides its losses.

        ``forward()`` returns ``(losses, outputs)``: ``losses`` a list of scalar NDArrays
        (one per context), already divided so that their gradients, summed over the
        batches of an update and over the workers, are those of the mean loss.
        """
        with self.timer('forward_backward'):
            with autograd.record():
                losses, outputs = forward()
            if self.loss_scaling:
                with self.amp.scale_loss(losses, self.trainer) as scaled:
                    autograd.backward(scaled)
            else:
                autograd.backward(losses)
        state.batches += 1
        if update:
            state.step += 1
            with self.timer('update'):
                optimizer_step(self.trainer, self.params, self.contexts, self.group,
                               self.schedule(state.step), self.max_grad_norm, self.kernels)
                if self.accumulate > 1:
                    for param in self.params:
                        param.zero_grad()
        return outputs

    def learning_rate(self, state):
        """The learning rate of the last update (the servers' schedule under dist_async)."""
        if self.group.update_on_kvstore:
            return self.schedule(max(1, state.step))
        return self.trainer.learning_rate


# --------------------------------------------------------------------------- callbacks
class Callback:
    """Hooks a :class:`Session` calls; each callback's work is charged to its timer
    ``phase`` (None: not timed)."""
    phase = 'logging'

    def on_resume(self, session):
        """Before anything else (the checkpointer loads the state here)."""

    def on_start(self, state):
        """Once the state is known and the workers are synchronised."""

    def on_record(self, state, record, is_best, last):
        """After ``record`` (an epoch's, or a logged step's) joined ``state.history``;
        ``last``: the run's last record, unless it stops early."""

    def on_update(self, state):
        """After every optimizer update (pre-training)."""

    def on_end(self, state):
        """When the run ends normally."""

    def on_error(self):
        """When the run ends with an exception."""


class FunctionCallback(Callback):
    """``function(record)`` after every record."""
    phase = None

    def __init__(self, function):
        self.function = function

    def on_record(self, state, record, is_best, last):
        self.function(record)


class EarlyStopping(Callback):
    """Stop after ``patience`` records without a better score (None or 0: never)."""
    phase = None

    def __init__(self, patience):
        self.patience = patience

    def _check(self, state):
        if self.patience and state.stale >= self.patience:
            state.stop = True

    def on_start(self, state):
        self._check(state)  # a resumed run may have stopped already

    def on_record(self, state, record, is_best, last):
        self._check(state)


class MetricsWriter(Callback):
    """One JSON line per record in ``path``, flushed to disk. Started over with the
    resumed records: whatever an interrupted run appended after its last checkpoint is
    not repeated."""

    def __init__(self, path):
        self.path = path

    def on_start(self, state):
        rewrite_metrics(self.path, state.history)

    def on_record(self, state, record, is_best, last):
        append_metrics(self.path, record)


class Plotter(Callback):
    """``plot(history, path)`` after a record, at most every ``interval`` seconds, and
    after the last one (matplotlib is slow to start: a short run plots once)."""

    def __init__(self, path, plot, interval=PLOT_INTERVAL_SECONDS):
        self.path, self.plot, self.interval = path, plot, interval
        self._plotted = time.perf_counter()

    def on_record(self, state, record, is_best, last):
        if last or state.stop or time.perf_counter() - self._plotted >= self.interval:
            self.plot(state.history, self.path)
            self._plotted = time.perf_counter()


class Checkpointer(Callback):
    """Transactional checkpoints (:mod:`gluonbert.engine.checkpoint`) of the session's
    model, trainer and state, and the resume from the last one.

    Parameters
    ----------
    directory : str or None
        None: no checkpoints (the callback does nothing).
    kind : {'epoch', 'step'}
        Checkpoints named ``epoch-NNNN`` (one per record) or ``step-NNNN``.
    every : int, optional
        ``kind='step'``: a checkpoint every ``every`` updates and after update ``total``.
    resume : bool
        Load the current checkpoint, if any, before the run starts (every worker does).
    overwrite : bool
        Without ``resume``: remove another run's checkpoints first (refused otherwise).
    run : callable, optional
        Returns this run's :func:`~gluonbert.engine.resume.run_record`; the writing
        worker (rank 0) compares it with the checkpoint's and saves it in each one.
    static : dict, optional
        Further JSON values saved in every state.json (``seed``, ``num_epoch``...).
    """
    phase = 'checkpoint'

    def __init__(self, directory, *, kind='epoch', every=None, total=None, resume=False,
                 overwrite=False, run=None, static=None):
        self.directory, self.kind, self.every, self.total = directory, kind, every, total
        self.resume, self.overwrite = resume, overwrite
        self.run, self.static = run, dict(static or {})
        self.writer = CheckpointWriter(kind)
        self.session = self.lock = self.run_record = None
        self.writes = False

    def on_resume(self, session):
        self.session, group = session, session.group
        self.writes = bool(self.directory) and group.is_root  # only rank 0 writes files
        if self.writes:
            self.lock = DirectoryLock(self.directory)  # before anything is read
            if not self.resume:
                self._start_over()
            if self.run is not None:
                with session.timer('checkpoint'):
                    self.run_record = self.run()
        if self.resume:
            saved = load_checkpoint(self.directory, session.net, session.trainer,
                                    session.contexts, self.run_record,
                                    states=not group.update_on_kvstore, kind=self.kind)
            if saved is not None:
                session.state = TrainState.from_json(saved)
                self.writer.best = saved.get('best')
            position = session.state.epoch if self.kind == 'epoch' else session.state.step
            group.check_same(position, f'the {self.kind} to resume from')

    def _start_over(self):
        """A run that does not resume: refused where another run's checkpoints are (one
        run per directory), unless ``overwrite``, which removes them first."""
        held = held_checkpoint(self.directory, self.kind)
        if held is None:
            return
        if not self.overwrite:
            raise CheckpointError(f'{self.directory} holds the checkpoints of another run '
                                  f'({held}); resume=True continues it, overwrite=True '
                                  f'replaces it')
        discard_checkpoints(self.directory, self.kind)

    def save(self, state, is_best=False):
        """Start writing a checkpoint of ``state`` (in the background)."""
        if not self.writes:
            return
        session = self.session
        number = state.epoch if self.kind == 'epoch' else state.step
        check_weights(session.net, state.step)
        self.writer.save(self.directory, checkpoint_name(self.kind, number), session.net,
                         session.trainer, {**state.to_json(), **self.static,
                                           'run': self.run_record},
                         is_best, states=not session.group.update_on_kvstore)

    def on_record(self, state, record, is_best, last):
        if self.every is None:
            self.save(state, is_best)

    def on_update(self, state):
        if self.every and (state.step % self.every == 0 or state.step == self.total):
            self.save(state)

    def on_end(self, state):
        try:
            self.writer.wait()
        finally:
            self._release()

    def on_error(self):
        try:  # let the last checkpoint finish: it is what --resume continues from
            self.writer.wait()
        except Exception as err:  # noqa: BLE001  (the first error is the one raised)
            warnings.warn(f'writing the last checkpoint failed too: {err}', stacklevel=3)
        finally:
            self._release()

    def _release(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# ----------------------------------------------------------------------------- session
def place_parameters(net, contexts):
    """A copy of every parameter of ``net`` on each of ``contexts`` (data parallel)."""
    params = net.collect_params()
    if any(set(p.list_ctx()) != set(contexts) for p in params.values()):
        params.reset_ctx(contexts)
        if isinstance(net, gluon.HybridBlock):
            internals.clear_cached_graph(net)


def sync_parameters(group, trainer, params):
    """Give every worker rank 0's parameter values before the first update.

    ``gluon.Trainer`` would broadcast its parameters at its first update, after the first
    gradients were computed from each worker's own initial values; this starts the trainer
    (which broadcasts its own) up front and broadcasts the parameters it does not hold
    (frozen ones) through its kvstore. Under Horovod the group sends them all.
    """
    if not group.is_distributed:
        return
    params = list(params)
    if group.kind == 'horovod':
        group.broadcast_parameters(params)
        return
    held = {p.name for p in internals.trainer_parameters(trainer)}
    group.broadcast_parameters([p for p in params if p.name not in held],
                               internals.trainer_kvstore(trainer), reserved=len(held))


def release_parameters(group, params):
    """After training under ``dist_async``: detach the parameters from their trainer, so
    that new values can be loaded into them (MXNet refuses while the servers own them)."""
    if group.update_on_kvstore:
        for param in params:
            internals.detach_from_trainer(param)


class Session:
    """The frame both loops run in: ``with Session(net, step, callbacks) as state:``.

    On entry the callbacks resume (the :class:`Checkpointer` loads the last checkpoint
    into the model, the trainer and :attr:`state`), the workers are synchronised, and the
    callbacks start (the metrics file is rebuilt). The loop then calls :meth:`record`
    after each epoch or logged step, and :meth:`updated` after each update. On a normal
    exit the callbacks end (the last checkpoint is waited for); on an exception they are
    told (the checkpoint being written is finished: it is what a resume continues from).
    """

    def __init__(self, net, step, callbacks, *, timer=NO_TIMER):
        self.net, self.step, self.timer = net, step, timer
        self.trainer, self.group, self.contexts = step.trainer, step.group, step.contexts
        self.callbacks = [c for c in callbacks if c is not None]
        self.state = TrainState()

    def _each(self, hook, *args):
        for callback in self.callbacks:
            phase = callback.phase
            with self.timer(phase) if phase else contextlib.nullcontext():
                getattr(callback, hook)(*args)

    def __enter__(self):
        try:
            for callback in self.callbacks:
                callback.on_resume(self)
            group = self.group
            if group.is_distributed:
                if group.update_on_kvstore:  # the servers' schedule continues where it was
                    internals.continue_update_count(self.trainer,
                                                    self.state.step * group.num_workers)
                sync_parameters(group, self.trainer, self.net.collect_params().values())
            for callback in self.callbacks:
                callback.on_start(self.state)
        except BaseException:
            self._failed()
            raise
        return self.state

    def record(self, record, score, *, last=False):
        """Add ``record`` to the history (``score``: higher is better) and call the
        callbacks; returns whether it is the best so far."""
        state = self.state
        state.history.append(record)
        is_best = state.track(score)
        self._each('on_record', state, record, is_best, last)
        return is_best

    def updated(self):
        """Call the callbacks after an optimizer update."""
        self._each('on_update', self.state)

    def _failed(self):
        for callback in self.callbacks:
            callback.on_error()

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None:
            self._failed()
            return False
        try:
            self._each('on_end', self.state)
        except BaseException:
            self._failed()
            raise
        release_parameters(self.group, self.step.params)
        return False


def plot_curves(path, x, xlabel, panels):
    """Save line plots as a PNG (needs matplotlib), atomically.

    Parameters
    ----------
    path : str
    x : list of numbers
    xlabel : str
    panels : list of (ylabel, [(label, values, style)])
        One panel per entry, side by side; ``values`` as long as ``x`` (None: no point).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels):
        for label, values, style in lines:
            ax.plot(x, [np.nan if v is None else v for v in values], style, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    plt.close(fig)
