"""Text (or a text pair) to BERT inputs: ``[CLS] A [SEP] (B [SEP])`` ids and segments,
truncated to a length budget."""
import numpy as np

__all__ = ['BERTTransform', 'ClassificationTransform', 'truncate_pair']


def truncate_pair(first, second, max_tokens):
    """Trim a sentence pair to at most ``max_tokens`` tokens together, as BERT does: one
    token at a time from the end of the longer side (of ``first`` when they tie).

    Parameters
    ----------
    first, second : sequence
        Token (or id) sequences of sentences A and B.
    max_tokens : int
        Budget of the two together (the model's length less [CLS] and two [SEP]s).

    Returns
    -------
    (sequence, sequence)
        Prefixes of ``first`` and ``second`` (new objects; the inputs are not changed).
    """
    if max_tokens < 0:
        raise ValueError(f'max_tokens must be >= 0, got {max_tokens}')
    keep_a, keep_b = len(first), len(second)
    if keep_a + keep_b > max_tokens:
        # the longer side shrinks alone while it stays the longer; past that the two shrink
        # in turn, A first, ending with A = max_tokens // 2 and B the rest
        if keep_a <= keep_b and 2 * keep_a <= max_tokens:
            keep_b = max_tokens - keep_a
        elif keep_b < keep_a and 2 * keep_b <= max_tokens:
            keep_a = max_tokens - keep_b
        else:
            keep_a = max_tokens // 2
            keep_b = max_tokens - keep_a
    return first[:keep_a], second[:keep_b]


class BERTTransform:
    """Text (or a text pair) to ``(input_ids, valid_length, segments)`` without padding.

    Parameters
    ----------
    tokenizer : callable str -> list of str
    vocab : Vocab
    max_len : int, default 128
        Longest output, [CLS] and [SEP]s included.
    truncate : {'head', 'head+tail'}
        ``head`` keeps the first tokens. ``head+tail`` keeps the first ``head_tokens`` and
        the last ``max_len - 2 - head_tokens`` tokens (Sun et al. 2019: best for long
        reviews); when ``max_len - 2 <= head_tokens`` it is the same as ``head``.
    pair : bool
        Inputs are ``(text_a, text_b)``; :func:`truncate_pair` trims the longer side
        until the pair fits.
    head_tokens : int, default 128
    """

    def __init__(self, tokenizer, vocab, *, max_len=128, truncate='head', pair=False,
                 head_tokens=128):
        if truncate not in ('head', 'head+tail'):
            raise ValueError(f"truncate must be 'head' or 'head+tail', got {truncate!r}")
        minimum = 4 if pair else 3
        if not isinstance(max_len, int) or max_len < minimum:
            raise ValueError(f'max_len must be an integer >= {minimum}, got {max_len!r}')
        self.tokenizer, self.vocab = tokenizer, vocab
        self.max_len, self.truncate, self.pair = max_len, truncate, pair
        self.head_tokens = head_tokens

    def _truncate_single(self, ids):
        budget = self.max_len - 2
        if len(ids) <= budget:
            return ids
        if self.truncate == 'head+tail' and budget > self.head_tokens:
            tail = budget - self.head_tokens
            return ids[:self.head_tokens] + ids[len(ids) - tail:]
        return ids[:budget]

    def __call__(self, text):
        vocab = self.vocab
        if self.pair:
            text_a, text_b = text
            first, second = truncate_pair(vocab[self.tokenizer(text_a)],
                                          vocab[self.tokenizer(text_b)], self.max_len - 3)
            ids = [vocab.cls_id] + first + [vocab.sep_id] + second + [vocab.sep_id]
            segments = [0] * (len(first) + 2) + [1] * (len(second) + 1)
        else:
            body = self._truncate_single(vocab[self.tokenizer(text)])
            ids = [vocab.cls_id] + body + [vocab.sep_id]
            segments = [0] * len(ids)
        return (np.asarray(ids, dtype=np.int32), len(ids), np.asarray(segments, dtype=np.int32))


class ClassificationTransform:
    """``(text, label)`` to ``(input_ids, valid_length, segments, label)``."""

    def __init__(self, bert_transform):
        self.bert_transform = bert_transform

    def __call__(self, text, label):
        input_ids, valid_length, segments = self.bert_transform(text)
        return input_ids, valid_length, segments, label
