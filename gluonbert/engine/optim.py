"""Optimizers and updates: :class:`AdamW`, :func:`register_optimizers`, the learning-rate
schedule, :func:`make_trainer`, gradient clipping and :func:`optimizer_step` (one update).

AdamW and the clipping norm have fused CPU operators (:mod:`gluonbert.ops`). They are used
only where the run's *kernels* say ``'fused'``: the model's own choice
(``net.config.kernels``, fixed when the model was built) unless ``make_trainer`` is told
otherwise; a block without a config gets ``gluonbert.ops.resolve_kernels('auto')``.
"""
import contextlib
import math
import os

import numpy as np
import mxnet as mx
from mxnet import gluon

from .. import ops
from ..distributed import ServerSchedule
from . import mxnet_internals as internals

__all__ = ['AdamW', 'register_optimizers', 'LinearWarmupSchedule', 'make_trainer',
           'run_trainer', 'model_kernels', 'trainable', 'clip_global_norm', 'optimizer_step',
           'OPTIMIZERS', 'NO_DECAY_SUFFIXES']

OPTIMIZERS = ('bertadam', 'adamw', 'adam', 'sgd')
NO_DECAY_SUFFIXES = ('gamma', 'beta', 'bias')
# the Updater hands AdamW this many arrays per call: all of them, for the fused operator
_ALL_AT_ONCE = 1 << 16


class AdamW(mx.optimizer.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019) and bias correction.

    For a parameter's ``t``-th update, with ``g`` the gradient times ``rescale_grad``::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        w = w - eta_t * (m / (sqrt(v) + epsilon) + wd * w)
        eta_t = lr * sqrt(1 - beta2 ** t) / (1 - beta1 ** t)

    GluonNLP's ``bertadam`` is the same update without the bias correction. Registered as
    ``'adamw'`` by :func:`register_optimizers` (not when gluonbert is imported).

    Parameters
    ----------
    learning_rate, beta1, beta2, epsilon : float
    kernels : {'fused', 'mxnet', 'auto'}, optional
        ``'fused'``: gluonbert's vectorised operator updates all the float32 arrays of a CPU
        context in one call; ``'mxnet'``: MXNet's ``multi_adamw_update``. Default 'auto'
        (:func:`gluonbert.ops.resolve_kernels`); :func:`make_trainer` passes the model's.
    **kwargs
        Of ``mx.optimizer.Optimizer`` (``wd``, ``rescale_grad``, ``lr_scheduler``...).
    """

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-6,
                 kernels=None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.kernels = ops.resolve_kernels(kernels or 'auto')
        # MXNet's multi-array update takes its arrays in groups of this size (read as
        # MXNet's own optimizers read it)
        self.mxnet_group_size = max(1, min(50, int(os.getenv(
            'MXNET_OPTIMIZER_AGGREGATION_SIZE', '4'))))
        self.aggregate_num = _ALL_AT_ONCE
        self._clip_scale = None  # set for the duration of one update by rescaled()

    @contextlib.contextmanager
    def rescaled(self, scale):
        """Updates made within the block also multiply the gradients by ``scale``.

        Gradient clipping hands its factor (an NDArray of shape (1,)) this way:
        ``with optimizer.rescaled(scale): trainer.update(1)``. The update operators apply
        it along with ``rescale_grad``, so clipping costs no pass over the gradients; the
        factor is dropped when the block ends, whatever happens in it.
        """
        self._clip_scale = scale
        try:
            yield self
        finally:
            self._clip_scale = None

    def create_state(self, index, weight):
        return (mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype),  # mean
                mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype))  # variance

    def create_state_multi_precision(self, index, weight):
        if self.multi_precision and weight.dtype == np.float16:
            master = weight.astype(np.float32)  # the float32 copy that is updated
            return (self.create_state(index, master), master)
        return self.create_state(index, weight)

    def update(self, index, weight, grad, state):
        self._update(index, weight, grad, state, multi_precision=False)

    def update_multi_precision(self, index, weight, grad, state):
        first = weight[0] if isinstance(weight, (list, tuple)) else weight
        self._update(index, weight, grad, state,
                     multi_precision=self.multi_precision and first.dtype == np.float16)

    def _get_lrs(self, indices):
        """The step sizes: each learning rate with Adam's bias correction folded in."""
        lrs = super()._get_lrs(indices)
        steps = [internals.update_count(self, index) for index in indices]
        return [lr * math.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
                for lr, t in zip(lrs, steps)]

    def _update(self, indices, weights, grads, states, multi_precision):
        if not isinstance(indices, (list, tuple)):
            indices, weights, grads, states = [indices], [weights], [grads], [states]
        scale = self._gradient_scale(weights[0].context)
        if not multi_precision and self._fused(weights, grads):
            self._fused_update(indices, weights, grads, states, scale)
            return
        self._update_count(indices)
        etas, wds = self._get_lrs(indices), self._get_wds(indices)
        options = {'beta1': self.beta1, 'beta2': self.beta2, 'epsilon': self.epsilon,
                   'rescale_grad': scale}
        if self.clip_gradient:
            options['clip_gradient'] = self.clip_gradient
        dense = all(a.stype == 'default' for a in list(weights) + list(grads))
        group = self.mxnet_group_size if dense and self.mxnet_group_size > 1 else 0
        if group:  # MXNet's multi-array kernels (lr=1, eta=the step size)
            for start in range(0, len(weights), group):
                part = slice(start, start + group)
                w, size = list(weights[part]), len(weights[part])
                sizes = dict(size=size, lrs=[1.0] * size, wds=wds[part], etas=etas[part])
                if multi_precision:
                    moments, masters = zip(*states[part])
                    means, variances = zip(*moments)
                    mx.nd.contrib.multi_mp_adamw_update(w, grads[part], means, variances,
                                                        masters, out=w, **sizes, **options)
                else:
                    means, variances = zip(*states[part])
                    mx.nd.contrib.multi_adamw_update(w, grads[part], means, variances,
                                                     out=w, **sizes, **options)
            return
        for w, g, state, eta, wd in zip(weights, grads, states, etas, wds):
            if multi_precision:
                (mean, var), master = state
                mx.nd.contrib.mp_adamw_update(w, g, mean, var, master, out=w, lr=1, wd=wd,
                                              eta=eta, **options)
            else:
                mean, var = state
                mx.nd.contrib.adamw_update(w, g, mean, var, out=w, lr=1, wd=wd, eta=eta,
                                           **options)

    def _gradient_scale(self, ctx):
        """``rescale_grad`` (times the clipping factor within :meth:`rescaled`) as an
        NDArray of shape (1,) on ``ctx``: the update operators take it as an input."""
        scale = self.rescale_grad
        scale = (scale.as_in_context(ctx) if isinstance(scale, mx.nd.NDArray)
                 else mx.nd.full((1,), scale, ctx=ctx))
        if self._clip_scale is not None:
            scale = self._clip_scale.as_in_context(ctx) * scale
        return scale

    def _fused(self, weight, grad):
        """Whether gluonbert's operator applies: fused kernels chosen, dense float32 arrays
        on CPU, no clip_gradient (one context per call: the Trainer updates each device
        separately). ``ops.load()`` guards an optimizer unpickled on a parameter server."""
        if self.kernels != 'fused' or self.clip_gradient is not None or \
                weight[0].context.device_type != 'cpu':
            return False
        return ops.load() and all(a.stype == 'default' and a.dtype == np.float32
                                  for a in list(weight) + list(grad))

    def _fused_update(self, indices, weight, grad, state, scale):
        """The update of ``contrib.adamw_update`` (lr=1, eta=the step size) for all the
        arrays in one call of gluonbert's operator, which leaves the gradients alone."""
        self._update_count(indices)
        etas, wds = self._get_lrs(indices), self._get_wds(indices)
        means, variances = zip(*state)
        mx.nd.gluonbert_multi_adamw_update(
            *weight, *grad, *means, *variances, scale, out=list(weight),
            num_arrays=len(weight), etas=','.join(map(repr, etas)),
            wds=','.join(map(repr, wds)), beta1=self.beta1, beta2=self.beta2,
            epsilon=self.epsilon)


def register_optimizers(*names):
    """Register gluonbert's optimizers in MXNet's registry (``mx.optimizer.Optimizer.
    opt_registry``), so that ``gluon.Trainer(params, 'adamw', ...)`` finds them.

    Importing gluonbert registers nothing; :func:`make_trainer`, and through it the
    training loops, call this before they create a Trainer. Calling it again changes
    nothing.

    Parameters
    ----------
    *names : {'adamw', 'bertadam'}
        Default: both. ``'adamw'`` is :class:`AdamW`; ``'bertadam'`` is GluonNLP's BERTAdam
        (registered by GluonNLP when ``gluonnlp.optimizer`` is imported).
    """
    registry = mx.optimizer.Optimizer.opt_registry
    for name in names or ('adamw', 'bertadam'):
        if name == 'adamw':
            if registry.get('adamw') is not AdamW:
                mx.optimizer.register(AdamW)
        elif name == 'bertadam':
            if 'bertadam' not in registry:
                import gluonnlp.optimizer  # noqa: F401  pylint: disable=unused-import
        else:
            raise ValueError(f"gluonbert registers 'adamw' and 'bertadam', not {name!r}")


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


def trainable(net):
    """``net``'s parameters that get gradients, in ``collect_params`` order."""
    return [p for p in net.collect_params().values() if p.grad_req != 'null']


def model_kernels(net, kernels=None):
    """The kernels (``'fused'`` or ``'mxnet'``) a run of ``net`` updates and clips with.

    ``kernels`` when given ('auto' resolved), else the model's ``config.kernels`` (resolved
    when it was built), else :func:`gluonbert.ops.resolve_kernels` ``('auto')``.
    """
    if kernels is None:
        chosen = getattr(getattr(net, 'config', None), 'kernels', None)
        kernels = chosen if chosen in ('fused', 'mxnet') else 'auto'
    return ops.resolve_kernels(kernels)


def make_trainer(net, *, optimizer='adamw', lr=5e-5, weight_decay=0.01, kvstore='device',
                 epsilon=1e-6, update_on_kvstore=False, lr_scheduler=None, kernels=None):
    """A ``gluon.Trainer`` over the trainable parameters only, without weight decay on
    LayerNorm parameters and biases.

    ``kvstore`` is a name or an ``mx.kv.KVStore`` (see :mod:`gluonbert.distributed`).
    ``update_on_kvstore=True`` (``dist_async`` only) runs the optimizer on the servers,
    with ``lr_scheduler`` (a callable of the update count) as its learning-rate schedule.
    ``kernels`` (``adamw``): see :func:`model_kernels`. Registers the optimizers first
    (:func:`register_optimizers`).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be 'bertadam', 'adamw', 'adam' or 'sgd', "
                         f"got {optimizer!r}")
    params = trainable(net)
    if not params:
        raise ValueError('the network has no trainable parameters')
    for param in params:
        if param.name.endswith(NO_DECAY_SUFFIXES):
            param.wd_mult = 0.0
    options = {'learning_rate': lr, 'wd': weight_decay}
    if optimizer in ('bertadam', 'adamw', 'adam'):
        options['epsilon'] = epsilon
    if optimizer == 'adamw':
        options['kernels'] = model_kernels(net, kernels)
    if lr_scheduler is not None:
        options['lr_scheduler'] = lr_scheduler
    if optimizer in ('adamw', 'bertadam'):
        register_optimizers(optimizer)
    # update_on_kvstore=False: gradients are all-reduced, clipped, then applied locally.
    return gluon.Trainer(params, optimizer, options, kvstore=kvstore,
                         update_on_kvstore=update_on_kvstore)


def run_trainer(net, group, *, optimizer, lr, weight_decay, total_steps, warmup_ratio,
                kernels):
    """``(trainer, schedule)`` of a training run of ``total_steps`` updates in ``group``.

    Under ``dist_async`` the servers run the optimizer and count every worker's updates:
    they get the schedule stretched over ``total_steps x workers``.
    """
    schedule = LinearWarmupSchedule(lr, total_steps, warmup_ratio)
    server = (ServerSchedule(LinearWarmupSchedule(lr, total_steps * group.num_workers,
                                                  warmup_ratio))
              if group.update_on_kvstore else None)
    trainer = make_trainer(net, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                           kvstore=group.trainer_kvstore(),
                           update_on_kvstore=group.update_on_kvstore, lr_scheduler=server,
                           kernels=kernels)
    return trainer, schedule


def clip_global_norm(params, contexts, max_norm, *, kernels='mxnet', fold=False):
    """Clip each context's gradients to global norm ``max_norm`` (None or 0: no clipping).

    The norm is one fused sum of squares per context: gluonbert's operator (one vectorised
    pass, double accumulation) with ``kernels='fused'`` on CPU float32 gradients, MXNet's
    ``multi_sum_sq`` otherwise. The gradients are scaled in place, as
    ``gluon.utils.clip_global_norm`` does, unless ``fold`` (one context only): the factor is
    then returned for the optimizer to apply (:meth:`AdamW.rescaled`), which halved the
    clipping + update time of a MiniLM step.

    Returns
    -------
    NDArray of shape (1,) or None
        The factor, with ``fold`` and clipping on; None otherwise.
    """
    if not max_norm:
        return None
    if fold and len(contexts) != 1:
        raise ValueError('fold=True is for one context (each has its own factor)')
    for ctx in contexts:
        grads = [p.grad(ctx) for p in params]
        if kernels == 'fused' and ctx.device_type == 'cpu' and \
                all(g.dtype == np.float32 for g in grads):
            sum_sq = mx.nd.gluonbert_multi_sum_sq(*grads, num_arrays=len(grads))  # (1,)
        else:
            sum_sq = mx.nd.multi_sum_sq(*grads, num_arrays=len(grads)).sum()  # (1,)
        scale = mx.nd.minimum(max_norm / (mx.nd.sqrt(sum_sq) + 1e-8), 1.0)  # (1,)
        if fold:
            return scale
        for grad in grads:
            grad *= scale
    return None


def optimizer_step(trainer, params, contexts, group, lr, max_grad_norm, kernels='mxnet'):
    """One update: all-reduce the gradients (contexts and workers), clip their global
    norm, apply them with learning rate ``lr``.

    Under ``dist_async`` the servers hold the optimizer and the learning-rate schedule:
    each worker clips its own gradients and pushes them (``lr`` is not used).
    """
    if group.update_on_kvstore:
        clip_global_norm(params, contexts, max_grad_norm, kernels=kernels)
        trainer.step(1)
        return
    trainer.set_learning_rate(lr)
    group.allreduce_grads(trainer, params, contexts)
    optimizer = trainer.optimizer
    fold = isinstance(optimizer, AdamW) and len(contexts) == 1
    scale = clip_global_norm(params, contexts, max_grad_norm, kernels=kernels, fold=fold)
    if scale is None:
        trainer.update(1)
    else:
        with optimizer.rescaled(scale):
            trainer.update(1)
