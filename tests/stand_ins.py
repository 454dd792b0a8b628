"""Minimal vocabulary and tokenizer with gluonbert's interface, for tests on synthetic text."""

# Six clear reviews of each kind, for the small CSV files the command-line tests train on.
POSITIVE = ['a wonderful, moving film', 'great acting and a lovely score',
            'I loved it, brilliant', 'superb and charming from start to end',
            'funny, warm and beautifully shot', 'an excellent story, well told']
NEGATIVE = ['a boring, awful mess', 'terrible acting and a dull plot',
            'I hated it, dreadful', 'poor writing and worse directing',
            'tedious, ugly and far too long', 'a bad story, badly told']


class WordVocab:
    """Special tokens first, then the given words; unknown words map to [UNK]."""
    padding_token, unknown_token, cls_token, sep_token, mask_token = \
        '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'

    def __init__(self, words, pad_first=True):
        specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
        if not pad_first:  # a vocabulary whose pad id is not 0
            specials = specials[1:] + specials[:1]
        self.idx_to_token = specials + [w for w in words if w not in specials]
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    def __len__(self):
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk_id)
        return [self.token_to_idx.get(t, self.unk_id) for t in tokens]

    pad_id = property(lambda self: self.token_to_idx['[PAD]'])
    unk_id = property(lambda self: self.token_to_idx['[UNK]'])
    cls_id = property(lambda self: self.token_to_idx['[CLS]'])
    sep_id = property(lambda self: self.token_to_idx['[SEP]'])
    mask_id = property(lambda self: self.token_to_idx['[MASK]'])


def whitespace_tokenizer(text):
    return text.lower().split()


def synthetic_sentiment_batches(n=96, batch_size=16, seq_len=12, seed=0, own_fraction=0.75):
    """Bag-of-words 'sentiment' batches ``(words, valid_length, segments, label)``: label 1
    texts mostly use ids 55-98, label 0 ids 10-54; id 2 stands for [CLS], 0 pads."""
    import numpy as np
    import mxnet as mx
    rng = np.random.RandomState(seed)
    batches = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        labels = rng.randint(0, 2, size)
        lengths = rng.randint(4, seq_len + 1, size)
        own = np.where(labels[:, None] == 1, rng.randint(55, 99, (size, seq_len)),
                       rng.randint(10, 55, (size, seq_len)))
        other = np.where(labels[:, None] == 1, rng.randint(10, 55, (size, seq_len)),
                         rng.randint(55, 99, (size, seq_len)))
        words = np.where(rng.rand(size, seq_len) < own_fraction, own, other)
        words[:, 0] = 2
        for row in range(size):
            words[row, lengths[row]:] = 0
        batches.append((mx.nd.array(words), mx.nd.array(lengths), mx.nd.zeros((size, seq_len)),
                        mx.nd.array(labels)))
    return batches


def write_review_csv(path, rows):
    """A ``review,sentiment`` CSV of ``(text, label)`` rows; returns the path as a string."""
    with open(path, 'w', encoding='utf-8') as f:
        f.write('review,sentiment\n')
        for text, label in rows:
            f.write(f'"{text}",{label}\n')
    return str(path)


def review_rows():
    """The :data:`POSITIVE` and :data:`NEGATIVE` reviews as ``(text, label)`` rows."""
    return [(t, 'positive') for t in POSITIVE] + [(t, 'negative') for t in NEGATIVE]


def save_review_encoder(directory):
    """A tiny seeded BERT encoder, saved with a vocabulary of the reviews' words, for the
    command-line tests to fine-tune: returns ``(model directory, words)``."""
    import mxnet as mx
    import gluonbert
    from gluonbert.tokenizer import BERTTokenizer, Vocab
    words = sorted({w for text, _ in review_rows() for w in text.replace(',', ' ').split()})
    vocab = Vocab(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', ','] + words)
    mx.random.seed(0)
    bert = gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny', vocab_size=len(vocab)))
    bert.initialize(mx.init.Normal(0.2))
    return gluonbert.save_pretrained(bert, vocab, BERTTokenizer(vocab), str(directory)), words


def needs_native_bf16():
    """A pytest mark: skip where this CPU has no native bfloat16, saying why (the refusal
    itself is tested on every machine, in test_hardware.py)."""
    import pytest
    from gluonbert.hardware import bf16_support
    supported, reason = bf16_support()
    return pytest.mark.skipif(not supported, reason=f'needs native bfloat16: {reason}')


def fast_dtypes(*dtypes):
    """``dtypes`` less 'bfloat16' where this CPU cannot run it natively."""
    from gluonbert.hardware import has_native_bf16
    return tuple(d for d in dtypes if d != 'bfloat16' or has_native_bf16())


def crash_snapshots(monkeypatch, run_dir, crashes_dir):
    """Make every write boundary of a transaction (``gluonbert._io.boundary``) copy
    ``run_dir`` to a numbered folder of ``crashes_dir``, as a kill at that point would leave
    it on disk; returns the list of those folders, filled as the run goes."""
    import shutil
    import threading
    import gluonbert._io
    snapshots = []

    def crash_here(name, path):
        if threading.current_thread() is threading.main_thread():
            for thread in threading.enumerate():  # not while the writer thread writes
                if thread.name == 'gluonbert-checkpoint':
                    thread.join()
        snapshots.append(crashes_dir / f'{len(snapshots):02d}-{name}')
        shutil.copytree(run_dir, snapshots[-1])
    monkeypatch.setattr(gluonbert._io, '_boundary_hook', crash_here)
    return snapshots
