"""The settings of a training run as typed, documented dataclasses (as litgpt's
``TrainArgs``): :class:`TrainConfig` for :func:`gluonbert.train_loop`, :class:`PretrainConfig`
for :func:`gluonbert.pretrain_loop`.

Each field carries its documentation and how a resume treats it (``metadata``):

- ``compare``: a setting that changes the results; a checkpoint records it and a resume
  with another value is refused (:meth:`RunConfig.compared` lists them, the one place the
  resume check reads);
- ``flag``: the command-line flag (its ``argparse`` destination) that sets it, so that
  :meth:`RunConfig.from_flags` maps a command's parsed arguments onto the fields. A new
  knob is one field here and one flag in its command.

Values are checked when a config is made (finite numbers, ranges, known names): a bad
setting is a one-line :class:`~gluonbert.errors.UsageError` before anything is built, never
an error from deep inside MXNet.
"""
import dataclasses
import math

from ..amp import DTYPES
from ..distributed import KVSTORES
from ..errors import UsageError
from .optim import OPTIMIZERS

__all__ = ['RunConfig', 'TrainConfig', 'PretrainConfig']


def setting(default, doc, *, compare=False, flag=None):
    """A field of a run config: its default, its documentation, whether a resume compares
    it, and the flag that sets it."""
    return dataclasses.field(default=default,
                             metadata={'doc': doc, 'compare': compare, 'flag': flag})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What both training loops take: the optimizer and its schedule, seeding, where the
    run's files go, and how it is distributed. The field list with each field's
    documentation is :meth:`describe`."""
    lr: float = setting(5e-5, 'peak learning rate (linear warm-up, then linear decay to 0)',
                        compare=True, flag='lr')
    optimizer: str = setting('adamw', "'adamw' (decoupled weight decay, bias correction), "
                             "'bertadam' (GluonNLP's, no bias correction), 'adam', 'sgd'; "
                             "LayerNorm parameters and biases get no weight decay",
                             compare=True, flag='optimizer')
    weight_decay: float = setting(0.01, 'decoupled weight decay', compare=True,
                                  flag='weight_decay')
    warmup_ratio: float = setting(0.1, 'share of the updates spent warming up, in [0, 1)',
                                  compare=True, flag='warmup_ratio')
    max_grad_norm: float = setting(1.0, 'clip gradients to this global norm (None or 0: '
                                   'no clipping)', compare=True)
    accumulate: int = setting(1, 'batches whose gradients are summed per update',
                              compare=True, flag='accumulate')
    seed: int = setting(0, 'seeds MXNet, numpy and Python per epoch or step, so a resumed '
                        'run replays the same randomness (None: not seeded)', compare=True,
                        flag='seed')
    kvstore: str = setting('device', "'device'/'local': one process; 'dist_sync', "
                           "'dist_device_sync', 'dist_async', 'horovod': several (see "
                           "gluonbert.distributed)", flag='kvstore')
    checkpoint_dir: str = setting(None, 'where transactional checkpoints go (locked while '
                                  'the run lasts); None: no checkpoints')
    resume: bool = setting(False, "continue from checkpoint_dir's last checkpoint, bit for "
                           "bit; the compared settings must be the same", flag='resume')
    overwrite: bool = setting(False, "start over in a checkpoint_dir that holds another "
                              "run's checkpoints, removing them (without it, and without "
                              "resume, such a directory is refused)", flag='overwrite')
    early_stop: int = setting(None, 'stop after this many records without a better score',
                              flag='early_stop')
    metrics_path: str = setting(None, 'one JSON line per record')
    plot_path: str = setting(None, 'PNG of the curves, redrawn at most once a minute')
    progress: bool = setting(True, 'a progress bar and a line per record')

    def __post_init__(self):
        self._check_number('lr', low=0, low_open=True)
        self._check_number('weight_decay', low=0)
        self._check_number('warmup_ratio', low=0, high=1)
        if self.max_grad_norm is not None:
            self._check_number('max_grad_norm', low=0)
            if self.max_grad_norm == 0:  # 0 means no clipping, as None
                object.__setattr__(self, 'max_grad_norm', None)
        self._check_integer('accumulate', 1)
        if self.seed is not None:
            self._check_integer('seed', 0)
        if self.early_stop is not None:
            self._check_integer('early_stop', 0)
        self._check_choice('optimizer', OPTIMIZERS)
        self._check_choice('kvstore', KVSTORES)
        if self.resume and not self.checkpoint_dir:
            raise UsageError('resume=True needs a checkpoint_dir')
        if self.resume and self.overwrite:
            raise UsageError('resume=True continues the run in checkpoint_dir, overwrite=True '
                             'replaces it: give one of them')

    def _check_number(self, name, low, high=None, low_open=False):
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise UsageError(f'{name} must be a finite number, got {value!r}')
        if value < low or (low_open and value == low) or (high is not None and value >= high):
            interval = (f'{"(" if low_open else "["}{low:g}, '
                        f'{"inf)" if high is None else f"{high:g})"}')
            raise UsageError(f'{name} must be in {interval}, got {value!r}')

    def _check_integer(self, name, minimum):
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UsageError(f'{name} must be an integer >= {minimum}, got {value!r}')

    def _check_choice(self, name, choices):
        if getattr(self, name) not in choices:
            raise UsageError(f'{name} must be one of {", ".join(choices)}, '
                             f'got {getattr(self, name)!r}')

    def compared(self):
        """{name: value} of the settings that change the results, which a checkpoint
        records and a resume compares."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata['compare']}

    def replace(self, **changes):
        """A copy with ``changes`` (field names; an unknown one is a TypeError naming the
        fields), checked again."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f'{type(self).__name__} has no setting {", ".join(unknown)}; its '
                            f'settings are: {", ".join(sorted(known))}')
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_flags(cls, args, **given):
        """A config from a command's parsed ``args`` (each field's ``flag`` that ``args``
        has) and ``given`` values (computed by the command, e.g. a default lr)."""
        flags = {f.name: f.metadata['flag'] for f in dataclasses.fields(cls)
                 if f.metadata['flag'] and hasattr(args, f.metadata['flag'])}
        values = {name: getattr(args, flag) for name, flag in flags.items()}
        values.update(given)
        try:
            return cls(**{k: v for k, v in values.items() if v is not None or k in given})
        except UsageError as err:  # named as the user wrote it: --warmup-ratio, not the field
            name, _, rest = str(err).partition(' ')
            if name in flags and name not in given:
                raise UsageError(f'--{flags[name].replace("_", "-")} {rest}') from None
            raise

    @classmethod
    def describe(cls):
        """``[(name, default, doc)]`` of every field, for documentation and help texts."""
        return [(f.name, f.default, f.metadata['doc']) for f in dataclasses.fields(cls)]


@dataclasses.dataclass(frozen=True)
class TrainConfig(RunConfig):
    """The settings of :func:`gluonbert.train_loop` (fine-tuning), besides the model, the
    data, the contexts, the loss and the callbacks. Epochs and ``early_stop`` may change on
    resume: more epochs extend a run, its schedule stretched from the current step."""
    num_epoch: int = setting(3, 'epochs to train', flag='epochs')
    dtype: str = setting('float32', "'float32'; 'bfloat16': AMP on CPU (native bf16 "
                         "needed); 'float16': AMP on GPU", compare=True, flag='dtype')

    def __post_init__(self):
        super().__post_init__()
        self._check_integer('num_epoch', 1)
        self._check_choice('dtype', DTYPES)


@dataclasses.dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """The settings of :func:`gluonbert.pretrain_loop` (MLM + NSP), besides the model, the
    data and the context. The score of a record is minus its loss."""
    lr: float = setting(1e-4, 'peak learning rate (linear warm-up, then linear decay to 0)',
                        compare=True, flag='lr')
    steps: int = setting(1000, 'optimizer updates to run', flag='steps')
    batch_size: int = setting(32, 'examples per batch and worker', compare=True,
                              flag='batch_size')
    log_interval: int = setting(50, 'updates between records (losses, held-out scores)',
                                flag='log_interval')
    checkpoint_every: int = setting(None, 'updates between checkpoints (default: '
                                    'log_interval)', flag='checkpoint_every')

    def __post_init__(self):
        super().__post_init__()
        self._check_integer('steps', 1)
        self._check_integer('batch_size', 1)
        self._check_integer('log_interval', 1)
        if self.checkpoint_every is None:
            object.__setattr__(self, 'checkpoint_every', self.log_interval)
        self._check_integer('checkpoint_every', 1)
