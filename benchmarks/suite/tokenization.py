"""Tokenization texts/s on long reviews: gluonbert's BERTTokenizer, GluonNLP's, and Hugging
Face's fast (Rust) tokenizer."""
import os

from .harness import Variant, measure, setup_remote
from .inputs import minilm_dir


def long_texts(count, words_per_text):
    """The bundled reviews, each repeated to at least ``words_per_text`` words."""
    from gluonbert.data import load_sample_reviews
    reviews = [t for split in ('train', 'test') for t, _ in load_sample_reviews(split)]
    texts = []
    for index in range(count):
        base = reviews[index % len(reviews)].split()
        words = list(base)
        while len(words) < words_per_text:
            words += base
        texts.append(' '.join(words))
    return texts


def tokenization_group(settings, hf, keep):
    import collections
    import gluonnlp as nlp
    from gluonbert.pretrained import load_pretrained
    texts = long_texts(settings['token_texts'], settings['token_words'])
    _, vocab, tokenizer = load_pretrained('minilm')
    specials = set(vocab.special_tokens)
    nlp_vocab = nlp.vocab.BERTVocab(collections.Counter(
        {t: 1 for t in vocab.idx_to_token if t not in specials}))
    nlp_tokenizer = nlp.data.BERTTokenizer(nlp_vocab, lower=True)
    same = all(tokenizer(t) == nlp_tokenizer(t) for t in texts[:20])
    words = sum(len(t.split()) for t in texts) / len(texts)
    label = f'{len(texts)} texts, ~{words:.0f} words'
    variants = []

    def add(name, tokenize, note=''):
        if keep(name):
            variants.append(Variant('tokenization', f'{name} ({label})', 'texts/s', len(texts),
                                    run=lambda iters: [tokenize(t) for _ in range(iters)
                                                       for t in texts], note=note))
    add('gluonbert BERTTokenizer', tokenizer,
        'same tokens as GluonNLP' if same else 'tokens DIFFER from GluonNLP')
    add('GluonNLP BERTTokenizer', nlp_tokenizer)
    name = 'HF BertTokenizerFast (batched, Rust)'
    if keep(name):
        variant = Variant('tokenization', f'{name} ({label})', 'texts/s', len(texts))
        directory = minilm_dir()
        if hf.worker is None:
            variant.error = hf.missing
        elif directory is None:
            variant.error = 'no vocab.txt (the MiniLM wheel is not installed)'
        else:
            setup_remote(hf.worker, variant, {'kind': 'tokenization', 'texts': texts,
                                              'vocab': os.path.join(directory, 'vocab.txt')})
        variants.append(variant)
    measure(variants, settings['token_repeats'], 1)
    return variants
