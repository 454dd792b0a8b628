"""Corpus-scale pre-training data: BERT's packing, whole-word masking, shards (prepared in
one or two processes, resumed after a crash, checked when read), the streaming epoch and
its worker shares."""
import hashlib
import os
import shutil

import numpy as np
import pytest

import gluonbert._io
from gluonbert.data import (IS_NEXT, NOT_NEXT, Masker, PretrainingData,
                            ShardedPretrainingData, expand_inputs, iter_documents,
                            prepare_shards, read_manifest)
from gluonbert.data import stream as stream_module
from gluonbert.data.shards import Shard, shard_paths
from gluonbert.errors import DataError, UsageError
from stand_ins import WordVocab, whitespace_tokenizer


def labelled_corpus(num_docs=30, seed=0, sentences=(3, 12), words=(3, 9)):
    """Documents whose every token says where it is: ``d{doc}s{sentence}p{position}``."""
    rng = np.random.RandomState(seed)
    docs = []
    for d in range(num_docs):
        docs.append([' '.join(f'd{d}s{s}p{p}' for p in range(rng.randint(*words)))
                     for s in range(rng.randint(*sentences))])
    vocab = WordVocab(sorted({w for doc in docs for s in doc for w in s.split()}))
    return docs, vocab


def write_txt(path, docs):
    path.write_text('\n\n'.join('\n'.join(doc) for doc in docs) + '\n', encoding='utf-8')
    return str(path)


def where(vocab, ids):
    """``(doc, sentence, position)`` of each token id."""
    out = []
    for token in (vocab.idx_to_token[int(i)] for i in ids):
        d, rest = token[1:].split('s')
        s, p = rest.split('p')
        out.append((int(d), int(s), int(p)))
    return out


def test_packing_fills_sequences_to_max_len():
    docs, vocab = labelled_corpus(60, sentences=(30, 60), words=(4, 16))
    data = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=64, seed=1)
    lengths = np.array([len(a) + len(b) + 3 for a, b, _ in data.instances])
    assert lengths.max() <= 64
    assert lengths.mean() >= 0.9 * 64, lengths.mean()
    # short_seq_prob: about a tenth of the documents aim at a random shorter length
    short = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=64, seed=1,
                            short_seq_prob=0.0)
    assert np.mean([len(a) + len(b) + 3 for a, b, _ in short.instances]) > lengths.mean()


def test_segments_and_next_sentence_labels_are_right():
    docs, vocab = labelled_corpus(40)
    data = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=40, seed=2)
    positives = 0
    for index, (first, second, label) in enumerate(data.instances):
        a, b = where(vocab, first), where(vocab, second)
        stream_a = [(s, p) for d, s, p in a]
        # A: consecutive tokens of one document (trimmed at its start only)
        assert len({d for d, _, _ in a}) == 1
        doc = a[0][0]
        tokens = [(s, p) for s, sentence in enumerate(docs[doc])
                  for p in range(len(sentence.split()))]
        start = tokens.index(stream_a[0])
        assert tokens[start:start + len(a)] == stream_a
        if label == IS_NEXT:
            positives += 1
            assert {d for d, _, _ in b} == {doc}
            # B begins right after A ends: the true boundary is kept
            assert tokens[start + len(a):start + len(a) + len(b)] == [(s, p) for _, s, p in b]
        else:
            assert label == NOT_NEXT
            assert len({d for d, _, _ in b}) == 1 and b[0][0] != doc  # another document
            assert b[0][2] == 0  # from a sentence's start
        ids, segments, positions, targets, _ = data.example(index, epoch=0)
        assert ids[0] == vocab.cls_id and ids[len(first) + 1] == vocab.sep_id
        assert ids[-1] == vocab.sep_id and len(ids) == len(first) + len(second) + 3 <= 40
        assert segments.tolist() == [0] * (len(first) + 2) + [1] * (len(second) + 1)
        assert set(positions.tolist()).isdisjoint({0, len(first) + 1, len(ids) - 1})
    # BERT's mix: half the pairs of several sentences are true continuations; a pair of
    # one gathered sentence always takes a random B
    assert 0.3 <= positives / len(data) <= 0.5, positives / len(data)


def word_pieces_corpus():
    """Words of one to three pieces (``w{k}`` then ``##x``/``##y``)."""
    rng = np.random.RandomState(0)
    docs = []
    for _ in range(12):
        doc = []
        for _ in range(6):
            words = []
            for _ in range(rng.randint(5, 12)):
                words.append(f'w{rng.randint(40)}')
                words.extend(['##x', '##y'][:rng.randint(0, 3)])
            doc.append(' '.join(words))
        docs.append(doc)
    vocab = WordVocab([f'w{k}' for k in range(40)] + ['##x', '##y'])
    return docs, vocab


def split_words(ids, positions, vocab):
    """Masked words of which only some pieces are masked."""
    chosen, split, word = set(positions.tolist()), 0, []
    tokens = [vocab.idx_to_token[int(i)] if int(i) >= 5 else '[S]' for i in ids]
    for position in range(1, len(ids) + 1):
        token = tokens[position] if position < len(ids) else '[S]'
        if position < len(ids) and token.startswith('##') and word:
            word.append(position)
            continue
        if word and 0 < len(chosen.intersection(word)) < len(word):
            split += 1
        word = [position]
    return split


def test_whole_word_masking_never_splits_a_word():
    docs, vocab = word_pieces_corpus()
    whole = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=48, max_predictions=10,
                            whole_word_masking=True, seed=0)
    pieces = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=48, max_predictions=10,
                             seed=0)
    masked = split_in_pieces = 0
    for epoch in range(3):
        for index in range(len(whole)):
            first, second, _ = whole.instances[index]
            original = np.concatenate([[vocab.cls_id], first, [vocab.sep_id], second,
                                       [vocab.sep_id]])
            _, _, positions, targets, _ = whole.example(index, epoch)
            assert split_words(original, positions, vocab) == 0
            assert np.array_equal(targets, original[positions])
            assert len(positions) <= 10
            masked += len(positions)
            _, _, positions, _, _ = pieces.example(index, epoch)
            split_in_pieces += split_words(original, positions, vocab)
    assert masked > 0
    assert split_in_pieces > 0  # the check sees splits where they happen


def prepared(tmp_path, docs, vocab, name='shards', **options):
    corpus = write_txt(tmp_path / 'corpus.txt', docs)
    options = {'max_len': 32, 'seed': 4, 'examples_per_shard': 16, 'documents_per_chunk': 8,
               'heldout_every': 0, 'progress': False, **options}
    manifest = prepare_shards(corpus, str(tmp_path / name), whitespace_tokenizer, vocab,
                              **options)
    return str(tmp_path / name), manifest


def shard_instances(directory, manifest, split, vocab):
    out = []
    for record in manifest['shards'][split]:
        shard = Shard(directory, record, len(vocab))
        out.extend(shard.instance(i) for i in range(len(shard)))
    return out


def same_instances(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) and x[2] == y[2]
        for x, y in zip(a, b))


def test_shards_round_trip_the_in_memory_instances(tmp_path):
    docs, vocab = labelled_corpus(30)
    directory, manifest = prepared(tmp_path, docs, vocab)
    memory = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=32, seed=4,
                             documents_per_chunk=8)
    assert read_manifest(directory) == manifest
    sizes = [r['examples'] for r in manifest['shards']['train']]
    assert sizes[:-1] == [16] * (len(sizes) - 1) and 0 < sizes[-1] <= 16
    assert sum(sizes) == len(memory) == manifest['counts']['train_examples']
    assert manifest['counts']['documents'] == 30
    assert manifest['counts']['tokens'] == sum(len(s.split()) for d in docs for s in d)
    assert manifest['dtype'] == 'uint16'
    assert same_instances(shard_instances(directory, manifest, 'train', vocab),
                          memory.instances)


def example_key(example):
    ids, segments, positions, targets, label = example
    return b''.join(np.asarray(x, np.int64).tobytes() + b'|' for x in
                    (ids, segments, positions, targets, [label]))


def test_a_streaming_epoch_is_the_in_memory_epoch_as_a_multiset(tmp_path):
    docs, vocab = labelled_corpus(30)
    directory, _ = prepared(tmp_path, docs, vocab)
    memory = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=32, seed=4,
                             documents_per_chunk=8, max_predictions=5)
    streamed = ShardedPretrainingData(directory, vocab, seed=4, shuffle_buffer=10,
                                      max_predictions=5)
    for epoch in (0, 1):
        expected = sorted(example_key(e) for e in memory.examples(epoch))
        got = [example_key(e) for e in streamed.examples(epoch)]
        assert sorted(got) == expected
        assert got != sorted(got)  # shuffled
        halves = [example_key(e) for rank in (0, 1)
                  for e in streamed.examples(epoch, num_shards=2, shard_index=rank)]
        assert sorted(halves) == expected  # two workers: disjoint, and all of it
    # masking is dynamic: another epoch, other masks
    assert sorted(example_key(e) for e in streamed.examples(0)) != \
        sorted(example_key(e) for e in streamed.examples(1))


def test_two_workers_read_disjoint_shards(tmp_path, monkeypatch):
    docs, vocab = labelled_corpus(40)
    directory, manifest = prepared(tmp_path, docs, vocab, examples_per_shard=10)
    opened = {0: [], 1: []}
    reader = [None]

    class Recorded(Shard):
        def __init__(self, directory, record, vocab_size, **options):
            opened[reader[0]].append(record['name'])
            super().__init__(directory, record, vocab_size, **options)
    monkeypatch.setattr(stream_module, 'Shard', Recorded)
    counts = []
    for rank in (0, 1):
        reader[0] = rank
        data = ShardedPretrainingData(directory, vocab, seed=0, shuffle_buffer=4)
        counts.append(data.batches_per_epoch(4, num_shards=2))
        for epoch in (0, 1):
            batches = list(data.epoch_batches(4, epoch, num_shards=2, shard_index=rank))
            assert len(batches) == counts[-1]
    names = [r['name'] for r in manifest['shards']['train']]
    assert len(names) >= 4
    assert set(opened[0]).isdisjoint(opened[1])
    assert set(opened[0]) | set(opened[1]) == set(names)
    assert set(opened[0]) == set(names[0::2])
    assert counts[0] == counts[1]
    too_many = len(names) + 1
    with pytest.raises(DataError, match=f'{len(names)} train shard\\(s\\) for {too_many} '
                                        f'workers; prepare the data with a smaller '
                                        f'--examples-per-shard'):
        ShardedPretrainingData(directory, vocab).batches_per_epoch(4, num_shards=too_many)


def test_a_resumed_stream_continues_the_epoch_exactly(tmp_path):
    docs, vocab = labelled_corpus(30)
    directory, _ = prepared(tmp_path, docs, vocab)
    data = ShardedPretrainingData(directory, vocab, seed=1, shuffle_buffer=7)
    whole = list(data.epoch_batches(3, 2))
    later = list(ShardedPretrainingData(directory, vocab, seed=1, shuffle_buffer=7)
                 .epoch_batches(3, 2, start=5))
    assert len(later) == len(whole) - 5
    for x, y in zip(whole[5:], later):
        for u, v in zip(x, y):
            assert np.array_equal(u.asnumpy(), v.asnumpy())


def digests(directory):
    return {name: hashlib.sha256(open(os.path.join(directory, name), 'rb').read()).hexdigest()
            for name in sorted(os.listdir(directory)) if not name.startswith('.')}


def test_preparation_resumes_after_a_crash_and_does_not_depend_on_workers(tmp_path):
    docs, vocab = labelled_corpus(60)
    options = dict(heldout_every=3, heldout_max=25)
    reference, manifest = prepared(tmp_path, docs, vocab, 'reference', **options)
    assert manifest['counts']['heldout_examples'] == 25
    assert len(manifest['shards']['heldout']) == 2
    commits = []

    class Killed(Exception):
        pass

    def crash(name, path):
        if name == 'prepare.commit':
            commits.append(path)
            if len(commits) == 3:
                raise Killed()
    gluonbert._io._boundary_hook = crash
    try:
        with pytest.raises(Killed):
            prepared(tmp_path, docs, vocab, 'crashed', **options)
    finally:
        gluonbert._io._boundary_hook = None
    crashed = str(tmp_path / 'crashed')
    assert 'progress.json' in os.listdir(crashed) and 'manifest.json' not in os.listdir(crashed)
    with pytest.raises(DataError, match='did not finish'):
        ShardedPretrainingData(crashed, vocab)
    # the held-out instances not in a shard yet are part of the commit: without them, no resume
    damaged = tmp_path / 'damaged'
    shutil.copytree(crashed, damaged, ignore=shutil.ignore_patterns('.lock'))
    (damaged / 'heldout-pending.ids.npy').unlink()
    with pytest.raises(DataError, match=r'heldout-pending.ids.npy: shard file missing'):
        prepare_shards(str(tmp_path / 'corpus.txt'), str(damaged), whitespace_tokenizer, vocab,
                       max_len=32, seed=4, examples_per_shard=16, documents_per_chunk=8,
                       progress=False, **options)
    kept = {k: v for k, v in digests(crashed).items() if k.startswith('train-')}
    assert kept  # the shards written before the crash are kept, not written again
    mtimes = {k: os.stat(os.path.join(crashed, k)).st_mtime_ns for k in kept}
    _, resumed = prepared(tmp_path, docs, vocab, 'crashed', **options)
    assert {k: os.stat(os.path.join(crashed, k)).st_mtime_ns for k in kept} == mtimes
    assert resumed['shards'] == manifest['shards']
    assert resumed['counts'] == manifest['counts']
    assert digests(crashed) == {k: v for k, v in digests(reference).items()}
    _, parallel = prepared(tmp_path, docs, vocab, 'parallel', workers=2, **options)
    assert parallel['shards'] == manifest['shards']


def test_preparing_again_returns_the_manifest_or_refuses_other_settings(tmp_path):
    docs, vocab = labelled_corpus(20)
    directory, manifest = prepared(tmp_path, docs, vocab)
    before = digests(directory)
    assert prepared(tmp_path, docs, vocab)[1] == manifest
    assert digests(directory) == before
    with pytest.raises(UsageError, match=r'holds shards of another preparation \(settings '
                                         r'differ\); pass --overwrite'):
        prepared(tmp_path, docs, vocab, max_len=24)
    _, other = prepared(tmp_path, docs, vocab, max_len=24, overwrite=True)
    assert other['settings']['max_len'] == 24


def test_damaged_shards_and_manifests_are_refused(tmp_path):
    docs, vocab = labelled_corpus(20)
    directory, manifest = prepared(tmp_path, docs, vocab)
    ids_path, index_path = shard_paths(directory, manifest['shards']['train'][1]['name'])
    data = ShardedPretrainingData(directory, vocab)
    blob = bytearray(open(ids_path, 'rb').read())
    blob[-1] ^= 1
    open(ids_path, 'wb').write(bytes(blob))
    with pytest.raises(DataError, match='does not match its sha256'):
        list(data.examples(0))
    other = WordVocab(['only', 'these'])
    with pytest.raises(DataError, match='prepared with another vocabulary'):
        ShardedPretrainingData(directory, other)
    manifest_path = os.path.join(directory, 'manifest.json')
    saved = open(manifest_path).read()
    open(manifest_path, 'w').write(saved.replace('"max_len": 32', '"max_len": "32"'))
    with pytest.raises(DataError, match=r'damaged shard manifest \(settings.max_len must be an '
                                        r'integer, got "32"\)'):
        ShardedPretrainingData(directory, vocab)
    first = manifest['shards']['train'][0]['name']
    open(manifest_path, 'w').write(saved.replace(f'"name": "{first}"',
                                                 '"name": "../../etc/passwd"'))
    with pytest.raises(DataError, match=r"shards.train\[0\].name must be one of 'train-00000', "
                                        r'got "../../etc/passwd"'):
        ShardedPretrainingData(directory, vocab)
    open(manifest_path, 'w').write('{"format": "gluonbert-pretraining-shards"')
    with pytest.raises(DataError, match='damaged shard manifest'):
        ShardedPretrainingData(directory, vocab)
    with pytest.raises(DataError, match='not a directory of prepared shards'):
        ShardedPretrainingData(str(tmp_path), vocab)


def test_a_shard_that_lies_about_its_structure_is_refused(tmp_path):
    docs, vocab = labelled_corpus(20)
    directory, manifest = prepared(tmp_path, docs, vocab)
    record = manifest['shards']['train'][0]
    ids_path, index_path = shard_paths(directory, record['name'])
    index = np.load(index_path)
    index[0, 3] = 7  # an NSP label that is neither 0 nor 1
    np.save(index_path, index)
    with pytest.raises(DataError, match='inconsistent shard index'):
        Shard(directory, record, len(vocab), verified=True)
    np.save(index_path, index[:, :3])
    with pytest.raises(DataError, match='not a shard of 16 examples'):
        Shard(directory, record, len(vocab), verified=True)
    with pytest.raises(DataError, match='outside the vocabulary'):
        Shard(directory, manifest['shards']['train'][1], 10, verified=True)


def test_corpus_input_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / 'bad.txt'
    bad.write_bytes(b'Fine line.\nAnother.\n\nBroken \xff here.\n')
    with pytest.raises(DataError, match=r'bad.txt:4: not valid UTF-8'):
        list(iter_documents([str(bad)]))
    jsonl = tmp_path / 'docs.jsonl'
    jsonl.write_text('{"text": "One. Two."}\n[1, 2]\n', encoding='utf-8')
    with pytest.raises(DataError, match=r'docs.jsonl:2: expected a JSON object, got list'):
        list(iter_documents([str(jsonl)]))
    csv_path = tmp_path / 'docs.csv'
    csv_path.write_text('title,body\n"A","Text here. More text."\n', encoding='utf-8')
    with pytest.raises(DataError, match=r"docs.csv:1: no 'text' column; columns: title, body"):
        list(iter_documents([str(csv_path)]))
    assert list(iter_documents([str(csv_path)], text_column='body')) == [
        ['Text here.', 'More text.']]
    long_text = 'Word ' * 60_000 + 'end.'  # 300 KB: over the csv module's default limit
    semicolons = tmp_path / 'excel.csv'  # Excel where the decimal mark is a comma
    semicolons.write_text(f'id;text\r\n1;"One, here. Two."\r\n2;"{long_text}"\r\n',
                          encoding='utf-8-sig')
    assert list(iter_documents([str(semicolons)])) == [['One, here.', 'Two.'], [long_text]]
    folder = tmp_path / 'folder'
    folder.mkdir()
    for name, text in (('b.txt', 'Second file.\n'), ('a.txt', 'First file.\n'),
                       ('.hidden.txt', 'Never read.\n')):
        (folder / name).write_text(text, encoding='utf-8')
    assert [os.path.basename(p) for p in expand_inputs([str(folder)])] == ['a.txt', 'b.txt']
    with pytest.raises(DataError, match=r'folder: cannot read it \(Is a directory\)'):
        list(iter_documents([str(folder)]))  # (expand_inputs turns folders into files)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='the folder .*empty holds no corpus files'):
        expand_inputs([str(tmp_path / 'empty')])
    (tmp_path / 'link.txt').symlink_to(tmp_path / 'gone.txt')
    with pytest.raises(DataError, match='link.txt is a broken link'):
        expand_inputs([str(tmp_path / 'link.txt')])
    utf16 = tmp_path / 'utf16.txt'
    utf16.write_bytes('One sentence.\nTwo.\n'.encode('utf-16'))
    with pytest.raises(DataError, match='utf16.txt:1: not valid UTF-8 .*looks like UTF-16'):
        list(iter_documents([str(utf16)]))
    docs, vocab = labelled_corpus(4)
    with pytest.raises(DataError, match='no corpus file matches .*nothing-\\*.txt'):
        prepare_shards(str(tmp_path / 'nothing-*.txt'), str(tmp_path / 'out'),
                       whitespace_tokenizer, vocab, progress=False)
    one = tmp_path / 'one.txt'
    one.write_text('d0s0p0 d0s0p1\nd0s1p0\n', encoding='utf-8')
    with pytest.raises(DataError, match='no training examples: pre-training needs at least 2 '
                                        'documents'):
        prepare_shards(str(one), str(tmp_path / 'one'), whitespace_tokenizer, vocab,
                       progress=False)


def test_masker_statistics():
    docs, vocab = labelled_corpus(60, sentences=(10, 20))
    data = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=64, max_predictions=20,
                           seed=3)
    masker = Masker(vocab, max_predictions=20)
    selected = masked = kept = 0
    rng = np.random.default_rng(0)
    for first, second, label in data.instances * 3:
        ids, _, positions, targets, _ = masker(first, second, label, rng)
        selected += len(positions)
        masked += int((ids[positions] == vocab.mask_id).sum())
        kept += int((ids[positions] == targets).sum())
    assert abs(masked / selected - 0.8) <= 0.02
    assert abs(kept / selected - 0.1) <= 0.02
