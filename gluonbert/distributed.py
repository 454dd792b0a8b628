"""Data-parallel training across processes and machines: MXNet's KVStore and Horovod.

:func:`get_group` returns the :class:`Group` this process trains in, for a ``kvstore``
name:

- ``'device'``, ``'local'``: one process. Several contexts (GPUs) in it reduce their
  gradients through a local kvstore; this is the single-process behaviour.
- ``'dist_sync'``, ``'dist_device_sync'``: synchronous parameter-server training. Every
  worker pushes its gradients to the servers each update and pulls back their sum, so the
  workers keep identical parameters. Start the job with ``gluonbert-launch`` (or any
  launcher that sets MXNet's ``DMLC_*`` environment). ``dist_device_sync`` sums a worker's
  GPUs on a GPU before talking to the servers.
- ``'dist_async'``: asynchronous parameter-server training: the servers hold the optimizer
  and apply each worker's gradients as they arrive. Fastest on uneven machines, but not
  reproducible; metrics are per worker (rank 0's are reported).
- ``'horovod'``: ring all-reduce with Horovod (``horovodrun -np N ...``), imported lazily.

Each worker trains on its own shard of the data (:func:`shard_indices`), with the same
number of batches per epoch on every worker; the gradients are summed over the workers,
so one update sees ``batch_size x workers`` examples (the *global batch*). The first
update starts from rank 0's parameters, and only rank 0 writes files.
"""
import atexit
import os

import numpy as np
import mxnet as mx
# (not mx.kvstore.*: a parameter server unpickles the optimizer and its schedule, importing
# this module, while `import mxnet` is still running its server loop)
from mxnet.kvstore.base import KVStoreBase
from mxnet.kvstore.kvstore import KVStore

from .data.batching import shard_indices
from .errors import EnvironmentProblem, GluonbertError

__all__ = ['KVSTORES', 'Group', 'get_group', 'shard_indices', 'shard', 'DistributedError',
           'HorovodUnavailable', 'HOROVOD_INSTALL', 'ServerSchedule']

KVSTORES = ('device', 'local', 'dist_sync', 'dist_device_sync', 'dist_async', 'horovod')
_PARAMETER_SERVER = ('dist_sync', 'dist_device_sync', 'dist_async')
HOROVOD_INSTALL = ('pip install horovod with HOROVOD_WITH_MXNET=1 (for example: '
                   'HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 '
                   'HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 '
                   'pip install --no-build-isolation horovod==0.28.1; it needs cmake and a '
                   'C++ compiler)')
# Integer kvstore keys (a kvstore takes one key type). A gluon.Trainer uses keys 0, 1, ...
# for its parameters: each trainer of a process gets its own range of _KEYS_PER_TRAINER
# keys, the upper half of which carries the parameters it does not train (frozen ones).
# The metric sums use keys from _METRIC_KEY on.
_KEYS_PER_TRAINER = 1 << 20
_FROZEN_KEY = 1 << 19
_METRIC_KEY = 1 << 30


class DistributedError(GluonbertError, ValueError):
    """A distributed-training setting that cannot work; the message says what to do."""


class HorovodUnavailable(EnvironmentProblem):
    """``kvstore='horovod'`` without an importable ``horovod.mxnet``."""


def shard(items, num_shards=1, shard_index=0, *, even=True):
    """The items of :func:`shard_indices` (a list; ``items`` itself when not sharded)."""
    if num_shards == 1:
        return items
    return [items[i] for i in shard_indices(len(items), num_shards, shard_index, even=even)]


class Group:
    """The workers training one model together, as seen from one of them.

    Attributes
    ----------
    kind : str
        One of :data:`KVSTORES`.
    rank, num_workers : int
        This worker's rank (0 is the root) and the number of workers.
    local_rank : int
        Rank among the workers on this machine (Horovod; 0 otherwise): picks the GPU.
    kvstore : mx.kv.KVStore or None
        The job's kvstore (parameter-server kinds), created once per process.
    """

    def __init__(self, kind, *, rank=0, num_workers=1, local_rank=0, kvstore=None, hvd=None):
        self.kind, self.rank, self.num_workers = kind, rank, num_workers
        self.local_rank, self.kvstore, self._hvd = local_rank, kvstore, hvd
        self._metric_keys = {}
        self._trainers = 0

    def __repr__(self):
        return f'Group({self.kind!r}, rank={self.rank}, num_workers={self.num_workers})'

    @property
    def is_root(self):
        """True on the worker that writes checkpoints, metrics and models (rank 0)."""
        return self.rank == 0

    @property
    def is_distributed(self):
        """True when several processes train together (or could: any dist/horovod kind)."""
        return self.kind in _PARAMETER_SERVER or self.kind == 'horovod'

    @property
    def update_on_kvstore(self):
        """Only ``dist_async`` applies the optimizer on the servers."""
        return self.kind == 'dist_async'

    def trainer_kvstore(self):
        """What a new ``gluon.Trainer(kvstore=...)`` gets: the name for one process, None
        for Horovod (which all-reduces itself), and for parameter servers the job's KVStore,
        seen through a range of keys of its own (so one process can train several models)."""
        if self.kind in ('device', 'local'):
            return self.kind
        if self.kvstore is None:
            return None
        offset = self._trainers * _KEYS_PER_TRAINER
        self._trainers += 1
        if offset + _KEYS_PER_TRAINER > _METRIC_KEY:
            raise DistributedError('too many trainers in one distributed process')
        return self.kvstore if offset == 0 else _KeyRange(self.kvstore, offset)

    @property
    def gradient_divisor(self):
        """Losses are divided by this so that the summed gradients are a mean over the
        global batch (1 for asynchronous updates, each of which is one worker's)."""
        return 1 if self.update_on_kvstore else self.num_workers

    @property
    def metrics_are_global(self):
        """Whether :meth:`allreduce` sums over the workers (not under ``dist_async``, whose
        servers would apply the optimizer to any value pushed to them)."""
        return not self.update_on_kvstore

    # ------------------------------------------------------------------ collectives
    def allreduce(self, values):
        """Sum of a few numbers (loss sums, counts) over the workers, as a float64 array.

        Every worker must call it at the same point with the same number of values. The
        parameter-server kvstore carries float32: each value travels as a float32 head and
        a float32 remainder, so sums keep about 14 significant digits.
        """
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if not self.is_distributed or not self.metrics_are_global:
            return values
        if self._hvd is not None:
            summed = self._hvd.allreduce(mx.nd.array(values, dtype='float64'),
                                         op=self._hvd.Sum, name=f'gluonbert.sum.{values.size}')
            return summed.asnumpy().astype(np.float64)
        head = values.astype(np.float32)
        rest = (values - head.astype(np.float64)).astype(np.float32)
        packed = mx.nd.array(np.concatenate([head, rest]), dtype='float32')
        key = self._metric_keys.get(packed.size)
        if key is None:  # init is collective: every worker reaches it in the same order
            key = self._metric_keys[packed.size] = _METRIC_KEY + len(self._metric_keys)
            self.kvstore.init(key, mx.nd.zeros(packed.shape, dtype='float32'))
        self.kvstore.push(key, packed)
        self.kvstore.pull(key, out=packed)
        summed = packed.asnumpy().astype(np.float64)
        return summed[:values.size] + summed[values.size:]

    def check_same(self, value, what):
        """Raise DistributedError on every worker unless all workers have ``value``."""
        if not self.is_distributed or not self.metrics_are_global:
            return
        total, squares = self.allreduce([value, float(value) ** 2])
        mean = total / self.num_workers
        if abs(squares / self.num_workers - mean ** 2) > 1e-6 * max(1.0, mean ** 2):
            raise DistributedError(f'the workers disagree on {what} (rank {self.rank} has '
                                   f'{value}); every worker must see the same checkpoint '
                                   f'directory (a shared filesystem)')

    def broadcast_parameters(self, params, kvstore=None, *, reserved=0):
        """Give every worker rank 0's values of ``params`` (all workers must call it).

        Under Horovod they all go through one grouped all-reduce (see below). With parameter
        servers they go through ``kvstore`` (the view a trainer has of the job's kvstore,
        whose keys ``0 .. reserved - 1`` are the trainer's own), one key each from the upper
        half of its range. The training engine calls it for the parameters a trainer does
        not hold (frozen ones), after starting the trainer (which broadcasts its own): see
        :func:`gluonbert.engine.loop.sync_parameters`.
        """
        params = list(params)
        if not self.is_distributed or not params:
            return
        if self._hvd is not None:
            # Horovod 0.28's own broadcast reads the op's name after handing the op to its
            # background thread, which may already have freed it: a rare segfault on the
            # root rank (seen in CI). Its grouped allreduce does not; a sum in which every
            # other rank gives zeros is rank 0's values, exactly.
            arrays = [p.data() for p in params]
            if self.rank != 0:
                for array in arrays:
                    array[:] = 0
            self._hvd.grouped_allreduce_(arrays, op=self._hvd.Sum, name='gluonbert.broadcast')
            for array in arrays:
                array.wait_to_read()
            return
        if reserved > _FROZEN_KEY or len(params) > _FROZEN_KEY:
            raise DistributedError('too many parameters for the kvstore key range')
        for index, param in enumerate(sorted(params, key=lambda p: p.name)):
            arrays = param.list_data()
            kvstore.broadcast(_FROZEN_KEY + index, arrays[0], out=arrays)

    def allreduce_grads(self, trainer, params, contexts):
        """Sum the gradients over the contexts and the workers (in place)."""
        trainer.allreduce_grads()
        if self._hvd is not None and self.num_workers > 1:
            grads = [p.grad(contexts[0]) for p in params]
            if grads:  # (Horovod's grouped ops index the first array)
                self._hvd.grouped_allreduce_(grads, op=self._hvd.Sum, name='gluonbert.grads')

    def check_contexts(self, contexts):
        if self._hvd is not None and len(contexts) > 1:
            raise DistributedError('kvstore horovod trains one context per process: start one '
                                   'process per GPU with horovodrun (gluonbert-finetune picks '
                                   'GPU LOCAL_RANK of --gpus)')


class ServerSchedule(mx.lr_scheduler.LRScheduler):
    """A learning-rate schedule (a callable of the 1-based update count) as an MXNet
    LRScheduler, for an optimizer that runs on the parameter servers (``dist_async``)."""

    def __init__(self, schedule):
        super().__init__(base_lr=schedule.lr)
        self.schedule = schedule

    def __call__(self, num_update):
        return self.schedule(max(1, num_update))


class _KeyRange(KVStoreBase):
    """A kvstore seen through integer keys shifted by ``offset``, for a second trainer."""

    def __init__(self, store, offset):
        self._store, self._offset = store, offset

    def _key(self, key):
        if isinstance(key, (list, tuple)):
            return [self._key(k) for k in key]
        return key + self._offset

    def init(self, key, value):
        self._store.init(self._key(key), value)

    def push(self, key, value, priority=0):
        self._store.push(self._key(key), value, priority=priority)

    def pull(self, key, out=None, priority=0, ignore_sparse=True):
        self._store.pull(self._key(key), out=out, priority=priority,
                         ignore_sparse=ignore_sparse)

    def row_sparse_pull(self, key, out=None, priority=0, row_ids=None):
        self._store.row_sparse_pull(self._key(key), out=out, priority=priority,
                                    row_ids=row_ids)

    def broadcast(self, key, value, out, priority=0):
        self._store.broadcast(self._key(key), value, out, priority=priority)

    def pushpull(self, key, value, out=None, priority=0):
        self._store.pushpull(self._key(key), value, out=out, priority=priority)

    def is_capable(self, capability):
        return self._store.is_capable(capability)

    def set_optimizer(self, optimizer):
        self._store.set_optimizer(optimizer)

    def save_optimizer_states(self, fname, dump_optimizer=False):
        self._store.save_optimizer_states(fname, dump_optimizer=dump_optimizer)

    def load_optimizer_states(self, fname):
        self._store.load_optimizer_states(fname)

    @property
    def type(self):
        return self._store.type

    @property
    def rank(self):
        return self._store.rank

    @property
    def num_workers(self):
        return self._store.num_workers

    def __getattr__(self, name):  # set_gradient_compression, _updater, _barrier, ...
        return getattr(self._store, name)


_GROUPS = {}


def _import_horovod():
    try:
        import horovod.mxnet as hvd  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise HorovodUnavailable(f"kvstore 'horovod' needs Horovod built with MXNet support, "
                                 f"which is not importable ({err}): {HOROVOD_INSTALL}") from err
    return hvd


def get_group(kvstore='device'):
    """The :class:`Group` for ``kvstore`` (a name from :data:`KVSTORES`, or a Group).

    The job's kvstore (or Horovod) is set up on the first call and reused afterwards: a
    process takes part in one distributed job.
    """
    if isinstance(kvstore, Group):
        return kvstore
    if kvstore not in KVSTORES:
        raise DistributedError(f'kvstore must be one of {", ".join(KVSTORES)}; '
                               f'got {kvstore!r}')
    if kvstore in ('device', 'local'):
        return Group(kvstore)
    if kvstore in _GROUPS:
        return _GROUPS[kvstore]
    if _GROUPS:
        raise DistributedError(f'this process already joined a {next(iter(_GROUPS))!r} job; '
                               f'it cannot also join a {kvstore!r} one')
    if kvstore == 'horovod':
        hvd = _import_horovod()
        hvd.init()
        group = Group(kvstore, rank=hvd.rank(), num_workers=hvd.size(),
                      local_rank=hvd.local_rank(), hvd=hvd)
    else:
        if os.environ.get('DMLC_ROLE') != 'worker':
            raise DistributedError(
                f"kvstore {kvstore!r} needs a distributed job: start the workers with "
                f"gluonbert-launch (e.g. gluonbert-launch -n 2 -s 1 -- gluonbert-finetune "
                f"--kvstore {kvstore} ...), which sets DMLC_ROLE and the other DMLC_* "
                f"variables")
        store = mx.kv.create(kvstore)
        group = Group(kvstore, rank=store.rank, num_workers=store.num_workers, kvstore=store)
        # registered after MXNet's own exit hook, so it runs first (LIFO), while the engine
        # is still up: a KVStore freed after the engine stopped aborts the process
        atexit.register(_leave, group)
    _GROUPS[kvstore] = group
    return group


class _FreedKVStore(KVStore):
    def __del__(self):
        pass


def _leave(group):
    """Free the job's kvstore at exit (it says goodbye to the scheduler and servers), even
    if trainers still refer to it."""
    store, group.kvstore = group.kvstore, None
    _GROUPS.clear()
    if store is None:
        return
    mx.nd.waitall()
    # a private MXNet call (no public API frees a KVStore now): Python frees a
    # KVStore when its last reference goes, which trainers may still hold; the C API frees
    # it now (tests/test_distributed.py checks that MXNet still has it)
    mx.base.check_call(mx.base._LIB.MXKVStoreFree(store.handle))  # noqa: SLF001  see above
    store.__class__ = _FreedKVStore  # freed: its own __del__ must not free it again
