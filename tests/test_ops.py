"""gluonbert's fused CPU operators (gluonbert.ops): parity with MXNet's operators, gradient
accumulation, the AdamW update rule, graphs for export, and the fallback without them."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gluonbert
import mxnet as mx
from mxnet import autograd, gluon

from gluonbert import ops
from gluonbert import kernels as kernel_registry
from gluonbert.train import AdamW
from stand_ins import needs_native_bf16

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Skipped only when turned off on purpose: a library that fails to build must fail here
# (the fallback tests below run in subprocesses of their own either way).
pytestmark = pytest.mark.skipif(os.environ.get('GLUONBERT_FUSED_OPS') == '0',
                                reason='GLUONBERT_FUSED_OPS=0')


def test_the_library_is_built_and_loaded():
    assert ops.load(), ops.status()


def _layer_norm_and_grads(op, x, gamma, beta, dy, eps):
    for array in (x, gamma, beta):
        array.attach_grad()
    with autograd.record():
        y = op(x, gamma, beta, eps=eps)
    y.backward(dy)
    return [a.asnumpy() for a in (y, x.grad, gamma.grad, beta.grad)]


@pytest.mark.parametrize('shape,eps', [((2, 5, 32), 1e-12), ((3, 37), 1e-5), ((4, 7, 384), 1e-12)])
def test_layer_norm_matches_mxnet(shape, eps):
    rng = np.random.RandomState(0)
    x = rng.randn(*shape).astype('f') * 3 + 1
    gamma, beta = rng.rand(shape[-1]).astype('f') + 0.5, rng.randn(shape[-1]).astype('f')
    dy = rng.randn(*shape).astype('f')

    def run(op):
        return _layer_norm_and_grads(op, *[mx.nd.array(a) for a in (x, gamma, beta, dy)], eps)

    fused = run(mx.nd.gluonbert_layer_norm)
    reference = run(lambda *a, eps: mx.nd.LayerNorm(*a, axis=-1, eps=eps))
    for name, got, want in zip(('out', 'd_data', 'd_gamma', 'd_beta'), fused, reference):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
    # and against float64 numpy
    mean = x.astype('d').mean(-1, keepdims=True)
    xhat = (x - mean) / np.sqrt(x.astype('d').var(-1, keepdims=True) + eps)
    np.testing.assert_allclose(fused[0], xhat * gamma + beta, rtol=1e-5, atol=1e-5)


def test_layer_norm_block_uses_the_fused_operator_unless_told_not_to():
    norm = gluonbert.LayerNorm(units=8, epsilon=1e-5)
    assert norm.kernels == 'fused'  # 'auto' with the library loaded
    norm.initialize()
    x = mx.sym.var('x')
    assert 'gluonbert_layer_norm' in norm(x).tojson()
    with kernel_registry.building(layer_norm_kernels='mxnet'):
        built_mxnet = gluonbert.LayerNorm(units=8)
    built_mxnet.initialize()
    graph = built_mxnet(x).tojson()
    assert 'gluonbert_layer_norm' not in graph and '"LayerNorm"' in graph
    assert gluonbert.LayerNorm(units=8).kernels == 'fused'  # the choice ends with the block
    # float16 parameters (GPU models) use MXNet's operator
    norm.cast('float16')
    assert 'gluonbert_layer_norm' not in norm(x).tojson()


@pytest.mark.parametrize('hybridize', [False, True])
def test_layer_norm_block_accumulates_gradients(hybridize):
    """grad_req='add' (gradient accumulation) sums over backward passes, as with MXNet's op."""
    x = mx.nd.random.normal(shape=(4, 6, 8))
    dys = [mx.nd.random.normal(shape=x.shape) for _ in range(2)]
    grads = {}
    for fused in (True, False):
        mx.random.seed(0)
        with kernel_registry.building(layer_norm_kernels='fused' if fused else 'mxnet'):
            norm = gluonbert.LayerNorm(units=8, epsilon=1e-5)
        norm.initialize(mx.init.Uniform(1.0))
        norm.collect_params().setattr('grad_req', 'add')
        if hybridize:
            norm.hybridize()
        inputs = x.copy()
        inputs.attach_grad(grad_req='add')
        for dy in dys:
            with autograd.record():
                y = norm(inputs)
            y.backward(dy)
        grads[fused] = [inputs.grad.asnumpy(), norm.gamma.grad().asnumpy(),
                        norm.beta.grad().asnumpy()]
    for got, want in zip(grads[True], grads[False]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[True][2], sum(dy.asnumpy() for dy in dys).sum((0, 1)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('scale', [0.5, 0.0, float('nan')])
def test_adamw_operator_matches_mxnet(scale):
    rng = np.random.RandomState(1)
    shapes = [(300, 7), (5,), (64, 33)]
    arrays = [[rng.randn(*shape).astype('f') for _ in range(3)] + [rng.rand(*shape).astype('f')]
              for shape in shapes]  # weight, grad, mean, var of each
    options = dict(beta1=0.9, beta2=0.999, epsilon=1e-6)
    wds = [0.01, 0.0, 0.1]
    results = []
    for fused in (True, False):
        state = [[mx.nd.array(a) for a in group] for group in arrays]
        weights, grads, means, variances = (list(x) for x in zip(*state))
        rescale = mx.nd.array([scale])
        for step in range(3):
            etas = [1e-3 * (step + 1), 2e-3, 5e-4]
            if fused:
                mx.nd.gluonbert_multi_adamw_update(
                    *weights, *grads, *means, *variances, rescale, out=weights,
                    num_arrays=3, etas=','.join(map(repr, etas)), wds=','.join(map(repr, wds)),
                    **options)
            else:  # MXNet's op rescales grad in place: give it a fresh copy each time
                for w, g, m, v, eta, wd in zip(weights, grads, means, variances, etas, wds):
                    mx.nd.contrib.adamw_update(w, g.copy(), m, v, rescale_grad=rescale, out=w,
                                               lr=1, eta=eta, wd=wd, **options)
        results.append([[a.asnumpy() for a in group] for group in state])
    for k, group in enumerate(arrays):
        for name, got, want in zip('wmv', results[0][k][:3], results[1][k][:3]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f'{name}{k}')
        np.testing.assert_array_equal(results[0][k][1], group[1])  # gradients left alone
        if not scale or np.isnan(scale):  # skipped, as MXNet skips it
            np.testing.assert_array_equal(results[0][k][0], group[0])


def test_sum_of_squares_operator():
    rng = np.random.RandomState(2)
    arrays = [rng.randn(*shape).astype('f') for shape in [(1000, 31), (7,), (3, 5, 11)]]
    got = mx.nd.gluonbert_multi_sum_sq(*[mx.nd.array(a) for a in arrays], num_arrays=3)
    want = sum((a.astype('d') ** 2).sum() for a in arrays)
    assert got.shape == (1,) and abs(got.asscalar() - want) <= 1e-6 * want


def test_adamw_optimizer_fused_equals_mxnet_path(monkeypatch):
    """Training with the fused update gives MXNet's update (clipping and bias correction on)."""
    from tests.stand_ins import synthetic_sentiment_batches
    from gluonbert.train import train_loop

    def trained(fused):
        if not fused:
            monkeypatch.setattr(AdamW, '_fused', lambda self, weight, grad: False)
        mx.random.seed(0)
        config = gluonbert.BERTConfig.from_preset('tiny', dropout=0.0, attention_dropout=0.0)
        net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), dropout=0.0)
        net.initialize(mx.init.Normal(0.02))
        data = synthetic_sentiment_batches(n=32, batch_size=16, seq_len=12, seed=0)
        train_loop(net, data, None, 2, 1e-3, mx.cpu(), progress=False, seed=3,
                   max_grad_norm=0.5)
        monkeypatch.undo()
        return {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}

    fused, reference = trained(True), trained(False)
    moved = max(np.abs(fused[k] - reference[k]).max() for k in fused)
    assert moved < 1e-5, moved


def test_trainer_uses_the_fused_update(monkeypatch):
    calls = []
    original = AdamW._fused_update

    def spy(self, indices, *args):
        calls.append(len(indices))  # every array in one call of the operator
        return original(self, indices, *args)
    monkeypatch.setattr(AdamW, '_fused_update', spy)
    dense = gluon.nn.Dense(3, in_units=4)
    dense.initialize()
    trainer = gluonbert.train.make_trainer(dense, lr=0.1)
    with autograd.record():
        loss = dense(mx.nd.ones((2, 4))).sum()
    loss.backward()
    before = dense.weight.data().asnumpy()
    trainer.step(1)
    assert calls == [2] and not np.allclose(dense.weight.data().asnumpy(), before)


def _python(code, **env):
    environment = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=environment, timeout=120, cwd=ROOT)


# Recorded before gluonbert is imported: every way Python starts another process.
NO_PROCESSES = '''
import os, subprocess
spawned = []
def _refuse(name):
    def call(*args, **kwargs):
        spawned.append(name)
        raise RuntimeError(name + ' called')
    return call
subprocess.Popen.__init__ = _refuse('Popen')
for name in ('fork', 'forkpty', 'posix_spawn', 'posix_spawnp', 'system', 'execv', 'execve'):
    if hasattr(os, name):
        setattr(os, name, _refuse(name))
'''
TRAIN_STEP = '''
net = gluonbert.BERTClassifier(gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny')))
net.initialize()
net.hybridize()
from gluonbert.engine import register_optimizers
register_optimizers('adamw')  # importing gluonbert registers nothing
trainer = mx.gluon.Trainer(net.collect_params(), 'adamw', {'learning_rate': 1e-3})
words = mx.nd.array([[2, 7, 8, 3, 0]])
with mx.autograd.record():
    loss = net(words, mx.nd.zeros_like(words), mx.nd.array([4])).sum()
loss.backward()
trainer.step(1)
print('trained, spawned:', spawned)
'''
FALLBACK = '''
import json, warnings
warnings.simplefilter('always')
import gluonbert, mxnet as mx
from gluonbert import ops
norm = gluonbert.LayerNorm(units=8)
norm.initialize()
graph = norm(mx.sym.var('x')).tojson()
y = norm(mx.nd.ones((2, 8)))
print(json.dumps({'loaded': ops.load(), 'status': ops.status(),
                  'fused_in_graph': 'gluonbert_layer_norm' in graph,
                  'out': float(y.sum().asscalar())}))
'''


def test_turned_off_by_environment():
    done = _python(FALLBACK, GLUONBERT_FUSED_OPS='0')
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {'loaded': False, 'status': 'turned off by GLUONBERT_FUSED_OPS=0',
                      'fused_in_graph': False, 'out': 0.0}


def test_not_built_means_mxnet_operators_and_no_compiler(tmp_path):
    """An empty cache: MXNet's operators, no warning, and import plus a forward pass and a
    training step start no process at all (no compiler, nothing else)."""
    code = NO_PROCESSES + FALLBACK + TRAIN_STEP
    done = _python(code, GLUONBERT_CACHE_DIR=str(tmp_path / 'empty'), PATH='/nonexistent')
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-2])
    assert result == {'loaded': False, 'status': ops.NOT_BUILT, 'fused_in_graph': False,
                      'out': 0.0}
    assert done.stdout.splitlines()[-1] == 'trained, spawned: []'
    assert 'not available' not in done.stderr
    assert not (tmp_path / 'empty').exists()  # nothing was written to the cache either


def test_a_failed_build_is_one_line_and_leaves_nothing(tmp_path):
    done = _python('import sys; from gluonbert.cli import ops; sys.exit(ops.main(["build"]))',
                   CXX='/bin/false', GLUONBERT_CACHE_DIR=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ['gluonbert-ops: error: false failed: 1']
    assert not list(tmp_path.rglob('*.so'))  # no torn library left behind


def _cache_copy(tmp_path):
    """A cache directory holding a copy of this machine's built library and checksum."""
    cache = tmp_path / 'cache'
    (cache / 'ops').mkdir(parents=True)
    built = ops.library_path()
    for path in (built, built + '.sha256'):
        shutil.copy(path, cache / 'ops' / os.path.basename(path))
    return cache, cache / 'ops' / os.path.basename(built)


def test_a_truncated_library_is_not_loaded_and_gets_rebuilt(tmp_path):
    """A truncated .so would kill the process with SIGBUS when loaded: the checksum stops it,
    the import works with MXNet's operators and one warning, and a build replaces it."""
    cache, library = _cache_copy(tmp_path)
    with open(library, 'r+b') as f:
        f.truncate(library.stat().st_size // 2)
    done = _python(FALLBACK, GLUONBERT_CACHE_DIR=str(cache))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert not result['loaded'] and result['out'] == 0.0
    assert result['status'] == (f'RuntimeError: {library}: it does not match its checksum '
                                f'(truncated or damaged); rebuild it with: gluonbert-ops build')
    assert done.stderr.count('fused CPU operators are not available') == 1, done.stderr
    done = _python('import sys; from gluonbert.cli import ops; sys.exit(ops.main(["build"]))',
                   GLUONBERT_CACHE_DIR=str(cache))
    assert done.returncode == 0, done.stderr
    built_for = '' if ops.march() == 'native' else f' (built for -march={ops.march()})'
    assert done.stdout.strip() == (f'gluonbert fused CPU operators: loaded from {library}'
                                   f'{built_for}')
    assert library.stat().st_size == os.path.getsize(ops.library_path())


def test_a_cache_of_another_user_is_not_used(tmp_path):
    cache, library = _cache_copy(tmp_path)
    if os.getuid() != 0:
        pytest.skip('needs root to give the cache to another user')
    os.chown(cache / 'ops', 65534, 65534)
    done = _python(FALLBACK, GLUONBERT_CACHE_DIR=str(cache))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert not result['loaded']
    assert result['status'] == (f'RuntimeError: {cache / "ops"} belongs to another user '
                                f'(uid 65534); set GLUONBERT_CACHE_DIR to a directory of your '
                                f'own')
    os.chown(cache / 'ops', 0, 0)
    os.chmod(cache / 'ops', 0o777)
    result = json.loads(_python(FALLBACK, GLUONBERT_CACHE_DIR=str(cache)).stdout.splitlines()[-1])
    assert result['status'] == (f'RuntimeError: {cache / "ops"} is writable by every user; '
                                f'chmod o-w it, or set GLUONBERT_CACHE_DIR')


@pytest.mark.parametrize('fused', [True, False])
def test_adamw_optimizer_follows_the_textbook_rule(fused, monkeypatch):
    """Adam with bias correction and decoupled weight decay (Loshchilov & Hutter), three
    steps computed in float64 numpy: both the fused and MXNet's update follow it."""
    if not fused:
        monkeypatch.setattr(AdamW, '_fused', lambda self, weight, grad: False)
    rng = np.random.RandomState(3)
    w0 = rng.randn(4, 5)
    grads = [rng.randn(4, 5) for _ in range(3)]
    lr, wd, beta1, beta2, eps = 0.01, 0.1, 0.9, 0.999, 1e-6
    weight = gluon.Parameter('weight', shape=w0.shape)
    weight.initialize(mx.init.Constant(mx.nd.array(w0)))
    gluonbert.engine.register_optimizers('adamw')  # importing gluonbert registers nothing
    trainer = gluon.Trainer([weight], 'adamw', {'learning_rate': lr, 'wd': wd, 'epsilon': eps})
    w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        with autograd.record():  # a loss whose gradient is g
            loss = (weight.data() * mx.nd.array(g)).sum()
        loss.backward()
        trainer.update(1)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        step = lr * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        w = w - step * (m / (np.sqrt(v) + eps) + wd * w)
    np.testing.assert_allclose(weight.data().asnumpy(), w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dtype', ['float32', pytest.param('bfloat16', marks=needs_native_bf16())])
def test_inference_graphs_keep_the_fused_layer_norm_unless_portable(dtype):
    """The float32 and bfloat16 fast paths keep the fused LayerNorm (AMP keeps it float32);
    portable graphs (exports) and int8 graphs use MXNet's operators only."""
    from gluonbert import fast
    config = gluonbert.BERTConfig.from_preset('tiny')
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), num_classes=2)
    net.initialize()
    example = fast.example_inputs(net, batch_size=2, seq_len=8)
    reference = net(*example).asnumpy()
    tolerance = {'float32': 1e-5, 'bfloat16': 5e-2}[dtype]
    fused = fast.prepare(net, dtype, ctx=mx.cpu())
    portable = fast.prepare(net, dtype, ctx=mx.cpu(), portable=True)
    assert 'gluonbert_layer_norm' in fused._cached_graph[1].tojson(), dtype
    assert 'gluonbert_' not in portable._cached_graph[1].tojson(), dtype
    for model in (fused, portable):
        np.testing.assert_allclose(model(*example).asnumpy(), reference,
                                   rtol=tolerance, atol=tolerance)
    assert 'gluonbert_dropout' not in fused._cached_graph[1].tojson()  # inference graph
    if dtype == 'bfloat16':
        return
    int8 = fast.prepare(net, 'int8', ctx=mx.cpu(), calib_batches=[example])
    assert 'gluonbert_' not in int8._cached_graph[1].tojson()


@pytest.mark.parametrize('hybridize', [False, True])
def test_dropout_block(hybridize):
    """Training: about p dropped, the rest scaled by 1/(1-p), gradient through the same mask,
    repeatable under mx.random.seed; otherwise the identity."""
    rate = 0.25
    block = gluonbert.Dropout(rate=rate)
    if hybridize:
        block.hybridize(static_alloc=True)
    x = mx.nd.random.uniform(1, 2, shape=(64, 33, 17))  # no zeros: dropped <=> output 0
    assert np.array_equal(block(x).asnumpy(), x.asnumpy())  # not training: identity
    with autograd.predict_mode():
        assert np.array_equal(block(x).asnumpy(), x.asnumpy())

    def train_step(seed):
        mx.random.seed(seed)
        x.attach_grad()
        with autograd.record():
            y = block(x)
        y.backward(mx.nd.ones_like(y))
        return y.asnumpy(), x.grad.asnumpy()

    y, grad = train_step(7)
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 0.01
    np.testing.assert_allclose(y[kept], x.asnumpy()[kept] / (1 - rate), rtol=1e-6)
    np.testing.assert_allclose(grad, kept / (1 - rate), rtol=1e-6)
    assert np.array_equal(train_step(7)[0], y)        # the same seed, the same mask
    assert not np.array_equal(train_step(8)[0], y)
    assert 'gluonbert_dropout' in block(mx.sym.var('x')).tojson()


def test_dropout_masks_are_independent_of_position_and_call():
    block = gluonbert.Dropout(rate=0.5)
    x = mx.nd.ones((4, 100000))
    with autograd.record():
        first, second = block(x).asnumpy() != 0, block(x).asnumpy() != 0
    # neighbouring elements, rows and successive calls are uncorrelated
    assert abs(np.corrcoef(first[:, :-1].ravel(), first[:, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(first[0], first[1])[0, 1]) < 0.01
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.01


def test_dropout_kernels_are_chosen_when_built():
    x = mx.sym.var('x')
    block = gluonbert.Dropout(rate=0.1)
    assert block.kernels == 'fused' and 'gluonbert_dropout' in block(x).tojson()
    with kernel_registry.building(kernels='mxnet'):
        assert 'gluonbert_dropout' not in gluonbert.Dropout(rate=0.1)(x).tojson()
    with kernel_registry.building(kernels='mxnet', dropout_kernels='fused'):  # per operation
        assert 'gluonbert_dropout' in gluonbert.Dropout(rate=0.1)(x).tojson()
    assert 'gluonbert_dropout' in block(x).tojson()
    assert gluonbert.Dropout(rate=0.0)(x).tojson().count('"op": "_copy"') == 1
    with pytest.raises(ValueError, match='rate'):
        gluonbert.Dropout(rate=1.0)


def test_kernels_resolve_when_built_and_fused_without_the_library_is_refused(monkeypatch):
    from gluonbert.errors import EnvironmentProblem
    assert ops.resolve_kernels('auto') == 'fused' and ops.resolve_kernels('mxnet') == 'mxnet'
    monkeypatch.setattr(ops, 'load', lambda: False)
    monkeypatch.setitem(ops._STATE, 'reason', ops.NOT_BUILT)  # pylint: disable=protected-access
    assert ops.resolve_kernels('auto') == 'mxnet'
    with pytest.raises(EnvironmentProblem) as caught:
        gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny', kernels='fused'))
    assert str(caught.value) == (
        "kernels='fused' needs gluonbert's fused CPU operators, which are not available "
        "(not built yet (build once per machine: gluonbert-ops build)); build them with "
        "gluonbert-ops build, or use kernels='mxnet'")
    model = gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny'))
    assert model.config.kernels == 'mxnet'  # what it computes with is recorded in its config
    assert {b.kernels for b in (model.encoder.embed_norm, model.encoder.embed_dropout)} == \
        {'mxnet'}
    with pytest.raises(ValueError, match='BERTConfig.kernels must be one of'):
        gluonbert.BERTConfig.from_preset('tiny', kernels='fast')


def _train_tiny(kernels, seed):
    """Weights of a tiny classifier after a few dropout-heavy steps."""
    from gluonbert.train import train_loop
    from stand_ins import synthetic_sentiment_batches

    class Loader(list):
        batch_sampler = None
    mx.random.seed(seed)
    np.random.seed(seed)
    config = gluonbert.BERTConfig.from_preset('tiny', dropout=0.3, kernels=kernels)
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), dropout=0.3)
    net.initialize()
    net.hybridize(static_alloc=True)
    train_loop(net, Loader(synthetic_sentiment_batches(n=32, batch_size=8)), None, 1, 1e-3,
               mx.cpu(), progress=False, seed=seed)
    # structural names (as save_parameters writes them): the same in both runs
    return {name: p.data().asnumpy()
            for name, p in net._collect_params_with_prefix().items()}  # pylint: disable=protected-access


def test_same_seed_and_kernels_give_identical_weights():
    """The kernels are part of what a run is: with the same ones a seed repeats the run bit
    for bit; fused and MXNet dropout draw different masks, so the two runs differ."""
    runs = {kernels: [_train_tiny(kernels, seed=5) for _ in range(2)]
            for kernels in ('fused', 'mxnet')}
    for kernels, (first, second) in runs.items():
        assert first.keys() == second.keys()
        for name in first:
            assert np.array_equal(first[name], second[name]), (kernels, name)
    fused, plain = runs['fused'][0], runs['mxnet'][0]
    assert any(not np.allclose(fused[n], plain[n], atol=1e-4) for n in fused)
