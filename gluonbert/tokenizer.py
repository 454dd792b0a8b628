"""BERT WordPiece vocabulary and tokenizer (pure Python, no torch or Rust needed).

The tokenizer reproduces the reference algorithm (Google BERT's ``BasicTokenizer`` +
``WordpieceTokenizer``, as in Hugging Face's ``BertTokenizer``): clean control characters,
space out CJK characters, lower-case and strip accents (uncased models), split on
punctuation, then greedy longest-match-first WordPiece with ``##`` continuations.
"""
import numbers
import re
import unicodedata

from .errors import ModelError

__all__ = ['Vocab', 'BERTTokenizer']

SPECIAL_TOKENS = dict(unknown_token='[UNK]', padding_token='[PAD]', cls_token='[CLS]',
                      sep_token='[SEP]', mask_token='[MASK]')


class Vocab:
    """A WordPiece vocabulary whose ids are positions in the token list (vocab.txt order).

    GluonNLP's ``BERTVocab`` built from a counter re-orders ids (special tokens first), which
    silently breaks pretrained embeddings; this class never re-orders.

    Parameters
    ----------
    tokens : sequence of str
        Tokens in id order.
    unknown_token, padding_token, cls_token, sep_token, mask_token : str
        Special tokens; each must be in ``tokens``.
    """

    def __init__(self, tokens, *, unknown_token='[UNK]', padding_token='[PAD]',
                 cls_token='[CLS]', sep_token='[SEP]', mask_token='[MASK]'):
        self.idx_to_token = list(tokens)
        self.token_to_idx = {}
        for index, token in enumerate(self.idx_to_token):
            if not isinstance(token, str):
                raise TypeError(f'vocabulary tokens must be strings, got {token!r}')
            if token in self.token_to_idx:
                raise ValueError(f'duplicate token {token!r} at ids '
                                 f'{self.token_to_idx[token]} and {index}')
            self.token_to_idx[token] = index
        self.unknown_token, self.padding_token = unknown_token, padding_token
        self.cls_token, self.sep_token, self.mask_token = cls_token, sep_token, mask_token
        missing = [t for t in self.special_tokens if t not in self.token_to_idx]
        if missing:
            raise ValueError(f'special token(s) {", ".join(missing)} missing from the vocabulary')
        self._unk_id = self.token_to_idx[unknown_token]

    @classmethod
    def from_file(cls, path, **special_tokens):
        """Read ``vocab.txt``: one token per line, id = line number (0-based).

        The file must be UTF-8; a leading byte order mark (an encoding artefact some
        editors write) is dropped, so token 0 is what follows it. A final newline ends the
        last line. Lines end at ``\\n`` only (a ``\\r`` before it is dropped), so a token may
        hold any other character.

        Raises
        ------
        ModelError
            One line naming the file: missing, empty, not UTF-8 (the line and byte), an
            empty line, a token on two lines (both line numbers), a special token missing.
        """
        try:
            with open(path, 'rb') as f:
                raw = f.read()
        except FileNotFoundError:
            raise ModelError(f'{path} is missing') from None
        if raw.startswith(b'\xef\xbb\xbf'):
            raw = raw[3:]
        try:
            text = raw.decode('utf-8')
        except UnicodeDecodeError as err:
            line = raw.count(b'\n', 0, err.start) + 1
            raise ModelError(f'{path}: damaged vocabulary (not UTF-8 text: line {line}, byte '
                             f'{err.start})') from None
        if not text:
            raise ModelError(f'{path}: damaged vocabulary (the file is empty)')
        tokens = [line[:-1] if line.endswith('\r') else line for line in text.split('\n')]
        if tokens[-1] == '':
            tokens.pop()  # the newline that ends the last line
        first_line = {}
        for number, token in enumerate(tokens, 1):
            if token == '':
                raise ModelError(f'{path}: damaged vocabulary (line {number} is empty)')
            if token in first_line:
                raise ModelError(f'{path}: damaged vocabulary (the token {token!r} is on '
                                 f'lines {first_line[token]} and {number})')
            first_line[token] = number
        names = {**SPECIAL_TOKENS, **special_tokens}
        missing = [t for t in names.values() if t not in first_line]
        if missing:
            raise ModelError(f'{path}: damaged vocabulary (no line holds the special '
                             f'token(s) {", ".join(missing)})')
        return cls(tokens, **special_tokens)

    @classmethod
    def from_gluonnlp(cls, nlp_vocab):
        """Copy a ``gluonnlp.vocab.BERTVocab`` keeping its ids exactly."""
        return cls(nlp_vocab.idx_to_token, unknown_token=nlp_vocab.unknown_token,
                   padding_token=nlp_vocab.padding_token, cls_token=nlp_vocab.cls_token,
                   sep_token=nlp_vocab.sep_token, mask_token=nlp_vocab.mask_token)

    def save(self, path):
        """Write ``vocab.txt`` atomically."""
        from ._io import write_text
        write_text(path, '\n'.join(self.idx_to_token) + '\n')

    @property
    def special_tokens(self):
        return [self.unknown_token, self.padding_token, self.cls_token, self.sep_token,
                self.mask_token]

    unk_id = property(lambda self: self._unk_id)
    pad_id = property(lambda self: self.token_to_idx[self.padding_token])
    cls_id = property(lambda self: self.token_to_idx[self.cls_token])
    sep_id = property(lambda self: self.token_to_idx[self.sep_token])
    mask_id = property(lambda self: self.token_to_idx[self.mask_token])

    def __len__(self):
        return len(self.idx_to_token)

    def __contains__(self, token):
        return token in self.token_to_idx

    def __iter__(self):
        return iter(self.idx_to_token)

    def __getitem__(self, tokens):
        """Id of a token, or ids of a list of tokens; unknown tokens map to the unk id."""
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self._unk_id)
        lookup, unk = self.token_to_idx.get, self._unk_id
        return [lookup(t, unk) for t in tokens]

    to_indices = __getitem__

    def to_tokens(self, ids):
        """Tokens of an id or a list of ids."""
        single = isinstance(ids, numbers.Integral)  # numpy integers too
        out = []
        for index in ([ids] if single else ids):
            index = int(index)
            if not 0 <= index < len(self.idx_to_token):
                raise ValueError(f'token id {index} is out of range [0, {len(self)})')
            out.append(self.idx_to_token[index])
        return out[0] if single else out

    def __repr__(self):
        return (f'Vocab(size={len(self)}, unk={self.unknown_token!r}, '
                f'pad={self.padding_token!r} id {self.pad_id})')


# ------------------------------------------------------------------ character classes
def _is_whitespace(char):
    return char in ' \t\n\r' or unicodedata.category(char) == 'Zs'


def _is_control(char):
    if char in '\t\n\r':
        return False
    return unicodedata.category(char).startswith('C')


def _is_punctuation(char):
    cp = ord(char)
    # All non-letter/number ASCII is punctuation for BERT (e.g. '$', '^', '`').
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith('P')


_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(cp):
    return any(low <= cp <= high for low, high in _CJK_RANGES)


# ASCII fast path: control characters vanish, whitespace becomes ' '.
_ASCII_CLEAN = {cp: None for cp in range(32) if chr(cp) not in '\t\n\r'}
_ASCII_CLEAN.update({ord('\t'): ' ', ord('\n'): ' ', ord('\r'): ' ', 0x7F: None})
_ASCII_WORDS = re.compile(r'[A-Za-z0-9]+|[^A-Za-z0-9\s]')


class BERTTokenizer:
    """BERT basic tokenization followed by WordPiece.

    Parameters
    ----------
    vocab : Vocab
    lower : bool, default True
        Lower-case the text (uncased models).
    strip_accents : bool or None, default None
        None strips accents exactly when ``lower`` is True (the reference behaviour).
    max_input_chars_per_word : int, default 100
        Longer words become the unknown token, as in the reference.
    tokenize_chinese_chars : bool, default True

    ``tokenizer(text)`` returns WordPiece tokens; ``tokenizer.encode(text)`` their ids.
    """

    def __init__(self, vocab, *, lower=True, strip_accents=None, max_input_chars_per_word=100,
                 tokenize_chinese_chars=True):
        self.vocab = vocab
        self.lower = bool(lower)
        self.strip_accents = strip_accents
        self.max_input_chars_per_word = max_input_chars_per_word
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self._never_split = set(vocab.special_tokens)
        self._strip = self.lower if strip_accents is None else bool(strip_accents)
        self._pieces_cache = {}

    # ------------------------------------------------------------------ public API
    def __call__(self, text):
        if not isinstance(text, str):
            raise TypeError(f'tokenizer input must be a str, got {type(text).__name__}')
        pieces = []
        cache = self._pieces_cache
        for word in self.basic_tokenize(text):
            found = cache.get(word)
            if found is None:
                found = self._wordpiece(word)
                if len(cache) < 500_000:
                    cache[word] = found
            pieces.extend(found)
        return pieces

    tokenize = __call__

    def encode(self, text):
        """WordPiece ids of ``text`` (no [CLS]/[SEP])."""
        return self.vocab[self(text)]

    def basic_tokenize(self, text):
        """Words and punctuation after cleaning, lower-casing and accent stripping."""
        if text.isascii() and '[' not in text:
            # same result as the general path for ASCII, without per-character lookups
            text = text.translate(_ASCII_CLEAN)
            if self.lower:
                text = text.lower()
            return _ASCII_WORDS.findall(text)
        return self._basic_tokenize_general(text)

    # ---------------------------------------------------------------- internals
    def _basic_tokenize_general(self, text):
        cleaned = []
        for char in text:
            cp = ord(char)
            if cp == 0 or cp == 0xFFFD or _is_control(char):
                continue
            if _is_whitespace(char):
                cleaned.append(' ')
            elif self.tokenize_chinese_chars and _is_cjk(cp):
                cleaned.extend((' ', char, ' '))
            else:
                cleaned.append(char)
        # NFC first so that one character written two ways is one character
        text = unicodedata.normalize('NFC', ''.join(cleaned))
        words = []
        for token in text.split():
            if token not in self._never_split:
                if self.lower:
                    token = token.lower()
                if self._strip:
                    token = ''.join(c for c in unicodedata.normalize('NFD', token)
                                    if unicodedata.category(c) != 'Mn')
                words.extend(self._split_on_punctuation(token))
            else:
                words.append(token)
        return [w for w in ' '.join(words).split()]

    @staticmethod
    def _split_on_punctuation(token):
        out, current = [], []
        for char in token:
            if _is_punctuation(char):
                if current:
                    out.append(''.join(current))
                    current = []
                out.append(char)
            else:
                current.append(char)
        if current:
            out.append(''.join(current))
        return out

    def _wordpiece(self, word):
        unk = self.vocab.unknown_token
        if len(word) > self.max_input_chars_per_word:
            return [unk]
        vocab = self.vocab.token_to_idx
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else '##' + word[start:end]
                if piece in vocab:
                    break
                end -= 1
            else:
                return [unk]
            pieces.append(piece)
            start = end
        return pieces

    def __repr__(self):
        return (f'BERTTokenizer(vocab={len(self.vocab)} tokens, lower={self.lower}, '
                f'strip_accents={self.strip_accents})')
