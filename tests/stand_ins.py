"""Minimal vocabulary and tokenizer with gluonbert's interface, for tests on synthetic text."""


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
