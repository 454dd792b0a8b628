"""d2l (Dive into Deep Learning's code) beside gluonbert, in one process.

``d2l==1.0.3`` is the ``notebooks`` extra (setup.cfg), which CI installs: notebooks 02, 03 and 05
import it. Its MXNet code uses MXNet's numpy interface (``mx.np``, ``npx.set_np()``), gluonbert
the classic ``mx.nd`` one; these tests switch the mode on around d2l's code and always off again,
and check that a gluonbert ``EncoderBlock`` with the book's settings holding the weights of d2l's
``TransformerEncoderBlock`` computes the same function.
"""
import configparser
import contextlib
import functools
import pathlib

import numpy as np
import pytest

import gluonbert
import mxnet as mx
from mxnet import nd, npx
from gluonbert.params import named_parameters
from conftest import FLOAT32_EPS, assert_close

ROOT = pathlib.Path(__file__).resolve().parents[1]
INSTALL = '.venv/bin/python -m pip install --no-build-isolation -e ".[cpu,test,notebooks]"'
# tiny sizes: the same code paths as the chapter's 768 units, in milliseconds
VOCAB, UNITS, FFN, HEADS, BLOCKS, DROPOUT, MAX_LEN = 50, 32, 64, 4, 2, 0.2, 16
# gluonbert parameter name -> the d2l TransformerEncoderBlock attribute holding it
D2L_NAMES = {'attention.query': 'attention.W_q', 'attention.key': 'attention.W_k',
             'attention.value': 'attention.W_v', 'attention.out_proj': 'attention.W_o',
             'ffn.ffn_1': 'ffn.dense1', 'ffn.ffn_2': 'ffn.dense2',
             'attention_norm.norm': 'addnorm1.ln', 'ffn_norm.norm': 'addnorm2.ln'}


def _d2l():
    """d2l's MXNet module; a clear failure (not a skip) when the declared extra is missing."""
    try:
        from d2l import mxnet as d2l
    except ImportError as err:
        missing = err
    else:
        return d2l
    pytest.fail(f'd2l is not installed ({missing}). It is the `notebooks` extra of setup.cfg, '
                f'which CI installs; install it with: {INSTALL}', pytrace=False)


@contextlib.contextmanager
def _numpy_mode():
    """MXNet's numpy interface on inside the block, and off afterwards whatever happens."""
    npx.set_np()
    try:
        yield
    finally:
        npx.reset_np()


@pytest.fixture(autouse=True)
def _classic_mode_around_each_test():
    assert not mx.util.is_np_array(), 'numpy mode was left on before this test'
    yield
    npx.reset_np()                   # even if a test failed inside _numpy_mode's caller
    assert not mx.util.is_np_array() and not mx.util.is_np_shape()


def test_d2l_is_the_version_the_notebooks_extra_pins():
    _d2l()
    import d2l
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / 'setup.cfg')
    extra = config['options.extras_require']['notebooks'].split()
    pins = [req.split('==', 1)[1] for req in extra if req.startswith('d2l==')]
    assert pins == ['1.0.3'], extra
    assert d2l.__version__ == pins[0], (d2l.__version__, pins)
    # importing d2l does not switch MXNet to numpy mode; the book calls npx.set_np() itself
    assert not mx.util.is_np_array()


def _tiny_batch(d2l):
    tokens = d2l.np.array([[2, 7, 9, 3, 11, 12, 13, 3], [2, 5, 6, 3, 21, 22, 0, 0]])
    segments = d2l.np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0, 0]])
    valid_lens = d2l.np.array([8, 6])
    return tokens, segments, valid_lens


def test_d2l_bert_and_gluonbert_run_in_one_process():
    d2l = _d2l()
    with _numpy_mode():
        mx.random.seed(0)
        encoder = d2l.BERTEncoder(VOCAB, UNITS, FFN, HEADS, BLOCKS, DROPOUT, max_len=MAX_LEN)
        encoder.initialize()
        tokens, segments, valid_lens = _tiny_batch(d2l)
        encoded = encoder(tokens, segments, valid_lens)
        mlm = d2l.MaskLM(VOCAB, UNITS)
        mlm.initialize()
        mlm_logits = mlm(encoded, d2l.np.array([[1, 5], [2, 4]]))
        assert isinstance(encoded, mx.np.ndarray)
        assert encoded.shape == (2, 8, UNITS) and mlm_logits.shape == (2, 2, VOCAB)
        d2l_values = encoded.asnumpy()
    assert np.isfinite(d2l_values).all()

    config = gluonbert.BERTConfig(vocab_size=VOCAB, units=UNITS, hidden_size=FFN, num_heads=HEADS,
                                  num_layers=BLOCKS, max_length=MAX_LEN)
    model = gluonbert.BERTModel(config)
    model.initialize()
    words = nd.array([[2, 7, 9, 3, 11, 12, 13, 3], [2, 5, 6, 3, 21, 22, 0, 0]])
    sequence, pooled = model(words, nd.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0, 0]]),
                             nd.array([8, 6]))
    assert isinstance(sequence, nd.NDArray) and not isinstance(sequence, mx.np.ndarray)
    assert sequence.shape == (2, 8, UNITS) and pooled.shape == (2, UNITS)
    assert np.isfinite(sequence.asnumpy()).all()
    assert float(nd.abs(sequence[1, 6:]).max().asscalar()) == 0.0   # gluonbert zeroes padding


def _d2l_block_and_output():
    """A d2l TransformerEncoderBlock (with biases, as in d2l's BERTEncoder) with random
    LayerNorm parameters, its input and its output on a padded batch, as mx.nd arrays."""
    d2l = _d2l()
    with _numpy_mode():
        mx.random.seed(3)
        block = d2l.TransformerEncoderBlock(UNITS, FFN, HEADS, DROPOUT, True)
        block.initialize()
        x = d2l.np.random.normal(size=(2, 8, UNITS))
        valid_lens = d2l.np.array([8, 5])
        block(x, valid_lens)                                  # shapes of the deferred Dense layers
        for norm in (block.addnorm1.ln, block.addnorm2.ln):  # copying them must be tested too
            norm.gamma.set_data(d2l.np.random.uniform(0.5, 1.5, size=norm.gamma.shape))
            norm.beta.set_data(d2l.np.random.uniform(-0.5, 0.5, size=norm.beta.shape))
        out = block(x, valid_lens)
        weights = {}
        for ours, theirs in D2L_NAMES.items():
            layer = functools.reduce(getattr, theirs.split('.'), block)
            for kind in (('gamma', 'beta') if ours.endswith('norm') else ('weight', 'bias')):
                weights[f'{ours}.{kind}'] = getattr(layer, kind).data().as_nd_ndarray()
        return weights, x.as_nd_ndarray(), valid_lens.as_nd_ndarray(), out.as_nd_ndarray()


def _gluonbert_block(weights, kernels='auto', **settings):
    with gluonbert.kernels.building(kernels=kernels):
        block = gluonbert.EncoderBlock(units=UNITS, hidden_size=FFN, num_heads=HEADS,
                                       dropout=DROPOUT, **settings)
    block.initialize()
    params = named_parameters(block)
    assert sorted(params) == sorted(weights)
    for name, value in weights.items():
        params[name].set_data(value)
    return block


@pytest.mark.parametrize('kernels', ['auto', 'mxnet'])
def test_encoder_block_computes_d2ls_function(kernels):
    weights, x, valid_lens, d2l_out = _d2l_block_and_output()
    assert not mx.util.is_np_array()
    same = _gluonbert_block(weights, activation='relu', layer_norm_eps=1e-5, layout='NTC',
                            kernels=kernels)
    # one encoder block, d2l's operators against gluonbert's: float32 rounding, 64 eps
    assert_close(same(x, valid_lens).asnumpy(), d2l_out.asnumpy(), rtol=64 * FLOAT32_EPS,
                 name='encoder block')
    # the control: gluonbert's defaults (GELU, eps 1e-12) are another function
    default = _gluonbert_block(weights, kernels=kernels)
    assert float(nd.abs(default(x, valid_lens) - d2l_out).max().asscalar()) > 1e-2


def test_encoder_block_in_tnc_layout_agrees_too():
    weights, x, valid_lens, d2l_out = _d2l_block_and_output()
    tnc = _gluonbert_block(weights, activation='relu', layer_norm_eps=1e-5, layout='TNC')
    out = tnc(x.transpose((1, 0, 2)), valid_lens).transpose((1, 0, 2))
    assert_close(out.asnumpy(), d2l_out.asnumpy(), rtol=64 * FLOAT32_EPS, name='TNC block')
