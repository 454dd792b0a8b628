"""Every private MXNet 1.9 attribute the training engine relies on, one function each.

MXNet's ``gluon.Trainer``, ``Optimizer`` and ``Parameter`` have no public way to do a few
things the engine needs (save optimizer states without pickling, start a trainer before its
first update, continue a schedule on the parameter servers...). Each such use is here,
with why it is needed; ``tests/test_train.py::test_mxnet_internals_*`` call every one of
them against a real trainer, so that a newer MXNet that renames one fails there, in one
line, instead of in the middle of a training run.

:class:`~gluonbert.engine.optim.AdamW` also uses ``Optimizer``'s hooks for subclasses
(``_update_count``, ``_get_lrs``, ``_get_wds``), as every MXNet optimizer does. Below the
engine's layer, ``gluonbert.distributed._leave`` frees the job's kvstore through MXNet's C
API at exit (one function, next to the kvstore it frees); ``gluonbert.amp`` needs no
private attribute (AMP's operator lists are public module attributes). ruff's SLF001
(private member access) is off for this file only (``pyproject.toml``); every other private
use in the package is marked ``# noqa: SLF001`` with its reason.
"""

__all__ = ['start_trainer', 'trainer_updaters', 'trainer_parameters', 'trainer_kvstore',
           'update_counts', 'update_count', 'restore_update_counts', 'continue_update_count',
           'uses_amp_loss_scaling', 'structural_parameters', 'reduced_data', 'load_parameter',
           'detach_from_trainer', 'clear_cached_graph']


def start_trainer(trainer):
    """Create ``trainer``'s kvstore and updaters now rather than at its first update.

    Why: MXNet does it lazily in ``Trainer.step/update``; saving optimizer states before the
    first update, and broadcasting rank 0's parameters before the first gradients, need it
    done (``Trainer.save_states`` calls the same two methods).
    """
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()


def trainer_updaters(trainer):
    """``trainer``'s per-context ``mx.optimizer.Updater`` objects (started first).

    Why: the optimizer states (Adam's moments) live in the updaters; the only public way to
    get them, ``Trainer.save_states``, pickles them, and a pickle is not loaded back (it can
    run any code).
    """
    start_trainer(trainer)
    return trainer._updaters


def trainer_parameters(trainer):
    """The parameters ``trainer`` updates, in the order that indexes the optimizer states.

    Why: loading optimizer states checks each one's shape against its parameter.
    """
    return list(trainer._params)


def trainer_kvstore(trainer):
    """The kvstore ``trainer`` pushes its gradients through (None for a single device).

    Why: parameters the trainer does not hold (frozen ones) are broadcast through the same
    kvstore, in a key range of their own, so that every worker starts equal.
    """
    start_trainer(trainer)
    return trainer._kvstore


def update_counts(optimizer):
    """``{parameter index: updates so far}``: the counts Adam's bias correction uses.

    Why: an exact resume must restore them; MXNet keeps them in a private dict.
    """
    return dict(optimizer._index_update_count)


def update_count(optimizer, index):
    """How many updates parameter ``index`` has had (``optimizer._update_count`` counts
    them).

    Why: AdamW's bias correction depends on it; MXNet keeps it in a private dict.
    """
    return optimizer._index_update_count[index]


def restore_update_counts(optimizer, num_update, begin_num_update, counts):
    """Set ``optimizer``'s update counts as :func:`update_counts` (and the two public
    counters) read them when it was saved.

    Why: the dict is private; it is changed in place because MXNet's Updater objects may
    share it.
    """
    optimizer.num_update = num_update
    optimizer.begin_num_update = begin_num_update
    optimizer._index_update_count.clear()
    optimizer._index_update_count.update(counts)


def continue_update_count(trainer, count):
    """Make ``trainer``'s optimizer count its updates from ``count`` on.

    Why: under ``dist_async`` the optimizer, with its learning-rate schedule, is pickled to
    the parameter servers when the trainer starts; a resumed run must hand them the update
    count it stopped at, or the schedule would start over. ``begin_num_update`` is where
    MXNet's Optimizer starts counting.
    """
    optimizer = trainer.optimizer
    optimizer.begin_num_update = optimizer.num_update = count


def uses_amp_loss_scaling(trainer):
    """Whether ``amp.init_trainer`` gave ``trainer`` a loss scaler (float16 AMP).

    Why: MXNet marks such a trainer with a private attribute only; the backward pass must
    then go through ``amp.scale_loss``.
    """
    return getattr(trainer, '_amp_loss_scaler', None) is not None


def structural_parameters(block):
    """``{structural name: Parameter}`` as ``save_parameters`` names them (``encoder.
    layers.0.ffn.dense1.weight``...), the same whatever prefix the block was built with.

    Why: checkpoints and their checks use the names ``save_parameters`` writes; gluon's
    public ``collect_params`` names parameters by their (global, counter-based) prefix.
    """
    return block._collect_params_with_prefix()


def reduced_data(param):
    """A CPU copy of ``param``'s value (the mean over its contexts), as
    ``save_parameters`` writes it.

    Why: a checkpoint written in a background thread needs a copy that later updates do
    not change, taken the way MXNet's own save takes it.
    """
    return param._reduce()


def load_parameter(param, array, contexts):
    """Give ``param`` the value ``array`` on ``contexts``, as ``load_parameters`` does.

    Why: checkpoints are read once, checked, then assigned; ``load_parameters`` would read
    the file again and accepts no array.
    """
    param._load_init(array, contexts)


def detach_from_trainer(param):
    """Detach ``param`` from its trainer.

    Why: under ``dist_async`` the servers own the parameters, and MXNet refuses to load new
    values into them while the trainer holds them (e.g. the best checkpoint's weights).
    """
    param._set_trainer(None)


def clear_cached_graph(block):
    """Forget ``block``'s traced graph, so that it is traced again at the next call.

    Why: after its parameters move to other devices, a graph traced for the old ones may
    hold CPU-only operators (gluonbert's fused ones); gluon has no public way to drop it.
    """
    block._clear_cached_op()
