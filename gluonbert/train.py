"""Fine-tuning loop: ``train_loop(net, train_data, test_data, num_epoch, lr, ctx, loss_fn)``.

Batches are ``(words, valid_length, segments, label)`` as produced by
:func:`gluonbert.data.make_dataloader` (and the seed tutorial's batchify).
"""
import json
import math
import os
import random
import threading
import time
import warnings

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from . import ops
from ._io import atomic_write, write_text as _write_text
from .distributed import ServerSchedule, get_group
from .hardware import require_bf16
from .timing import NO_TIMER

__all__ = ['train_loop', 'evaluate_accuracy', 'AdamW', 'make_trainer', 'LinearWarmupSchedule',
           'plot_history', 'History', 'atomic_write', 'save_trainer_states',
           'load_trainer_states']

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

    One ``mx.nd.save`` file (the counts ride along as a JSON byte array): about 3x faster
    than ``gluon.Trainer.save_states``, which pickles every array (0.7 s against 0.25 s for
    MiniLM's 180 MB on 2 cores). Read it with :func:`load_trainer_states`.
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


def load_trainer_states(trainer, path):
    """Restore what :func:`save_trainer_states` wrote (or a ``gluon.Trainer.save_states``
    file) into ``trainer``."""
    try:
        arrays = mx.nd.load(path)
    except mx.base.MXNetError:  # a pickled gluon.Trainer.save_states file
        trainer.load_states(path)
        return
    if not isinstance(arrays, dict) or '__meta__' not in arrays:
        raise ValueError(f'{path} is not an optimizer state file')
    meta = json.loads(bytes(arrays.pop('__meta__').asnumpy().astype(np.uint8)).decode('utf-8'))
    if meta.get('format') != STATES_FORMAT:
        raise ValueError(f'{path}: unknown optimizer state format {meta.get("format")!r}')

    def unflatten(spec, copy):
        if spec is None:
            return None
        if isinstance(spec, str):
            return arrays[spec].copy() if copy else arrays[spec]
        return tuple(unflatten(s, copy) for s in spec)
    for position, updater in enumerate(_updaters(trainer)):
        # as Updater.set_states does; the states move to each weight's context on use
        updater.states = {int(index): unflatten(spec, copy=position > 0)
                          for index, spec in meta['layout'].items()}
        updater.states_synced = dict.fromkeys(updater.states, False)
        optimizer = updater.optimizer
        optimizer.num_update = meta['num_update']
        optimizer.begin_num_update = meta['begin_num_update']
        counts = optimizer._index_update_count  # pylint: disable=protected-access
        counts.clear()
        counts.update({int(k): v for k, v in meta['index_update_count'].items()})


def _checkpoint_paths(checkpoint_dir):
    return {name: os.path.join(checkpoint_dir, name) for name in
            ('last.params', 'last.states', 'last.json', 'best.params')}


def _link_or_save(source, path, save):
    """``path`` as a hard link to the (complete, never rewritten in place) file ``source``,
    atomically; ``save(tmp_path)`` writes it where the filesystem has no hard links."""
    tmp = f'{path}.{os.getpid()}.link'
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        atomic_write(path, save)


class _CheckpointWriter:
    """Writes checkpoints in a background thread, so that training goes on meanwhile.

    ``save`` snapshots the parameters and optimizer states to CPU copies (ordered by the
    engine before any later update), then writes them, one checkpoint at a time. A
    failed write raises at the next ``save`` or ``wait``.
    """

    def __init__(self):
        self._thread = None
        self._error = None

    def save(self, checkpoint_dir, net, trainer, state, is_best, states=True):
        self.wait()
        params = {name: param._reduce()  # pylint: disable=protected-access
                  for name, param in net._collect_params_with_prefix().items()}  # pylint: disable=protected-access
        optimizer_states = _trainer_state_arrays(trainer, snapshot=True) if states else None
        state = json.loads(json.dumps(state))  # a copy: the caller's history grows

        def write():
            paths = _checkpoint_paths(checkpoint_dir)
            atomic_write(paths['last.params'], lambda tmp: mx.nd.save(tmp, params))
            if optimizer_states is not None:  # dist_async: the states live on the servers
                atomic_write(paths['last.states'], lambda tmp: mx.nd.save(tmp, optimizer_states))
            if is_best:  # the same bytes as last.params: a link, not a second write
                _link_or_save(paths['last.params'], paths['best.params'],
                              lambda tmp: mx.nd.save(tmp, params))
            # written last: its presence means the params and states above are complete
            _write_text(paths['last.json'], json.dumps(state, indent=2))
        self._thread = threading.Thread(target=self._run, args=(write,),
                                        name='gluonbert-checkpoint')
        self._thread.start()

    def _run(self, write):
        try:
            write()
        except BaseException as err:  # pylint: disable=broad-except
            self._error = err

    def wait(self):
        """Block until the checkpoint being written is complete; raise its error if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _load_checkpoint(checkpoint_dir, net, trainer, contexts, states=True):
    paths = _checkpoint_paths(checkpoint_dir)
    if not os.path.exists(paths['last.json']):
        return None
    with open(paths['last.json'], encoding='utf-8') as f:
        state = json.load(f)
    net.load_parameters(paths['last.params'], ctx=contexts)
    if states:
        load_trainer_states(trainer, paths['last.states'])
    return state


def train_loop(net, train_data, test_data, num_epoch, lr, ctx, loss_fn=None, *,
               optimizer='adamw', weight_decay=0.01, warmup_ratio=0.1, max_grad_norm=1.0,
               accumulate=1, dtype='float32', kvstore='device', seed=0,
               checkpoint_dir=None, resume=False, early_stop=None, metrics_path=None,
               plot_path=None, progress=True, on_epoch_end=None, timer=None):
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
        Writes ``last.*`` every epoch and ``best.params`` (best test accuracy), atomically.
    resume : bool
        Continue from ``checkpoint_dir``'s last checkpoint (model, trainer, epoch, history).
        Distributed workers all read it, so it must be on a filesystem they share.
    early_stop : int, optional
        Stop after this many epochs without a better test accuracy.
    metrics_path : str, optional
        Appends one JSON line per epoch.
    plot_path : str, optional
        PNG of the loss and accuracy curves, rewritten every epoch.
    progress : bool
        tqdm progress bar with loss and samples/s.
    on_epoch_end : callable(record), optional
    timer : :class:`gluonbert.timing.PhaseTimer`, optional
        Charges the run's wall time to phases (``data``, ``forward_backward``, ``update``,
        ``metrics``, ``evaluate``, ``checkpoint``, ``logging``), draining MXNet's engine at
        the end of each; for finding bottlenecks (a timed run is slightly slower).

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

    history, start_epoch, step, best_accuracy, stale_epochs = History(), 0, 0, -1.0, 0
    if resume:
        state = _load_checkpoint(checkpoint_dir, net, trainer, contexts,
                                 states=not group.update_on_kvstore)
        if state is not None:
            history = History(state['history'])
            start_epoch, step = state['epoch'] + 1, state['step']
            best_accuracy, stale_epochs = state['best_accuracy'], state['stale_epochs']
        group.check_same(start_epoch, 'the epoch to resume from')
    if group.is_distributed:
        if server_schedule is not None:  # the servers' schedule continues where it was
            trainer._optimizer.begin_num_update = trainer._optimizer.num_update = \
                step * group.num_workers  # pylint: disable=protected-access
        group.sync_parameters(trainer, all_params.values())

    writer = _CheckpointWriter()
    plotted = time.perf_counter()
    try:
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
                if metrics_path and group.is_root:
                    os.makedirs(os.path.dirname(os.path.abspath(metrics_path)), exist_ok=True)
                    with open(metrics_path, 'a', encoding='utf-8') as f:
                        f.write(json.dumps(record) + '\n')
            with timer('checkpoint'):  # written in the background while the plot is drawn
                if checkpoint_dir and group.is_root:
                    writer.save(checkpoint_dir, net, trainer,
                                {'epoch': epoch, 'step': step, 'history': list(history),
                                 'best_accuracy': best_accuracy, 'stale_epochs': stale_epochs,
                                 'seed': seed}, is_best, states=not group.update_on_kvstore)
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
    except BaseException:
        try:  # let the last checkpoint finish: it is what --resume continues from
            writer.wait()
        except Exception as err:  # pylint: disable=broad-except
            warnings.warn(f'writing the last checkpoint failed too: {err}')
        raise
    with timer('checkpoint'):
        writer.wait()
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
