"""The training engine shared by fine-tuning (:func:`gluonbert.train_loop`) and
pre-training (:func:`gluonbert.pretrain_loop`).

- :mod:`.loop`: :class:`TrainState`, :func:`seed_everything`, the step function
  :class:`Step`, the callbacks (:class:`MetricsWriter`, :class:`Checkpointer`,
  :class:`Plotter`, :class:`EarlyStopping`) and the :class:`Session` around a loop;
- :mod:`.optim`: :class:`AdamW`, :func:`register_optimizers`,
  :class:`LinearWarmupSchedule`, :func:`make_trainer`, gradient clipping and one update;
- :mod:`.checkpoint`: checkpoints as transactions (directory per checkpoint, pointer file,
  fsync, best.params), written in the background;
- :mod:`.resume`: the checks before a resume and the loading; metrics files;
- :mod:`.runconfig`: :class:`TrainConfig` and :class:`PretrainConfig`, the loops' settings
  as documented dataclasses;
- :mod:`.states`: optimizer states and parameter files in MXNet's format, never pickles;
- :mod:`.mxnet_internals`: every private MXNet attribute the engine uses, one function
  each.

Importing the engine registers nothing in MXNet: :func:`register_optimizers` (called by
:func:`make_trainer`) registers ``'adamw'``.
"""
from .checkpoint import CheckpointWriter, commit_checkpoint, load_best_parameters
from .loop import (Callback, Checkpointer, EarlyStopping, FunctionCallback, MetricsWriter,
                   Plotter, Session, Step, TrainState, seed_everything)
from .optim import (AdamW, LinearWarmupSchedule, clip_global_norm, make_trainer,
                    model_kernels, optimizer_step, register_optimizers)
from .resume import data_fingerprint, load_checkpoint, run_record
from .runconfig import PretrainConfig, RunConfig, TrainConfig
from .states import load_trainer_states, save_trainer_states

__all__ = ['TrainConfig', 'PretrainConfig', 'RunConfig', 'AdamW', 'Callback',
           'CheckpointWriter', 'Checkpointer', 'EarlyStopping',
           'FunctionCallback', 'LinearWarmupSchedule', 'MetricsWriter', 'Plotter', 'Session',
           'Step', 'TrainState', 'clip_global_norm', 'commit_checkpoint', 'data_fingerprint',
           'load_best_parameters', 'load_checkpoint', 'load_trainer_states', 'make_trainer',
           'model_kernels', 'optimizer_step', 'register_optimizers', 'run_record',
           'save_trainer_states', 'seed_everything']
