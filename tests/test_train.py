"""train_loop on a tiny model and synthetic, learnable data (no tokenizer needed)."""
import json

import numpy as np
import mxnet as mx
import pytest
from mxnet import gluon

import gluonbert
from gluonbert.train import AdamW, LinearWarmupSchedule, evaluate_accuracy, train_loop
from stand_ins import synthetic_sentiment_batches


class _Loader(list):
    """A list of batches with a seedable order, like make_dataloader's loader."""

    def __init__(self, batches, shuffle):
        super().__init__(batches)
        self._batches, self._shuffle = list(batches), shuffle
        self.batch_sampler = self

    def set_epoch(self, epoch):
        order = list(range(len(self._batches)))
        if self._shuffle:
            np.random.RandomState(epoch).shuffle(order)
        self[:] = [self._batches[i] for i in order]


def synthetic(n=96, batch_size=16, seq_len=12, seed=0, shuffle=True):
    return _Loader(synthetic_sentiment_batches(n, batch_size, seq_len, seed), shuffle)


def tiny_classifier(seed=0):
    mx.random.seed(seed)
    config = gluonbert.BERTConfig.from_preset('tiny', dropout=0.1)
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), num_classes=2, dropout=0.1)
    net.initialize()
    return net


def _params(net):
    return {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}


def test_loss_falls_and_history_has_every_field(tmp_path):
    net = tiny_classifier()
    history = train_loop(net, synthetic(n=192), synthetic(seed=1, shuffle=False), 8, 3e-3, mx.cpu(),
                         gluon.loss.SoftmaxCELoss(), progress=False,
                         metrics_path=str(tmp_path / 'metrics.jsonl'),
                         plot_path=str(tmp_path / 'history.png'))
    assert len(history) == 8
    for record in history:
        assert set(record) == {'epoch', 'train_loss', 'train_accuracy', 'test_accuracy',
                               'seconds', 'samples_per_second', 'lr'}
    assert history[-1]['train_loss'] < 0.75 * history[0]['train_loss']
    assert history[-1]['test_accuracy'] >= 0.75
    lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(line)['epoch'] for line in lines] == list(range(8))
    assert (tmp_path / 'history.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_seed_notebook_positional_call():
    net = tiny_classifier()
    history = train_loop(net, synthetic(n=32), synthetic(n=32, seed=1), 1, 5e-5, mx.cpu(),
                         gluon.loss.SoftmaxCELoss())
    assert len(history) == 1


def test_resume_matches_uninterrupted_run(tmp_path):
    kwargs = dict(num_epoch=3, lr=2e-3, ctx=mx.cpu(), progress=False, seed=7)
    reference = tiny_classifier()
    train_loop(reference, synthetic(), synthetic(seed=1), **kwargs)

    class Crash(Exception):
        pass

    def crash_after_first(record):
        if record['epoch'] == 0:
            raise Crash()

    interrupted = tiny_classifier()
    with pytest.raises(Crash):
        train_loop(interrupted, synthetic(), synthetic(seed=1), checkpoint_dir=str(tmp_path),
                   on_epoch_end=crash_after_first, **kwargs)
    resumed = tiny_classifier(seed=99)  # different init: everything must come from disk
    history = train_loop(resumed, synthetic(), synthetic(seed=1), checkpoint_dir=str(tmp_path),
                         resume=True, **kwargs)
    assert [r['epoch'] for r in history] == [0, 1, 2]
    expected, got = _params(reference), _params(resumed)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6, err_msg=name)


def test_early_stopping_fires():
    net = tiny_classifier()
    # lr so small that test accuracy cannot improve after the first epoch
    history = train_loop(net, synthetic(n=32), synthetic(n=32, seed=1), 10, 1e-9, mx.cpu(),
                         progress=False, early_stop=2)
    assert len(history) == 3


def test_multi_context_equals_single_context_without_dropout():
    def net():
        mx.random.seed(0)
        config = gluonbert.BERTConfig.from_preset('tiny', dropout=0.0, attention_dropout=0.0)
        model = gluonbert.BERTClassifier(gluonbert.BERTModel(config), dropout=0.0)
        model.initialize()
        return model
    data = synthetic(n=32, batch_size=16, shuffle=False)
    single, multi, local = net(), net(), net()
    train_loop(single, data, None, 2, 1e-3, mx.cpu(), progress=False, seed=3)
    train_loop(multi, data, None, 2, 1e-3, [mx.cpu(0), mx.cpu(1)], progress=False, seed=3)
    # the same through a 'local' kvstore (what --kvstore local does with several --gpus)
    train_loop(local, data, None, 2, 1e-3, [mx.cpu(0), mx.cpu(1)], progress=False, seed=3,
               kvstore='local')
    a, b, d = _params(single), _params(multi), _params(local)
    initial = _params(net())
    assert max(np.abs(a[name] - initial[name]).max() for name in a) > 1e-4  # it trained
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(a[name], d[name], atol=1e-5, err_msg=name)
    accumulated = net()
    halves = _Loader([tuple(x[i:i + 8] for x in batch) for batch in data for i in (0, 8)],
                     shuffle=False)
    train_loop(accumulated, halves, None, 2, 1e-3, mx.cpu(), progress=False, seed=3,
               accumulate=2)
    c = _params(accumulated)
    for name in a:
        np.testing.assert_allclose(a[name], c[name], atol=2e-5, err_msg=name)


def test_bad_arguments():
    net = tiny_classifier()
    data = synthetic(n=16)
    with pytest.raises(ValueError, match='dtype'):
        train_loop(net, data, None, 1, 1e-3, mx.cpu(), dtype='float64')
    with pytest.raises(ValueError, match='float16 .*needs GPU'):
        train_loop(net, data, None, 1, 1e-3, mx.cpu(), dtype='float16')
    with pytest.raises(ValueError, match='num_epoch'):
        train_loop(net, data, None, 0, 1e-3, mx.cpu())
    with pytest.raises(ValueError, match='resume=True needs a checkpoint_dir'):
        train_loop(net, data, None, 1, 1e-3, mx.cpu(), resume=True)
    with pytest.raises(TypeError, match='ctx'):
        train_loop(net, data, None, 1, 1e-3, 'cpu')


def test_no_weight_decay_on_layernorm_and_bias():
    from gluonbert.train import make_trainer
    net = tiny_classifier()
    make_trainer(net)
    for name, param in net.collect_params().items():
        expected = 0.0 if name.endswith(('gamma', 'beta', 'bias')) else 1.0
        assert param.wd_mult == expected, name


def test_schedule_and_exact_accuracy():
    schedule = LinearWarmupSchedule(1.0, total_steps=10, warmup_ratio=0.2)
    assert [round(schedule(s), 3) for s in (1, 2, 3, 10, 11)] == [0.5, 1.0, 1.0, 0.125, 0.0]
    assert LinearWarmupSchedule(1.0, total_steps=1, warmup_ratio=0.1)(1) == 1.0
    assert 'adamw' in mx.optimizer.Optimizer.opt_registry
    assert issubclass(AdamW, mx.optimizer.Optimizer)

    class Constant(gluon.HybridBlock):
        def hybrid_forward(self, F, words, segments, valid_length):
            return F.stack(F.zeros_like(valid_length), F.ones_like(valid_length), axis=1)

    # batches of unequal size: 3/3 right and 1/5 right -> 4/8, not mean(1.0, 0.2)
    data = [(mx.nd.zeros((3, 2)), mx.nd.ones(3), mx.nd.zeros((3, 2)), mx.nd.ones(3)),
            (mx.nd.zeros((5, 2)), mx.nd.ones(5), mx.nd.zeros((5, 2)),
             mx.nd.array([1, 0, 0, 0, 0]))]
    assert evaluate_accuracy(Constant(), data, mx.cpu()) == 0.5
