"""Accuracy of a fine-tuned classifier through each inference fast path, and how often its
labels agree with float32's.

Loads a model saved by ``gluonbert-finetune`` and reports, on the bundled test reviews or
``--data`` (any file ``gluonbert-finetune --test`` reads), the accuracy as trained and after
``gluonbert.fast.prepare`` in float32, bfloat16 (where native) and int8 (calibrated as
``gluonbert-predict --quantize int8`` does, on the model's own training texts; also with the
feed-forward output projections kept in float32), and the share of texts whose label equals
the float32 path's. ``--fast`` needs at least 99% there (docs/cpus.md):

    .venv/bin/gluonbert-finetune --output-dir runs/finetune
    bash scripts/real_reviews.sh          # 10,568 real movie-review snippets, labelled
    .venv/bin/python benchmarks/accuracy_fast_paths.py --model-dir runs/finetune/model \\
        --data runs/real/movie_snippets.tsv --limit 2000
"""
import argparse
import time

import gluonbert
import numpy as np

from gluonbert import fast
from gluonbert.hardware import bf16_support, cpu_info
from gluonbert.data import BERTTransform, load_dataset, make_dataloader
from gluonbert.sysinfo import fastest_path


def _predictions(model, loader):
    """(predicted labels, true labels, seconds) over ``loader``."""
    predicted, labels = [], []
    start = time.perf_counter()
    for words, valid_length, segments, label in loader:
        predicted.append(model(words, segments, valid_length).asnumpy().argmax(1))
        labels.append(label.asnumpy().astype('int64'))
    return np.concatenate(predicted), np.concatenate(labels), time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--model-dir', required=True)
    parser.add_argument('--data', default='sample',
                        help="'sample' (the bundled test reviews) or a data file")
    parser.add_argument('--limit', type=int, default=None, help='the first N examples only')
    parser.add_argument('--max-len', type=int, default=128)
    args = parser.parse_args(argv)
    net, vocab, tokenizer = gluonbert.load_pretrained(args.model_dir)
    dataset = (load_dataset('sample', 'test') if args.data == 'sample' else
               load_dataset(args.data, labels=net.label_names))
    examples = [dataset[i] for i in range(len(dataset) if args.limit is None else
                                              min(args.limit, len(dataset)))]
    loader = make_dataloader(examples, BERTTransform(tokenizer, vocab, max_len=args.max_len),
                             batch_size=32, shuffle=False)
    net.hybridize(static_alloc=True)
    bf16, why_not = bf16_support()
    print(f'CPU: {cpu_info().describe()}; --fast picks {fastest_path()[0]}')
    print(f'{len(examples)} examples from {args.data}\n')
    print('| model | accuracy | labels equal to float32 as trained | seconds |\n'
          '|---|---:|---:|---:|')
    calib = fast.calibration_batches(net, vocab, tokenizer, max_len=args.max_len)
    paths = [('as trained', lambda: net), ('fast float32', lambda: fast.prepare(net))]
    if bf16:
        paths.append(('fast bfloat16', lambda: fast.prepare(net, 'bfloat16')))
    else:
        print(f'| fast bfloat16 | skipped: {why_not} | | |')
    paths += [('fast int8', lambda: fast.prepare(net, 'int8', calib_batches=calib)),
              ('fast int8, ffn_2 float32',
               lambda: fast.quantize_int8(net, calib, exclude_layers_match=['ffn_2']))]
    reference = None
    for name, make in paths:
        predicted, labels, seconds = _predictions(make(), loader)
        reference = predicted if reference is None else reference  # the model as trained
        agree = f'{(predicted == reference).mean():.2%}'
        print(f'| {name} | {(predicted == labels).mean():.4f} | {agree} | {seconds:.1f} |',
              flush=True)


if __name__ == '__main__':
    main()
