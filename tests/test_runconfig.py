"""The training loops' settings as typed dataclasses: checked where they are defined, the
one list a resume compares, and the commands' flags mapped onto them."""
import argparse
import dataclasses
import inspect
import math
import re

import pytest

import gluonbert
from gluonbert.cli import finetune_main, pretrain_main
from gluonbert.engine import PretrainConfig, RunConfig, TrainConfig
from gluonbert.errors import UsageError


def test_every_field_is_documented_and_says_how_a_resume_treats_it():
    for cls in (TrainConfig, PretrainConfig):
        for field in dataclasses.fields(cls):
            assert len(field.metadata['doc']) > 10, field.name
            assert field.metadata['compare'] in (True, False)
    assert [name for name, _, _ in TrainConfig.describe()][:2] == ['lr', 'optimizer']


def test_the_settings_a_resume_compares():
    assert set(TrainConfig().compared()) == {'lr', 'optimizer', 'weight_decay', 'warmup_ratio',
                                             'max_grad_norm', 'accumulate', 'seed', 'dtype'}
    # epochs and early stopping may change on resume; where files go does not matter
    assert set(PretrainConfig().compared()) == (set(RunConfig().compared()) | {'batch_size'})


@pytest.mark.parametrize('cls, change, message', [
    (TrainConfig, {'lr': math.inf}, 'lr must be a finite number, got inf'),
    (TrainConfig, {'lr': 0}, r'lr must be in \(0, inf\), got 0'),
    (TrainConfig, {'weight_decay': math.nan}, 'weight_decay must be a finite number'),
    (TrainConfig, {'warmup_ratio': 1.0}, r'warmup_ratio must be in \[0, 1\), got 1.0'),
    (TrainConfig, {'max_grad_norm': -1.0}, r'max_grad_norm must be in \[0, inf\)'),
    (TrainConfig, {'accumulate': 0}, 'accumulate must be an integer >= 1, got 0'),
    (TrainConfig, {'accumulate': 2.5}, 'accumulate must be an integer >= 1, got 2.5'),
    (TrainConfig, {'early_stop': -1}, 'early_stop must be an integer >= 0, got -1'),
    (TrainConfig, {'seed': True}, 'seed must be an integer >= 0, got True'),
    (TrainConfig, {'optimizer': 'lamb'}, 'optimizer must be one of'),
    (TrainConfig, {'kvstore': 'nccl'}, 'kvstore must be one of'),
    (TrainConfig, {'dtype': 'int8'}, 'dtype must be one of float32, float16, bfloat16'),
    (TrainConfig, {'num_epoch': 0}, 'num_epoch must be an integer >= 1'),
    (TrainConfig, {'resume': True}, 'resume=True needs a checkpoint_dir'),
    (PretrainConfig, {'steps': 0}, 'steps must be an integer >= 1'),
    (PretrainConfig, {'checkpoint_every': 0}, 'checkpoint_every must be an integer >= 1'),
])
def test_bad_settings_are_one_line_before_anything_is_built(cls, change, message):
    with pytest.raises(UsageError, match=message):
        cls(**change)


def test_normalised_values_and_replace():
    assert TrainConfig(max_grad_norm=0).max_grad_norm is None  # 0: no clipping, as None
    assert PretrainConfig(log_interval=7).checkpoint_every == 7
    config = TrainConfig().replace(lr=1e-3)
    assert config.lr == 1e-3 and config.optimizer == 'adamw'
    with pytest.raises(TypeError, match='no setting learning_rate; its settings are: '):
        TrainConfig().replace(learning_rate=1e-3)


def test_flags_map_onto_fields_and_errors_name_the_flag():
    args = argparse.Namespace(epochs=2, lr=None, warmup_ratio=0.2, weight_decay=0.0,
                              optimizer='bertadam', accumulate=3, dtype='float32', seed=5,
                              kvstore='device', resume=False, early_stop=None, unrelated=1)
    config = TrainConfig.from_flags(args, lr=3e-4)
    assert (config.num_epoch, config.lr, config.warmup_ratio, config.optimizer,
            config.accumulate, config.seed) == (2, 3e-4, 0.2, 'bertadam', 3, 5)
    with pytest.raises(UsageError, match=r'^--warmup-ratio must be in \[0, 1\), got 1.5$'):
        TrainConfig.from_flags(argparse.Namespace(**{**vars(args), 'warmup_ratio': 1.5}))


def test_train_loop_takes_a_config_and_keeps_the_tutorials_call():
    parameters = inspect.signature(gluonbert.train_loop).parameters
    assert list(parameters)[:7] == ['net', 'train_data', 'test_data', 'num_epoch', 'lr', 'ctx',
                                    'loss_fn']
    assert len(parameters) == 12  # the tutorial's 7, config, 3 objects, **settings
    with pytest.raises(TypeError, match='TrainConfig has no setting epochs'):
        gluonbert.train_loop(None, [1], None, epochs=3)


@pytest.mark.parametrize('main, flags, message', [
    (finetune_main, ['--lr', 'inf'], '--lr must be a finite number, got inf'),
    (finetune_main, ['--weight-decay', 'nan'], '--weight-decay must be a finite number'),
    (finetune_main, ['--early-stop', '-1'], '--early-stop must be an integer >= 0, got -1'),
    (finetune_main, ['--warmup-ratio', '1'], r'--warmup-ratio must be in \[0, 1\)'),
    (pretrain_main, ['--lr', 'inf'], '--lr must be a finite number, got inf'),
    (pretrain_main, ['--warmup-ratio', '-0.5'], r'--warmup-ratio must be in \[0, 1\)'),
])
def test_commands_refuse_bad_settings_in_one_line(main, flags, message, tmp_path, capsys):
    data = ['--data', str(tmp_path / 'shards')] if main is pretrain_main else []
    assert main(['--model', 'tiny', '--output-dir', str(tmp_path / 'run'), *data, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / 'run').exists()  # refused before anything was written
