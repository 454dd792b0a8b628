"""Shared fixtures: tiny configs, seeded RNGs, padded sentence-pair batches."""
import os
import sys

import numpy as np
import pytest

os.environ.setdefault('MXNET_SUBGRAPH_VERBOSE', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gluonbert  # noqa: E402,F401  (first: it sets MXNet's OpenMP thread count)
import mxnet as mx  # noqa: E402


@pytest.fixture(autouse=True)
def seeded():
    mx.random.seed(1234)
    np.random.seed(1234)


@pytest.fixture
def tiny_config():
    return gluonbert.BERTConfig.from_preset('tiny')


def make_batch(vocab_size=99, batch=3, seq_len=10, valid=(10, 7, 3), split=5, seed=0):
    """Padded sentence pairs: segments 0 then 1 inside the valid part, 0 in the padding."""
    rng = np.random.RandomState(seed)
    words = rng.randint(1, vocab_size, (batch, seq_len))
    segments = np.zeros((batch, seq_len))
    for row, length in enumerate(valid):
        words[row, length:] = 0
        segments[row, min(split, length):length] = 1
    return (mx.nd.array(words), mx.nd.array(segments), mx.nd.array(valid))


@pytest.fixture
def batch():
    return make_batch()


FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7: one ulp of float32 at 1.0


def assert_close(actual, reference, *, rtol, atol=0.0, name='values'):
    """``max|actual - reference| <= rtol * max|reference| + atol``.

    A bound relative to the size of what is compared: float32 rounding errors grow with the
    magnitude of the numbers, so an absolute bound fails on large values that differ by one
    ulp (2^-16 at 128) and says nothing of small ones. The message gives both magnitudes.
    """
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, f'{name}: shape {actual.shape} != {reference.shape}'
    difference = float(np.abs(actual - reference).max())
    scale = float(np.abs(reference).max())
    bound = rtol * scale + atol
    assert difference <= bound, (f'{name} differ by {difference:.3g} > {bound:.3g} '
                                 f'({rtol:g} x max|reference| {scale:.3g} + {atol:g}); that is '
                                 f'{difference / max(scale, 1e-30) / FLOAT32_EPS:.1f} eps of it')


# The exporters' and backends' tests share one tiny classifier (tests/export_models.py).
@pytest.fixture(scope='module')
def vocabulary():
    """The embedded model's vocabulary and tokenizer."""
    from export_models import minilm_vocabulary
    return minilm_vocabulary()


@pytest.fixture(scope='module')
def classifier(vocabulary):
    """A tiny seeded classifier on that vocabulary."""
    from export_models import tiny_classifier
    return tiny_classifier(*vocabulary)
