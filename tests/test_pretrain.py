"""Pre-training data statistics, determinism, overfitting, and resuming through the
engine's transactional checkpoints."""
import json
import os
import shutil

import numpy as np
import mxnet as mx
import pytest

import gluonbert
import gluonbert._io
from gluonbert.data import DataError, ShardedPretrainingData, prepare_shards
from gluonbert._io import DirectoryLock
from gluonbert.errors import CheckpointError, UsageError
from gluonbert.pretrain import (IS_NEXT, PretrainingData, evaluate_pretraining, pretrain_loop,
                                read_corpus, split_sentences)
from stand_ins import WordVocab, crash_snapshots, whitespace_tokenizer


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
    # BERT's packing: pairs of one gathered sentence always take a random B, the others
    # half the time (test_pretraining_data checks the labels themselves)
    assert 0.3 <= positives / len(examples) <= 0.5, positives / len(examples)


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


def sharded(tmp_path, docs, vocab, max_len, **options):
    """Shards of ``docs`` prepared in ``tmp_path``, streamed."""
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n\n'.join('\n'.join(doc) for doc in docs) + '\n', encoding='utf-8')
    prepare_shards(str(corpus), str(tmp_path / 'shards'), whitespace_tokenizer, vocab,
                   max_len=max_len, examples_per_shard=16, documents_per_chunk=8,
                   heldout_every=0, progress=False)
    return ShardedPretrainingData(str(tmp_path / 'shards'), vocab, **options)


def test_tiny_model_learns_mlm_and_nsp_from_streamed_shards(tmp_path):
    """BERT-style examples (packed sentences, random B from another document) streamed from
    shards: both tasks well above chance."""
    docs, vocab = structured_corpus()
    data = sharded(tmp_path, docs, vocab, 20, max_predictions=4, shuffle_buffer=64)
    model = tiny_pretraining_model(len(vocab))
    held_out = data.batches(32, epoch=99)
    before = evaluate_pretraining(model, held_out)
    # MLM is learned first (~400 steps), NSP after it (~800 steps)
    records = pretrain_loop(model, data, steps=800, batch_size=32, lr=2e-3, optimizer='adamw',
                            progress=False, log_interval=200, warmup_ratio=0.05)
    after = evaluate_pretraining(model, held_out)
    assert before['mlm_accuracy'] < 0.1
    assert after['mlm_accuracy'] >= 0.9, after
    assert after['nsp_accuracy'] >= 0.9, after
    assert records[-1]['step'] == 800
    assert after['mlm_perplexity'] < before['mlm_perplexity']


def dropout_model(vocab, seed):
    mx.random.seed(seed)
    model = gluonbert.BERTForPretraining(gluonbert.BERTConfig.from_preset(
        'tiny', vocab_size=len(vocab)))
    model.initialize()
    return model


def _params(model):
    return {k: v.data().asnumpy() for k, v in model._collect_params_with_prefix().items()}


def _deterministic(records):
    """The records without their timing."""
    return [{k: v for k, v in r.items() if k != 'sequences_per_second'} for r in records]


def _metrics(path):
    return _deterministic(json.loads(line) for line in path.read_text().splitlines())


@pytest.mark.parametrize('kind', ['in memory', 'streamed'])
def test_resume_equals_uninterrupted(tmp_path, kind):
    """A resume in the middle of an epoch (after 8 of its 12 batches in memory, 11
    streamed: the streamed run crosses into its second epoch) continues bit for bit."""
    docs, vocab = structured_corpus()
    data = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=20, max_predictions=4) \
        if kind == 'in memory' else sharded(tmp_path, docs, vocab, 20, max_predictions=4,
                                            shuffle_buffer=9)
    assert data.batches_per_epoch(16) == (12 if kind == 'in memory' else 11)
    options = dict(steps=12, batch_size=16, lr=1e-3, progress=False, log_interval=4, seed=1)
    reference = dropout_model(vocab, 0)
    expected = pretrain_loop(reference, data, **options)
    resumed_dir = tmp_path / 'resumed'
    _run_until(dropout_model(vocab, 0), data, options, resumed_dir, stop_at=8)
    assert (resumed_dir / 'last').read_text() == 'step-0008\n'
    resumed = dropout_model(vocab, 123)  # another initialisation: all must come from disk
    records = pretrain_loop(resumed, data, checkpoint_dir=str(resumed_dir), resume=True,
                            metrics_path=str(tmp_path / 'metrics.jsonl'), **options)
    got = _params(resumed)
    for name, value in _params(reference).items():
        assert np.array_equal(got[name], value), name  # bit for bit
    assert _deterministic(records) == _deterministic(expected)
    assert [r['step'] for r in records] == [4, 8, 12]
    assert _metrics(tmp_path / 'metrics.jsonl') == _deterministic(expected)
    assert sorted(os.listdir(resumed_dir)) == ['.lock', 'last', 'step-0012']
    assert sorted(os.listdir(resumed_dir / 'step-0012')) == ['model.params', 'state.json',
                                                             'trainer.states']


def _run_until(model, data, options, checkpoint_dir, stop_at):
    """Run with a checkpoint every 4 steps, and fail right after the checkpoint of step
    ``stop_at`` is complete (the failure surfaces at the next checkpoint, as a crash in
    between would leave the directory)."""
    class Killed(Exception):
        pass

    def die(name, path):
        if name == 'checkpoint.pruned' and \
                (checkpoint_dir / 'last').read_text() == f'step-{stop_at:04d}\n':
            raise Killed()
    gluonbert._io._boundary_hook = die
    try:
        with pytest.raises(Killed):
            pretrain_loop(model, data, checkpoint_dir=str(checkpoint_dir), checkpoint_every=4,
                          **options)
    finally:
        gluonbert._io._boundary_hook = None


# a metrics line per record; per checkpoint (none is "best" in pre-training):
PER_CHECKPOINT = ['checkpoint.staging', 'checkpoint.model.params',
                  'checkpoint.trainer.states', 'checkpoint.state.json', 'checkpoint.renamed',
                  'checkpoint.pointer', 'checkpoint.pruned']


def test_a_crash_at_any_write_boundary_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Checkpoints every 3 steps, records every 4: some checkpoints fall between two
    records, and hold the metric sums not yet logged (summed over the workers)."""
    docs, vocab = structured_corpus()
    data = PretrainingData(docs[:24], whitespace_tokenizer, vocab, max_len=16,
                           max_predictions=3)
    held_out = PretrainingData(docs[24:30], whitespace_tokenizer, vocab, max_len=16,
                               max_predictions=3, seed=1)
    options = dict(steps=6, batch_size=4, lr=1e-3, progress=False, log_interval=4, seed=3,
                   eval_data=held_out, checkpoint_every=3, accumulate=2)

    def run(directory, model, **extra):
        return pretrain_loop(model, data, checkpoint_dir=str(directory / 'checkpoints'),
                             metrics_path=str(directory / 'metrics.jsonl'), **options, **extra)
    reference = dropout_model(vocab, 0)
    expected = _deterministic(run(tmp_path / 'reference', reference))
    final = (tmp_path / 'reference' / 'checkpoints' / 'step-0006' / 'model.params').read_bytes()
    where = tmp_path / 'run'
    snapshots = crash_snapshots(monkeypatch, where, tmp_path / 'crashes')
    run(where, dropout_model(vocab, 0))
    monkeypatch.setattr(gluonbert._io, '_boundary_hook', None)
    kinds = [path.name.split('-', 1)[1] for path in snapshots]
    assert kinds.count('metrics') == 2  # steps 4 and 6 (the last)
    for kind in PER_CHECKPOINT:
        assert kinds.count(kind) == 2, kind  # steps 3 (between two records) and 6
    assert len(kinds) == 2 + 2 * len(PER_CHECKPOINT)
    weights = _params(reference)
    for snapshot in snapshots:
        committed = (snapshot / 'checkpoints' / 'last').exists()
        resumed = dropout_model(vocab, 99 if committed else 0)
        records = run(snapshot, resumed, resume=True)
        assert _deterministic(records) == expected, snapshot.name
        assert _metrics(snapshot / 'metrics.jsonl') == expected, snapshot.name
        got = _params(resumed)
        for name, value in weights.items():
            assert np.array_equal(got[name], value), (snapshot.name, name)
        checkpoints = snapshot / 'checkpoints'
        assert sorted(os.listdir(checkpoints)) == ['.lock', 'last', 'step-0006']
        assert (checkpoints / 'step-0006' / 'model.params').read_bytes() == final


def test_resume_checks_the_run_and_refuses_the_first_layout(tmp_path):
    docs, vocab = structured_corpus()
    data = PretrainingData(docs[:20], whitespace_tokenizer, vocab, max_len=16,
                           max_predictions=3)
    options = dict(steps=2, batch_size=8, lr=1e-3, progress=False, log_interval=1, seed=3,
                   checkpoint_dir=str(tmp_path))
    model = dropout_model(vocab, 0)
    pretrain_loop(model, data, **options)
    with pytest.raises(CheckpointError) as refused:
        pretrain_loop(model, data, **dict(options, lr=2e-3, resume=True))
    assert str(refused.value) == (f'{tmp_path}: cannot resume: lr differs (checkpoint: 0.001; '
                                  f'this run: 0.002)')
    other = PretrainingData(docs[:20], whitespace_tokenizer, vocab, max_len=16,
                            max_predictions=3, mask_prob=0.2)
    with pytest.raises(CheckpointError, match='cannot resume: the training data differ'):
        pretrain_loop(model, other, **dict(options, resume=True))
    # more steps extend the run
    records = pretrain_loop(model, data, **dict(options, steps=3, resume=True))
    assert [r['step'] for r in records] == [1, 2, 3]
    assert (tmp_path / 'last').read_text() == 'step-0003\n'
    # the first layout (last.json with step and records, last.params, last.states)
    state = json.loads((tmp_path / 'step-0003' / 'state.json').read_text())
    (tmp_path / 'last.json').write_text(json.dumps({'step': 3, 'records': state['history']}))
    for name, legacy in (('model.params', 'last.params'), ('trainer.states', 'last.states')):
        shutil.copyfile(tmp_path / 'step-0003' / name, tmp_path / legacy)
    (tmp_path / 'last').unlink()
    shutil.rmtree(tmp_path / 'step-0003')
    # is refused in one line naming the layout, and left as it was
    with pytest.raises(CheckpointError, match='a checkpoint of an older gluonbert .the first '
                                              'layout, gluonbert-checkpoint-1'):
        pretrain_loop(model, data, **dict(options, steps=4, resume=True))
    assert sorted(os.listdir(tmp_path)) == ['.lock', 'last.json', 'last.params', 'last.states']
    with pytest.raises(TypeError, match='PretrainConfig has no setting checkpoint_interval'):
        pretrain_loop(model, data, **dict(options, checkpoint_interval=5))
    with pytest.raises(UsageError, match='checkpoint_every must be an integer >= 1'):
        pretrain_loop(model, data, **dict(options, checkpoint_every=0.5))
    with DirectoryLock(str(tmp_path)):  # one run per checkpoint directory
        with pytest.raises(UsageError, match='is in use by another gluonbert run'):
            pretrain_loop(model, data, **dict(options, steps=6, resume=True))


def test_examples_longer_than_the_position_embeddings_are_refused():
    docs, vocab = structured_corpus()
    data = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=80, max_predictions=4)
    model = dropout_model(vocab, 0)  # the tiny preset: 64 positions
    with pytest.raises(UsageError) as refused:
        pretrain_loop(model, data, steps=1, batch_size=4, progress=False)
    assert str(refused.value) == ('the training examples are 80 tokens long, but the model has '
                                  '64 position embeddings (max_length)')


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
