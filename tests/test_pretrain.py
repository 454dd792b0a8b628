"""Pre-training data statistics, determinism, overfitting, resume."""
import numpy as np
import mxnet as mx
import pytest

import gluonbert
from gluonbert.data import DataError
from gluonbert.pretrain import (IS_NEXT, PretrainingData, evaluate_pretraining, pretrain_loop,
                                read_corpus, split_sentences)
from stand_ins import WordVocab, whitespace_tokenizer


def random_corpus(num_docs=200, seed=0):
    rng = np.random.RandomState(seed)
    words = [f'w{i}' for i in range(500)]
    docs = [[' '.join(rng.choice(words, rng.randint(8, 30))) for _ in range(rng.randint(3, 9))]
            for _ in range(num_docs)]
    return docs, WordVocab(words)


def test_masking_statistics_and_nsp_balance():
    docs, vocab = random_corpus()
    data = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=64, max_predictions=20,
                           seed=3)
    special = {vocab.cls_id, vocab.sep_id, vocab.pad_id}
    eligible = selected = masked = kept = replaced = positives = 0
    examples = data.examples(0) + data.examples(1)
    for ids, segments, positions, targets, label in examples:
        eligible += sum(1 for t in ids if t not in special and t != vocab.mask_id) + \
            sum(1 for p in positions if ids[p] == vocab.mask_id)
        selected += len(positions)
        positives += label == IS_NEXT
        for p, target in zip(positions, targets):
            assert target not in special, 'a special token was chosen for prediction'
            if ids[p] == vocab.mask_id:
                masked += 1
            elif ids[p] == target:
                kept += 1
            else:
                replaced += 1
        assert ids[0] == vocab.cls_id and ids[-1] == vocab.sep_id
        assert len(ids) == len(segments) <= 64
    assert abs(selected / eligible - 0.15) <= 0.01, selected / eligible
    assert abs(masked / selected - 0.8) <= 0.02
    assert abs(kept / selected - 0.1) <= 0.02
    assert abs(replaced / selected - 0.1) <= 0.02
    assert abs(positives / len(examples) - 0.5) <= 0.02


def test_same_seed_same_batches_and_padding_weights():
    docs, vocab = random_corpus(30)
    a = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=32, seed=5).batches(8)
    b = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=32, seed=5).batches(8)
    c = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=32, seed=5).batches(8,
                                                                                      epoch=1)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u.asnumpy(), v.asnumpy())
    assert any(not np.array_equal(x[0].asnumpy(), y[0].asnumpy()) for x, y in zip(a, c))
    ids, segments, valid_length, positions, targets, weights, labels = \
        [x.asnumpy() for x in a[0]]
    for row in range(ids.shape[0]):
        length = int(valid_length[row])
        assert (segments[row, length:] == 0).all()
        assert (ids[row, length:] == vocab.pad_id).all()
        count = int(weights[row].sum())
        assert (weights[row, :count] == 1).all() and (weights[row, count:] == 0).all()
        assert (positions[row, :count] < length).all() and (positions[row, :count] > 0).all()


def structured_corpus():
    """20 fixed sentences in a fixed cyclic order; documents start at different offsets."""
    sentences = [' '.join(f's{k}t{j}' for j in range(6)) for k in range(20)]
    docs = [[sentences[(start + i) % 20] for i in range(6)] for start in range(20)] * 3
    vocab = WordVocab([f's{k}t{j}' for k in range(20) for j in range(6)])
    return docs, vocab


def tiny_pretraining_model(vocab_size, seed=0):
    mx.random.seed(seed)
    config = gluonbert.BERTConfig.from_preset('tiny', vocab_size=vocab_size, units=64,
                                              hidden_size=128, dropout=0.0,
                                              attention_dropout=0.0)
    model = gluonbert.BERTForPretraining(config)
    model.initialize()
    return model


def test_tiny_model_overfits_structured_corpus():
    docs, vocab = structured_corpus()
    data = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=20, max_predictions=4,
                           seed=0)
    model = tiny_pretraining_model(len(vocab))
    before = evaluate_pretraining(model, data.batches(32, epoch=99))
    # MLM is learned first (~400 steps), NSP after it (~800 steps)
    records = pretrain_loop(model, data, steps=800, batch_size=32, lr=2e-3, optimizer='adamw',
                            progress=False, log_interval=200, warmup_ratio=0.05)
    after = evaluate_pretraining(model, data.batches(32, epoch=99))
    assert before['mlm_accuracy'] < 0.1
    assert after['mlm_accuracy'] >= 0.9, after
    assert after['nsp_accuracy'] >= 0.9, after
    assert records[-1]['step'] == 800
    assert after['mlm_perplexity'] < before['mlm_perplexity']


def test_resume_equals_uninterrupted(tmp_path):
    docs, vocab = structured_corpus()
    data = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=20, max_predictions=4)
    options = dict(steps=12, batch_size=16, lr=1e-3, progress=False, log_interval=4, seed=1)

    def dropout_model(seed):
        mx.random.seed(seed)
        config = gluonbert.BERTConfig.from_preset('tiny', vocab_size=len(vocab))
        model = gluonbert.BERTForPretraining(config)
        model.initialize()
        return model

    reference = dropout_model(0)
    pretrain_loop(reference, data, **options)
    resumed_dir = tmp_path / 'resumed'
    first = dropout_model(0)
    _run_until(first, data, options, str(resumed_dir), stop_at=8)
    resumed = dropout_model(123)
    pretrain_loop(resumed, data, checkpoint_dir=str(resumed_dir), resume=True, **options)
    for (name, a), b in zip(reference._collect_params_with_prefix().items(),
                            resumed._collect_params_with_prefix().values()):
        np.testing.assert_allclose(a.data().asnumpy(), b.data().asnumpy(), atol=1e-6,
                                   err_msg=name)


def _run_until(model, data, options, checkpoint_dir, stop_at):
    """Run with checkpoints and kill the run (an exception) right after step ``stop_at``."""
    import gluonbert.pretrain as module
    original = module._write_text

    class Killed(Exception):
        pass

    def write_then_maybe_die(path, text):
        original(path, text)
        if '"step": %d' % stop_at in text:
            raise Killed()
    module._write_text = write_then_maybe_die
    try:
        with pytest.raises(Killed):
            pretrain_loop(model, data, checkpoint_dir=checkpoint_dir, checkpoint_interval=4,
                          **options)
    finally:
        module._write_text = original


def test_corpus_reading_and_errors(tmp_path):
    text = tmp_path / 'corpus.txt'
    text.write_text('First sentence.\nSecond one.\n\nOther doc.\nMore.\n', encoding='utf-8')
    assert read_corpus(str(text)) == [['First sentence.', 'Second one.'], ['Other doc.', 'More.']]
    jsonl = tmp_path / 'reviews.jsonl'
    jsonl.write_text('{"review": "Great film. I loved it!<br /><br />Ten out of ten."}\n'
                     '{"review": "Awful. Never again."}\n', encoding='utf-8')
    assert read_corpus(str(jsonl), text_column='review')[0] == [
        'Great film.', 'I loved it!', 'Ten out of ten.']
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n\n', encoding='utf-8')
    with pytest.raises(DataError, match='empty'):
        read_corpus(str(empty))
    single = tmp_path / 'single.txt'
    single.write_text('Only one document.\nStill the same.\n', encoding='utf-8')
    with pytest.raises(DataError, match='at least 2'):
        read_corpus(str(single))
    assert split_sentences('Hi there. How are you? Fine!') == ['Hi there.', 'How are you?',
                                                              'Fine!']
