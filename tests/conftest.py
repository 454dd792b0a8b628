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
