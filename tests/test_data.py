"""Data pipeline: readers and their errors, the bundled sample, the BERT transform, batching."""
import os
import time

import numpy as np
import pytest

from gluonbert import data
from gluonbert.data import DataError, BERTTransform, BucketSampler, make_dataloader, padding_waste
from stand_ins import WordVocab, whitespace_tokenizer

WORDS = 'a b c d e f g h i j k l m n o p q r s t u v w x y z'.split()


def write(path, text, mode='w'):
    with open(path, mode) as f:
        f.write(text)
    return str(path)


# ------------------------------------------------------------------------- readers
def test_csv_tsv_jsonl_with_configurable_columns(tmp_path):
    csv_path = write(tmp_path / 'r.csv', 'review,sentiment\n"good, really",positive\nbad,0\n')
    tsv_path = write(tmp_path / 'r.tsv', 'review\tsentiment\ngood\t1\nbad\tnegative\n')
    jsonl_path = write(tmp_path / 'r.jsonl', '{"review": "good", "sentiment": "pos"}\n\n'
                                              '{"review": "bad", "sentiment": "neg"}\n')
    for path in (csv_path, tsv_path, jsonl_path):
        ds = data.read_table(path, text_column='review', label_column='sentiment')
        assert ds.labels == [1, 0]
        assert ds.label_names == ['negative', 'positive']
    assert data.read_table(csv_path, text_column='review',
                           label_column='sentiment').texts[0] == 'good, really'


def test_declared_label_set_gives_more_classes(tmp_path):
    path = write(tmp_path / 'r.csv', 'text,label\nx,meh\ny,great\nz,awful\n')
    ds = data.read_csv(path, labels=['awful', 'meh', 'great'])
    assert ds.labels == [1, 2, 0]
    assert ds.label_names == ['awful', 'meh', 'great']


@pytest.mark.parametrize('name, content, message', [
    ('missing.csv', 'body,label\nx,1\n', "missing.csv:1: no column 'text'"),
    ('label.csv', 'text,label\nx,1\ny,maybe\n', "label.csv:3: unknown label 'maybe'"),
    ('label.jsonl', '{"text": "x", "label": 1}\n{"text": "y", "label": "so-so"}\n',
     "label.jsonl:2: unknown label 'so-so'"),
    ('field.jsonl', '{"text": "x", "label": 1}\n{"label": 0}\n', "field.jsonl:2: no field 'text'"),
    ('json.jsonl', '{"text": "x", "label": 1}\n{oops\n', 'json.jsonl:2: invalid JSON'),
    ('empty.csv', 'text,label\n', 'empty.csv: the dataset is empty'),
    ('type.txt', 'whatever', "unsupported file type '.txt'"),
])
def test_bad_input_names_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=message.replace('(', r'\(').replace(')', r'\)')):
        data.read_table(path)


def test_undecodable_bytes_name_the_line(tmp_path):
    path = write(tmp_path / 'bytes.csv', b'text,label\nfine,1\nbad \xff\xfe byte,0\n', mode='wb')
    with pytest.raises(DataError, match=r'bytes\.csv:3: invalid UTF-8'):
        data.read_csv(path)


def test_missing_file_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match='no such file'):
        data.read_table(str(tmp_path / 'nope.csv'))
    with pytest.raises(DataError, match="unknown dataset 'reviewz'"):
        data.load_dataset('reviewz')


def make_aclimdb(root):
    reviews = {'train': {'pos': ['A joy.', 'Loved it.'], 'neg': ['Awful.', 'Dull.', 'Bad.']},
               'test': {'pos': ['Great fun.'], 'neg': ['Boring.']}}
    for split, folders in reviews.items():
        for folder, texts in folders.items():
            os.makedirs(root / split / folder)
            for i, text in enumerate(texts):
                write(root / split / folder / f'{i}_{7 if folder == "pos" else 2}.txt', text)
    return str(root)


def test_aclimdb_directory_reader_without_network(tmp_path):
    root = make_aclimdb(tmp_path / 'aclImdb')
    train = data.load_dataset(root, 'train')
    assert len(train) == 5 and sorted(train.labels) == [0, 0, 0, 1, 1]
    assert dict(zip(train.texts, train.labels))['Loved it.'] == 1
    test = data.read_aclimdb(root, 'test')
    assert test.texts == ['Boring.', 'Great fun.'] and test.labels == [0, 1]
    os.rename(os.path.join(root, 'test', 'neg'), os.path.join(root, 'test', 'negative'))
    with pytest.raises(DataError, match='expected the aclImdb layout'):
        data.read_aclimdb(root, 'test')


def test_load_imdb_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('GLUONBERT_OFFLINE', '1')
    start = time.time()
    with pytest.raises(DataError, match='IMDB is not cached'):
        data.load_imdb('train', root=str(tmp_path))
    assert time.time() - start < 5


# ------------------------------------------------------------------ bundled sample
def test_bundled_sample_is_balanced_disjoint_and_large_enough():
    train, test = data.load_sample_reviews('train'), data.load_sample_reviews('test')
    assert len(train) >= 300 and len(test) >= 100
    for split in (train, test):
        assert split.label_names == ['negative', 'positive']
        assert sum(split.labels) * 2 == len(split)
    assert not set(train.texts) & set(test.texts)
    assert len(set(train.texts)) == len(train)
    # written reviews, not a template: many distinct openings and lengths
    assert len({t.split()[0].lower() for t in train.texts}) > 60
    assert len({len(t.split()) for t in train.texts}) > 60


# ------------------------------------------------------------------------ transform
def test_transform_adds_cls_sep_and_segments():
    vocab = WordVocab(WORDS)
    ids, valid_length, segments = BERTTransform(whitespace_tokenizer, vocab, max_len=8)('a b c')
    assert ids.tolist() == [vocab.cls_id] + vocab[['a', 'b', 'c']] + [vocab.sep_id]
    assert valid_length == 5 and segments.tolist() == [0] * 5


def test_head_and_head_plus_tail_truncation():
    vocab = WordVocab(WORDS)
    text = ' '.join(WORDS)  # 26 tokens
    head = BERTTransform(whitespace_tokenizer, vocab, max_len=12)(text)[0]
    assert head.tolist()[1:-1] == vocab[WORDS[:10]]
    both = BERTTransform(whitespace_tokenizer, vocab, max_len=12, truncate='head+tail',
                         head_tokens=4)(text)[0]
    assert both.tolist()[1:-1] == vocab[WORDS[:4] + WORDS[-6:]]
    assert both[0] == vocab.cls_id and both[-1] == vocab.sep_id
    # BERT's default recipe: 128 head tokens + (max_len - 130) tail tokens
    long_text = ' '.join(['a'] * 200 + ['z'] * 500)
    transform = BERTTransform(whitespace_tokenizer, vocab, max_len=512, truncate='head+tail')
    ids = transform(long_text)[0]
    assert len(ids) == 512
    assert ids.tolist()[1:129] == [vocab['a']] * 128 and ids.tolist()[129:-1] == [vocab['z']] * 382
    with pytest.raises(ValueError, match='truncate'):
        BERTTransform(whitespace_tokenizer, vocab, truncate='middle')


def test_pair_transform_segments_and_budget():
    vocab = WordVocab(WORDS)
    ids, length, segments = BERTTransform(whitespace_tokenizer, vocab, max_len=9, pair=True)(
        ('a b c d e', 'f g'))
    assert length == 9 == len(ids)
    assert segments.tolist() == [0] * 6 + [1] * 3
    assert ids.tolist() == ([vocab.cls_id] + vocab[['a', 'b', 'c', 'd']] + [vocab.sep_id]
                            + vocab[['f', 'g']] + [vocab.sep_id])


def _pop_longer(first, second, max_tokens):
    """The reference loop: pop one token from the longer side (A on ties) until it fits."""
    first, second = list(first), list(second)
    while len(first) + len(second) > max_tokens:
        (first if len(first) >= len(second) else second).pop()
    return first, second


def test_truncate_pair_trims_the_longer_side_first():
    from gluonbert.data import truncate_pair
    a, b = list('abcdefg'), list('xyz')
    assert truncate_pair(a, b, 10) == (a, b)                               # fits: unchanged
    assert truncate_pair(a, b, 8) == (list('abcde'), list('xyz'))          # A alone
    assert truncate_pair(b, a, 8) == (list('xyz'), list('abcde'))          # B alone
    assert truncate_pair(a, b, 5) == (list('ab'), list('xyz'))             # A down to 2 < 3
    assert truncate_pair(a, b, 4) == (list('ab'), list('xy'))              # then in turn
    assert truncate_pair(list('abc'), list('xyz'), 5) == (list('ab'), list('xyz'))  # tie: A
    assert truncate_pair(a, b, 0) == ([], [])
    assert a == list('abcdefg') and b == list('xyz')                      # inputs unchanged
    ids = np.arange(6)
    first, second = truncate_pair(ids, ids[:2], 5)
    assert first.tolist() == [0, 1, 2] and second.tolist() == [0, 1]
    for la in range(8):
        for lb in range(8):
            for budget in range(16):
                assert truncate_pair(list(range(la)), list(range(100, 100 + lb)), budget) == \
                    _pop_longer(range(la), range(100, 100 + lb), budget), (la, lb, budget)
    with pytest.raises(ValueError, match='max_tokens'):
        truncate_pair(a, b, -1)


# ------------------------------------------------------------------------- batching
def test_batches_pad_words_with_pad_id_and_segments_with_zero():
    vocab = WordVocab(WORDS, pad_first=False)
    assert vocab.pad_id != 0
    transform = BERTTransform(whitespace_tokenizer, vocab, max_len=16, pair=True)
    pairs = [(('a b c', 'd e'), 1), (('a', 'b'), 0)]
    loader = make_dataloader(pairs, transform, batch_size=2, shuffle=False, pad_id=vocab.pad_id)
    words, valid_length, segments, labels = next(iter(loader))
    by_length = np.argsort(valid_length.asnumpy())
    short = by_length[0]
    assert sorted(valid_length.asnumpy().tolist()) == [5.0, 8.0]
    assert (words.asnumpy()[short, 5:] == vocab.pad_id).all()
    assert (segments.asnumpy()[short, 5:] == 0).all()
    assert segments.asnumpy()[short, :5].tolist() == [0, 0, 0, 1, 1]
    assert sorted(labels.asnumpy().tolist()) == [0, 1]


def test_a_pair_dataset_from_a_file_batches_with_segments_0_then_1(tmp_path):
    """--text-pair-column: [CLS] A [SEP] is segment 0, B [SEP] segment 1, padding 0."""
    vocab = WordVocab(WORDS, pad_first=False)
    path = write(tmp_path / 'pairs.tsv', 'sentence1\tsentence2\tlabel\na b c\td e\tyes\n'
                                         'a\tb\tno\nf g h i\tj\tyes\n')
    dataset = data.read_table(path, text_column='sentence1', text_pair_column='sentence2',
                              labels=['no', 'yes'])
    assert dataset.text_pairs == ['d e', 'b', 'j']
    assert dataset[0] == (('a b c', 'd e'), 1)
    assert dataset.subset([2]).text_pairs == ['j']
    transform = BERTTransform(whitespace_tokenizer, vocab, max_len=16, pair=True)
    loader = make_dataloader(dataset, transform, batch_size=3, shuffle=False, bucket=False)
    words, valid_length, segments, labels = next(iter(loader))
    assert valid_length.asnumpy().tolist() == [8, 5, 8]
    assert labels.asnumpy().tolist() == [1, 0, 1]
    cls, sep = vocab.cls_id, vocab.sep_id
    assert words.asnumpy()[1].tolist() == [cls, vocab['a'], sep, vocab['b'], sep] + \
        [vocab.pad_id] * 3
    # [CLS] A [SEP] | B [SEP] | padding
    assert segments.asnumpy().tolist() == [[0, 0, 0, 0, 0, 1, 1, 1],    # a b c | d e
                                           [0, 0, 0, 1, 1, 0, 0, 0],    # a | b | 3 pads
                                           [0, 0, 0, 0, 0, 0, 1, 1]]    # f g h i | j
    # a pair dataset with a single-text transform (or the reverse) is refused
    with pytest.raises(ValueError, match=r'holds sentence pairs: use BERTTransform\(\.\.\., '
                                         r'pair=True\)'):
        make_dataloader(dataset, BERTTransform(whitespace_tokenizer, vocab, max_len=16))
    with pytest.raises(ValueError, match=r'holds single texts: use .*pair=False'):
        make_dataloader(data.TextClassificationDataset(['a'], [0], ['x', 'y']), transform)


def test_load_dataset_reads_files_and_refuses_file_options_for_named_sets(tmp_path):
    path = write(tmp_path / 'r.jsonl', '{"q": "a", "p": "b", "label": 1}\n')
    assert data.load_dataset(path, text_column='q', text_pair_column='p')[0] == (('a', 'b'), 1)
    with pytest.raises(DataError, match=r"^text_pair_column apply to data files \(\.csv, "
                                        r"\.tsv, \.jsonl, \.parquet\), not to 'sample'$"):
        data.load_dataset('sample', text_pair_column='p')


def test_bucket_sampler_is_deterministic_and_covers_everything():
    rng = np.random.RandomState(0)
    lengths = rng.randint(5, 200, size=257)
    sampler = BucketSampler(lengths, 16, seed=3)
    first = sampler.batches()
    assert sampler.batches() == first
    assert sorted(i for b in first for i in b) == list(range(257))
    assert len(first) == len(sampler) == 17
    sampler.set_epoch(1)
    assert sampler.batches() != first
    assert BucketSampler(lengths, 16, seed=3).batches() == first


def test_bucketing_reduces_padding_waste():
    rng = np.random.RandomState(0)
    lengths = rng.randint(10, 128, size=1000)
    plain = [list(range(i, min(i + 32, 1000))) for i in range(0, 1000, 32)]
    bucketed = BucketSampler(lengths, 32, seed=0).batches()
    assert padding_waste(lengths, bucketed) < padding_waste(lengths, plain) / 3


def test_dataloader_reports_padding_waste_on_the_sample():
    from gluonbert.tokenizer import BERTTokenizer, Vocab
    from gluonbert.pretrained import _minilm_directory
    vocab = Vocab.from_file(os.path.join(_minilm_directory(), 'vocab.txt'))
    tokenizer = BERTTokenizer(vocab, lower=True)
    train = data.load_sample_reviews('train')
    loader = make_dataloader(train, BERTTransform(tokenizer, vocab, max_len=128), batch_size=32,
                             pad_id=vocab.pad_id)
    assert 0 <= loader.padding_waste < loader.padding_waste_unbucketed
    batches = list(loader)
    assert sum(b[0].shape[0] for b in batches) == len(train)
    assert max(b[0].shape[1] for b in batches) <= 128
    print(f'padding waste: bucketed {loader.padding_waste:.1%}, '
          f'unbucketed {loader.padding_waste_unbucketed:.1%}')


def test_subset_and_default_pad_id_from_the_vocabulary():
    train = data.load_sample_reviews('train')
    small = train.subset(slice(0, 10))
    assert len(small) == 10 and small.texts == train.texts[:10]
    assert small.label_names == train.label_names
    vocab = WordVocab(WORDS, pad_first=False)
    transform = BERTTransform(whitespace_tokenizer, vocab, max_len=8)
    loader = make_dataloader([('a b c', 1), ('a', 0)], transform, batch_size=2, shuffle=False)
    words = next(iter(loader))[0].asnumpy()
    assert (words[0, 3:] == vocab.pad_id).all() and vocab.pad_id != 0


def test_pad_ids_pads_rows_and_returns_valid_lengths():
    from gluonbert.data import pad_ids
    padded, valid_length = pad_ids([[5, 6, 7], [8], np.array([9, 10])], pad_id=1)
    assert padded.dtype == np.float32 and valid_length.dtype == np.float32
    assert padded.tolist() == [[5, 6, 7], [8, 1, 1], [9, 10, 1]]
    assert valid_length.tolist() == [3, 1, 2]
    padded, _ = pad_ids([[5, 6, 7], [8]], pad_id=0, round_to=4, dtype=np.int32)
    assert padded.dtype == np.int32 and padded.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    padded, valid_length = pad_ids([[1], [2, 3]], 9, length=5)
    assert padded.tolist() == [[1, 9, 9, 9, 9], [2, 3, 9, 9, 9]]
    assert valid_length.tolist() == [1, 2]
    assert pad_ids([], 0)[0].shape == (0, 0)
    with pytest.raises(ValueError, match='does not fit length 1'):
        pad_ids([[1, 2]], 0, length=1)


def test_batchify_rounds_the_length_up():
    vocab = WordVocab(WORDS, pad_first=False)
    samples = [BERTTransform(whitespace_tokenizer, vocab, max_len=16)(t) + (1,)
               for t in ('a b c', 'd')]
    words, valid_length, segments, labels = data.batchify_fn(vocab.pad_id, round_to=8)(samples)
    assert words.shape == segments.shape == (2, 8)
    assert words.asnumpy()[1].tolist() == [vocab.cls_id, vocab['d'], vocab.sep_id] + \
        [vocab.pad_id] * 5
    assert valid_length.asnumpy().tolist() == [5, 3] and labels.asnumpy().tolist() == [1, 1]
    assert segments.asnumpy().sum() == 0


def test_shard_indices_are_strided():
    assert data.shard_indices(10, 3, 1) == [1, 4, 7]
    assert data.shard_indices(10, 3, 0, even=False) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match='shard_index'):
        data.shard_indices(10, 2, 2)


# --------------------------------------------------------------------------- network
def test_reachable_is_false_offline_without_touching_the_network(monkeypatch):
    import socket
    from gluonbert import _net

    def no_network(*args, **kwargs):
        raise AssertionError('the network was probed')
    monkeypatch.setattr(socket, 'create_connection', no_network)
    monkeypatch.setattr(socket, 'getaddrinfo', no_network)
    monkeypatch.setenv('GLUONBERT_OFFLINE', '1')
    start = time.perf_counter()
    assert _net.reachable('example.com') is False
    assert _net.reachable('127.0.0.1', 80, timeout=10) is False
    assert _net.reachable_url('https://example.com/') is False
    assert time.perf_counter() - start < 0.5


def test_reachable_probes_a_local_port(monkeypatch):
    import socket
    from gluonbert import _net
    monkeypatch.delenv('GLUONBERT_OFFLINE', raising=False)
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert _net.reachable('127.0.0.1', port, timeout=2)
        assert _net.reachable_url(f'http://127.0.0.1:{port}/x', timeout=2)
    assert not _net.reachable('127.0.0.1', port, timeout=2)  # closed now: refused
