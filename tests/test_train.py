"""train_loop on a tiny model and synthetic, learnable data (no tokenizer needed), and the
training engine's pieces: optimizers, registration, kernels, seeding, MXNet's internals."""
import inspect
import json
import os
import random
import subprocess
import sys

import numpy as np
import mxnet as mx
import pytest
from mxnet import gluon

import gluonbert
from gluonbert.engine import register_optimizers
from gluonbert.train import AdamW, LinearWarmupSchedule, evaluate_accuracy, train_loop
from stand_ins import fast_dtypes, synthetic_sentiment_batches


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
                               'seconds', 'samples_per_second', 'lr', 'kernels'}
        assert record['kernels'] == net.config.kernels  # the model's choice, recorded
    assert history.kernels == net.config.kernels
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
    register_optimizers()
    assert mx.optimizer.Optimizer.opt_registry['adamw'] is AdamW
    assert issubclass(AdamW, mx.optimizer.Optimizer)

    class Constant(gluon.HybridBlock):
        def hybrid_forward(self, F, words, segments, valid_length):
            return F.stack(F.zeros_like(valid_length), F.ones_like(valid_length), axis=1)

    # batches of unequal size: 3/3 right and 1/5 right -> 4/8, not mean(1.0, 0.2)
    data = [(mx.nd.zeros((3, 2)), mx.nd.ones(3), mx.nd.zeros((3, 2)), mx.nd.ones(3)),
            (mx.nd.zeros((5, 2)), mx.nd.ones(5), mx.nd.zeros((5, 2)),
             mx.nd.array([1, 0, 0, 0, 0]))]
    assert evaluate_accuracy(Constant(), data, mx.cpu()) == 0.5


def test_phase_timer_charges_engine_work_to_its_phase():
    import time
    from gluonbert.timing import PhaseTimer
    timer = PhaseTimer()
    with timer('sleep'):
        time.sleep(0.05)
    with timer('compute'):
        # returns at once; the timer waits for the engine before closing the phase
        x = mx.nd.random.uniform(shape=(600, 600))
        for _ in range(20):
            x = mx.nd.dot(x, x) / 600
    assert x.shape == (600, 600)
    with timer('sleep'):
        pass
    assert timer.counts == {'sleep': 2, 'compute': 1}
    assert timer.seconds['sleep'] >= 0.05
    wall = timer.total + 1.0
    assert timer.share_outside(wall, compute=('compute',)) == pytest.approx(
        1 - timer.seconds['compute'] / wall)
    lines = timer.table(wall)
    assert lines[-1].startswith('total') and any('(not in a phase)' in line for line in lines)
    record = timer.to_dict(wall)
    assert record['unaccounted_seconds'] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match='wall time'):
        timer.share_outside(0)


def _trained_trainer():
    from mxnet import autograd
    from gluonbert.train import make_trainer
    net = tiny_classifier()
    trainer = make_trainer(net, lr=1e-3)
    for words, valid_length, segments, label in synthetic(n=32):
        with autograd.record():
            loss = gluon.loss.SoftmaxCELoss()(net(words, segments, valid_length), label).mean()
        loss.backward()
        trainer.step(1)
    return net, trainer


def _states(trainer):
    return {index: [x.asnumpy() for x in state]
            for index, state in trainer._updaters[0].states.items()}


def test_trainer_states_round_trip_and_pickles_are_refused(tmp_path):
    from gluonbert.errors import CheckpointError
    from gluonbert.train import load_trainer_states, make_trainer, save_trainer_states
    _, trainer = _trained_trainer()
    expected = _states(trainer)
    counts = dict(trainer._optimizer._index_update_count)
    assert expected and max(counts.values()) == 2
    save_trainer_states(trainer, str(tmp_path / 'binary'))
    fresh = make_trainer(tiny_classifier(seed=5), lr=1e-3)
    load_trainer_states(fresh, str(tmp_path / 'binary'))
    got = _states(fresh)
    assert set(got) == set(expected)
    for index in expected:
        for want, have in zip(expected[index], got[index]):
            assert np.array_equal(want, have)
    assert dict(fresh._optimizer._index_update_count) == counts
    assert fresh._optimizer.num_update == trainer._optimizer.num_update
    # an older checkpoint's format, gluon's pickle: refused, not unpickled
    pickled = tmp_path / 'pickled'
    trainer.save_states(str(pickled))
    with pytest.raises(CheckpointError) as refused:
        load_trainer_states(make_trainer(tiny_classifier(), lr=1e-3), str(pickled))
    assert str(refused.value) == (
        f'{pickled}: optimizer states in the old pickle format are not loaded (unsafe); '
        f'delete it to restart the optimizer from scratch, or start again without --resume')
    junk = tmp_path / 'junk'
    junk.write_bytes(b'not a state file')
    with pytest.raises(CheckpointError) as refused:
        load_trainer_states(make_trainer(tiny_classifier(), lr=1e-3), str(junk))
    assert str(refused.value) == (f'{junk}: not an MXNet optimizer state file (damaged, or '
                                  f'another kind of file)')


def test_best_params_is_a_link_to_the_last_checkpoint(tmp_path):
    import os
    net = tiny_classifier()
    train_loop(net, synthetic(n=32), synthetic(n=32, seed=1), 1, 1e-3, mx.cpu(),
               progress=False, checkpoint_dir=str(tmp_path))
    assert os.path.samefile(tmp_path / 'best.params', tmp_path / 'epoch-0001' / 'model.params')
    assert (tmp_path / 'last').read_text() == 'epoch-0001\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['.lock', 'best.params', 'epoch-0001',
                                                          'last']
    assert sorted(p.name for p in (tmp_path / 'epoch-0001').iterdir()) == [
        'model.params', 'state.json', 'trainer.states']
    loaded = tiny_classifier(seed=3)
    loaded.load_parameters(str(tmp_path / 'best.params'))
    for name, value in _params(net).items():
        assert np.array_equal(_params(loaded)[name], value)


@pytest.mark.parametrize('kernels', ['fused', 'mxnet'])
@pytest.mark.parametrize('optimizer', ['adamw', 'sgd'])
@pytest.mark.parametrize('max_norm', [1e-3, 1e3])  # clipping active / inactive
def test_gradient_clipping_matches_clip_global_norm(optimizer, max_norm, kernels, monkeypatch):
    from mxnet import autograd
    if kernels == 'fused' and not gluonbert.ops.load():
        pytest.skip(f'fused operators: {gluonbert.ops.status()}')
    from gluonbert.distributed import get_group
    from gluonbert.engine.optim import optimizer_step
    from gluonbert.train import make_trainer
    handed = []  # the factors handed to AdamW explicitly, one per update

    def rescaled(self, scale):
        handed.append(scale)
        return original(self, scale)
    original = AdamW.rescaled
    monkeypatch.setattr(AdamW, 'rescaled', rescaled)
    batch = synthetic(n=16)[0]
    nets = [tiny_classifier(), tiny_classifier()]
    trainers = [make_trainer(net, optimizer=optimizer, lr=1e-2, kernels=kernels)
                for net in nets]
    for step in range(2):  # no clipping on the second: no stale factor may be reused
        clip = max_norm if step == 0 else None
        for net in nets:
            words, valid_length, segments, label = batch
            mx.random.seed(step)  # the same dropout masks for both
            with autograd.record():
                loss = gluon.loss.SoftmaxCELoss()(net(words, segments, valid_length),
                                                  label).mean()
            loss.backward()
        params = [[p for p in net.collect_params().values() if p.grad_req != 'null']
                  for net in nets]
        if clip:
            gluon.utils.clip_global_norm([p.grad() for p in params[0]], clip,
                                         check_isfinite=False)
        trainers[0].set_learning_rate(1e-2)
        trainers[0].update(1)
        handed.clear()
        optimizer_step(trainers[1], params[1], [mx.cpu()], get_group('device'), 1e-2, clip,
                       kernels)
        # adamw takes the factor into its update; sgd gets its gradients scaled
        assert len(handed) == (optimizer == 'adamw' and clip is not None)
        assert getattr(trainers[1].optimizer, '_clip_scale', None) is None  # not left over
    expected, got = _params(nets[0]), _params(nets[1])
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_a_failed_checkpoint_write_is_raised_not_lost(tmp_path, monkeypatch):
    import gluonbert._io
    from gluonbert.errors import UsageError

    def disk_full(name, path):
        if name == 'checkpoint.model.params':
            raise OSError(28, 'No space left on device', path)
    monkeypatch.setattr(gluonbert._io, '_boundary_hook', disk_full)
    with pytest.raises(OSError, match='model.params: no space left on the device'):
        train_loop(tiny_classifier(), synthetic(n=32), None, 2, 1e-3, mx.cpu(),  # its thread's
                   progress=False, checkpoint_dir=str(tmp_path / 'checkpoints'))
    blocker = tmp_path / 'not_a_directory'
    blocker.write_text('a file where the checkpoint directory should be')
    with pytest.raises(UsageError, match='not_a_directory is a file; checkpoint_dir must be'):
        train_loop(tiny_classifier(), synthetic(n=32), None, 2, 1e-3, mx.cpu(),
                   progress=False, checkpoint_dir=str(blocker))


# ------------------------------------------------------------------------------ the engine
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTRY = '''
import gluonbert, mxnet as mx
registry = mx.optimizer.Optimizer.opt_registry
assert 'adamw' not in registry and 'bertadam' not in registry, sorted(registry)
from gluonbert.engine import AdamW, register_optimizers
register_optimizers()
register_optimizers()  # again: nothing changes, no "overriding" warning
assert registry['adamw'] is AdamW and 'bertadam' in registry
print('registered')
'''


def test_importing_gluonbert_registers_no_optimizer():
    done = subprocess.run([sys.executable, '-c', REGISTRY], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == 'registered'
    assert 'overriding' not in done.stderr


def _fused_calls(monkeypatch):
    """Counts of the fused AdamW update and clipping-norm calls."""
    calls = {'update': 0, 'norm': 0}
    update, norm = AdamW._fused_update, mx.nd.gluonbert_multi_sum_sq

    def counted_update(self, *args):
        calls['update'] += 1
        return update(self, *args)

    def counted_norm(*args, **kwargs):
        calls['norm'] += 1
        return norm(*args, **kwargs)
    monkeypatch.setattr(AdamW, '_fused_update', counted_update)
    monkeypatch.setattr(mx.nd, 'gluonbert_multi_sum_sq', counted_norm)
    return calls


def test_optimizer_and_clipping_follow_the_models_kernels(monkeypatch):
    from gluonbert.engine.optim import model_kernels
    from gluonbert.train import make_trainer
    if not gluonbert.ops.load():
        pytest.skip(f'fused operators: {gluonbert.ops.status()}')
    calls = _fused_calls(monkeypatch)
    for kernels in ('fused', 'mxnet'):
        calls.update(update=0, norm=0)
        mx.random.seed(0)
        config = gluonbert.BERTConfig.from_preset('tiny', kernels=kernels)
        net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), num_classes=2)
        net.initialize()
        assert make_trainer(net).optimizer.kernels == kernels
        history = train_loop(net, synthetic(n=32), None, 1, 1e-3, mx.cpu(), progress=False,
                             max_grad_norm=1e-3)
        assert history.kernels == history[0]['kernels'] == kernels
        expected = 2 if kernels == 'fused' else 0  # 2 updates: 32 examples, batches of 16
        assert calls == {'update': expected, 'norm': expected}, kernels
    dense = gluon.nn.Dense(2, in_units=3)  # no config: 'auto'
    assert model_kernels(dense) == gluonbert.ops.resolve_kernels('auto') == 'fused'
    dense.initialize()
    assert make_trainer(dense, kernels='mxnet').optimizer.kernels == 'mxnet'


def test_one_seeding_helper_for_both_loops():
    import gluonbert.pretrain
    import gluonbert.train
    from gluonbert.engine import seed_everything

    def draws():
        return (mx.nd.random.uniform(shape=(3,)).asnumpy().tolist(), np.random.rand(),
                random.random())
    assert seed_everything(None, 3) is None
    value = seed_everything(7, 3, rank=1)
    first = draws()
    assert seed_everything(7, 3, rank=1) == value and draws() == first
    assert len({value, seed_everything(7, 3), seed_everything(7, 4, rank=1),
                seed_everything(8, 3, rank=1)}) == 4
    for module in (gluonbert.train, gluonbert.pretrain):  # no seeding of their own
        source = inspect.getsource(module)
        assert 'seed_everything(' in source and 'random.seed(' not in source, module


def test_train_state_round_trips_through_json():
    from gluonbert.engine import TrainState
    state = TrainState(epoch=3, step=12, batches=24, history=[{'epoch': 2, 'lr': 0.1}],
                       best_score=0.75, stale=1, best={'epoch': 1, 'bytes': 9, 'sha256': 'ab'},
                       extra={'window': [1.5] * 7})
    saved = json.loads(json.dumps(dict(state.to_json(), best=state.best)))
    assert saved['epoch'] == 2 and saved['best_accuracy'] == 0.75  # the first layout's names
    assert TrainState.from_json(saved) == state
    fresh = json.loads(json.dumps(TrainState().to_json()))
    assert TrainState.from_json(fresh) == TrainState()


def test_mxnet_internals_the_engine_relies_on():
    """Every private MXNet attribute the engine uses, through its one function: a newer
    MXNet that renames one fails here."""
    from mxnet import autograd
    from gluonbert.engine import mxnet_internals as internals
    from gluonbert.engine.loop import place_parameters
    from gluonbert.engine.optim import trainable
    from gluonbert.train import make_trainer
    net = tiny_classifier()
    net.hybridize()
    trainer = make_trainer(net, lr=1e-3)
    params = trainable(net)
    updaters = internals.trainer_updaters(trainer)  # started before any update
    assert len(updaters) == 1 and isinstance(updaters[0], mx.optimizer.Updater)
    assert updaters[0].optimizer is trainer.optimizer
    assert internals.trainer_parameters(trainer) == params
    assert internals.trainer_kvstore(trainer) is None  # one device: MXNet makes none
    words, valid_length, segments, label = synthetic(n=16)[0]
    with autograd.record():
        loss = gluon.loss.SoftmaxCELoss()(net(words, segments, valid_length), label).mean()
    loss.backward()
    trainer.step(1)
    optimizer = trainer.optimizer
    counts = internals.update_counts(optimizer)
    assert set(counts) == set(range(len(params))) and set(counts.values()) == {1}
    assert internals.update_count(optimizer, 0) == 1
    internals.restore_update_counts(optimizer, 5, 2, {0: 7})
    assert (optimizer.num_update, optimizer.begin_num_update) == (5, 2)
    assert internals.update_counts(optimizer) == {0: 7}
    internals.continue_update_count(trainer, 12)
    assert optimizer.num_update == optimizer.begin_num_update == 12
    assert not internals.uses_amp_loss_scaling(trainer)
    from mxnet.contrib.amp import amp as amp_impl  # where MXNet sets and reads the scaler
    assert '_amp_loss_scaler' in inspect.getsource(amp_impl.init_trainer)
    assert '_amp_loss_scaler' in inspect.getsource(gluon.Trainer._update)
    named = internals.structural_parameters(net)
    assert 'classifier.1.weight' in named and set(named) == set(_params(net))
    weight = named['classifier.1.weight']
    copy = internals.reduced_data(weight)
    assert copy.context == mx.cpu() and np.array_equal(copy.asnumpy(), weight.data().asnumpy())
    internals.load_parameter(weight, mx.nd.zeros(weight.shape), [mx.cpu()])
    assert weight.data().abs().sum().asscalar() == 0
    assert weight._trainer is trainer
    internals.detach_from_trainer(weight)
    assert weight._trainer is None
    assert net._cached_op is not None  # traced by the forward pass above
    internals.clear_cached_graph(net)
    assert net._cached_op is None
    # two contexts: MXNet reduces through a kvstore the trainer holds
    two = tiny_classifier()
    place_parameters(two, [mx.cpu(0), mx.cpu(1)])
    assert isinstance(internals.trainer_kvstore(make_trainer(two)), mx.kvstore.KVStoreBase)
    # the Optimizer hooks AdamW overrides or calls, and the C call distributed._leave makes
    for hook in ('_update_count', '_get_lrs', '_get_wds'):
        assert callable(getattr(mx.optimizer.Optimizer, hook)), hook
    assert hasattr(mx.base._LIB, 'MXKVStoreFree')


# Run in an interpreter of its own: bfloat16 AMP changes MXNet process-wide.
REPORTED_ACCURACY = '''
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np, mxnet as mx
import gluonbert
from gluonbert.train import train_loop
from test_train import synthetic
dtype = {dtype!r}
seen = []  # (logits dtype, predicted labels, labels) of every training batch
base_loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()
def recording_loss(logits, label):
    as_float32 = mx.nd.amp_cast(logits, dtype='float32')  # identity for float32 logits
    seen.append((str(np.dtype(logits.dtype)), as_float32.asnumpy().argmax(1),
                 label.asnumpy()))
    return base_loss(logits, label)
mx.random.seed(0)
config = gluonbert.BERTConfig.from_preset('tiny', dropout=0.0, attention_dropout=0.0)
net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), dropout=0.0)
net.initialize()
history = train_loop(net, synthetic(n=64, shuffle=False), None, 2, 3e-3, mx.cpu(),
                     loss_fn=recording_loss, dtype=dtype, progress=False)
per_epoch = len(seen) // 2
recomputed = [float(np.mean(np.concatenate([p == l for _, p, l in seen[e * per_epoch:
                                                                       (e + 1) * per_epoch]])))
              for e in range(2)]
print(json.dumps({{'reported': [r['train_accuracy'] for r in history],
                  'recomputed': recomputed, 'logit_dtypes': sorted({{d for d, _, _ in seen}})}}))
'''


@pytest.mark.parametrize('dtype', fast_dtypes('float32', 'bfloat16'))
def test_reported_training_accuracy_is_the_accuracy_of_the_predictions(dtype):
    """The train accuracy of every epoch equals the one recomputed from the logits each batch
    produced; under bfloat16 AMP the logits really are bfloat16 (AMP is in effect)."""
    code = REPORTED_ACCURACY.format(tests=os.path.dirname(os.path.abspath(__file__)),
                                    dtype=dtype)
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result['reported'] == pytest.approx(result['recomputed'], abs=1e-12)
    bfloat16 = "[('bfloat16', '<u2')]"  # how numpy names MXNet's bfloat16
    assert result['logit_dtypes'] == (['float32'] if dtype == 'float32' else [bfloat16])


def test_correct_count_with_bfloat16_logits_under_amp():
    """The training accuracy counts hits right for bfloat16 logits with AMP on. The logits
    are cast with amp_cast and AMP is turned on without a bfloat16 matrix product, so this
    runs on every CPU (MXNet 1.9.1 turned label 1 into garbage here: only label 0 counted)."""
    code = '''
import json
import numpy as np, mxnet as mx
from mxnet.contrib import amp
from mxnet.contrib.amp.amp import bfloat16
import gluonbert
from gluonbert.train import correct_count
amp.init(target_dtype='bfloat16')
rng = np.random.RandomState(0)
# distinct values that bfloat16 holds exactly: the argmax cannot change in the cast
logits = np.array([rng.permutation(3) * 0.5 - 0.25 for _ in range(64)], dtype='float32')
labels = rng.randint(0, 3, 64)
bf16 = mx.nd.amp_cast(mx.nd.array(logits), dtype=bfloat16)
count = correct_count(bf16, mx.nd.array(labels)).asscalar()
print(json.dumps([float(count), int((logits.argmax(1) == labels).sum())]))
'''
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    counted, expected = json.loads(done.stdout.strip().splitlines()[-1])
    assert expected > 0 and counted == expected
