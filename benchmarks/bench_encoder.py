"""Inference speed of gluonbert's BERTModel against GluonNLP's, same weights, same threads.

Both models are hybridized with static_alloc/static_shape and timed interleaved
(GluonNLP, gluonbert, GluonNLP, ...) so that machine noise hits both alike.

    python benchmarks/bench_encoder.py                      # bert_12_768_12, batch 32 x 128
    python benchmarks/bench_encoder.py --preset tiny --batch-size 8 --seq-len 32 --repeats 3

Prints sequences/s (min and median over repeats) and the gluonbert/GluonNLP ratio.
"""
import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='bert_12_768_12')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--seq-len', type=int, default=128)
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds per model')
    parser.add_argument('--iters', type=int, default=3, help='batches per round')
    parser.add_argument('--threads', type=int, default=None,
                        help='OpenMP threads (default: gluonbert default = physical cores)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        os.environ['OMP_NUM_THREADS'] = str(args.threads)
    import numpy as np
    import gluonbert  # first: it sets the OpenMP thread count MXNet reads at import
    import mxnet as mx

    cfg = gluonbert.BERTConfig.from_preset(args.preset)
    reference = gluonbert.convert.gluonnlp_model(cfg)
    reference.initialize(mx.init.Normal(0.02))
    ours = gluonbert.from_gluonnlp(reference)

    rng = np.random.RandomState(0)
    shape = (args.batch_size, args.seq_len)
    words = mx.nd.array(rng.randint(0, cfg.vocab_size, shape))
    segments = mx.nd.array(np.repeat([[0] * (args.seq_len // 2) +
                                      [1] * (args.seq_len - args.seq_len // 2)],
                                     args.batch_size, axis=0))
    valid_length = mx.nd.array(rng.randint(args.seq_len // 2, args.seq_len + 1,
                                           args.batch_size))
    models = {'gluonnlp': reference, 'gluonbert': ours}
    for model in models.values():
        model.hybridize(static_alloc=True, static_shape=True)
        for _ in range(2):  # warm-up: graph build and memory planning
            model(words, segments, valid_length)[0].wait_to_read()

    speeds = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            mx.nd.waitall()
            start = time.perf_counter()
            for _ in range(args.iters):
                outputs = model(words, segments, valid_length)
            for out in outputs:
                out.wait_to_read()
            speeds[name].append(args.iters * args.batch_size / (time.perf_counter() - start))

    threads = os.environ.get('OMP_NUM_THREADS', '?')
    print(f'{args.preset}, batch {args.batch_size} x {args.seq_len}, OMP_NUM_THREADS={threads}, '
          f'{args.repeats} rounds x {args.iters} batches, mxnet {mx.__version__}')
    print('| model | min seq/s | median seq/s |')
    print('|---|---|---|')
    for name, values in speeds.items():
        print(f'| {name} | {min(values):.2f} | {statistics.median(values):.2f} |')
    ratio = statistics.median(speeds['gluonbert']) / statistics.median(speeds['gluonnlp'])
    print(f'ratio gluonbert/gluonnlp (medians): {ratio:.3f}x')
    return ratio


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
