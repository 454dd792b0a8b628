"""The backends of gluonbert-predict, measured: texts per second of each (backend,
precision) this CPU runs (gluonbert.backends.candidates) on ``--limit`` bundled reviews
(train file first), through gluonbert.predict.predict in batches of ``--batch-size``
(sorted by length, as gluonbert-predict does), one warm-up pass each, then ``--repeats``
rounds of one timed pass of every candidate (the fastest pass counts); labels and
probabilities against gluonbert's float32 model on the same texts; and what
``--backend auto`` picks here (its own short calibration)::

    cp -r runs/finetune/model /tmp/bench-model   # the cache is written beside the model
    .venv/bin/python benchmarks/bench_backends.py --model-dir /tmp/bench-model
"""
import argparse
import time

import gluonbert  # noqa: F401  (first: it sets MXNet's OpenMP thread count)
import numpy as np

from gluonbert import backends
from gluonbert._env import default_num_threads
from gluonbert.backends.choice import build
from gluonbert.hardware import cpu_info
from gluonbert.model_dir import load_classifier
from gluonbert.data import load_sample_reviews
from gluonbert.predict import predict

def review_texts(limit):
    """The first ``limit`` bundled reviews, the train file first."""
    texts = [text for split in ('train', 'test') for text in load_sample_reviews(split).texts]
    return texts[:limit]


def probabilities(predictor, vocab, tokenizer, texts, batch_size):
    answers = predict(predictor, None, vocab, tokenizer, texts, batch_size=batch_size)
    return np.array([[p.probabilities[n] for n in sorted(p.probabilities)] for p in answers])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model-dir', required=True)
    parser.add_argument('--limit', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    texts = review_texts(args.limit)
    net, vocab, tokenizer = load_classifier(args.model_dir)
    net.hybridize(static_alloc=True)
    reference = probabilities(net, vocab, tokenizer, texts, args.batch_size)
    print(f'CPU: {cpu_info().describe()}; {default_num_threads()} threads; '
          f'{len(texts)} texts, batch {args.batch_size}')
    print('| backend | precision | texts/s | labels as float32 | max abs dp |')
    print('|---|---|---:|---:|---:|')
    options = backends.candidates(backends.available_backends())
    predictors, answers = {}, {}
    for option in options:
        predictors[option] = build(option, net, vocab, tokenizer, args.model_dir)
        answers[option] = probabilities(predictors[option], vocab, tokenizer, texts,
                                        args.batch_size)  # and the warm-up
    best = dict.fromkeys(options, float('inf'))
    for _ in range(args.repeats):  # rounds: other work on the machine slows all alike
        for option in options:
            start = time.perf_counter()
            probabilities(predictors[option], vocab, tokenizer, texts, args.batch_size)
            best[option] = min(best[option], time.perf_counter() - start)
    for option in options:
        got = answers[option]
        agree = float((got.argmax(1) == reference.argmax(1)).mean())
        print(f'| {option[0]} | {option[1]} | {len(texts) / best[option]:.1f} | {agree:.1%} | '
              f'{np.abs(got - reference).max():.2g} |', flush=True)
    start = time.perf_counter()
    _, _, _, said = backends.load_backend(args.model_dir, 'auto')
    print(f'--backend auto: {said} [{time.perf_counter() - start:.1f} s]')


if __name__ == '__main__':
    main()
