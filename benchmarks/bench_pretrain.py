"""Pre-training throughput (MLM + NSP updates) of a preset, on the bundled review texts.

    python benchmarks/bench_pretrain.py --preset tiny --batch-size 32 --max-len 128
    python benchmarks/bench_pretrain.py --preset bert_12_768_12 --batch-size 8 --steps 4

Runs ``2 * steps`` updates of ``gluonbert.pretrain_loop`` and reports the second half
(the first includes graph construction and allocator warm-up): sequences/s, and the mean
padded batch length, since review pairs are often shorter than ``--max-len``.
"""
import argparse
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='tiny')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--max-len', type=int, default=128)
    parser.add_argument('--max-predictions', type=int, default=20)
    parser.add_argument('--steps', type=int, default=10, help='timed updates (after as many '
                                                               'warm-up updates)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import gluonbert  # first: it sets the OpenMP thread count MXNet reads at import
    import mxnet as mx
    import numpy as np
    from gluonbert.data import load_sample_reviews
    from gluonbert.pretrain import PretrainingData, pretrain_loop, split_sentences

    _, vocab, tokenizer = gluonbert.load_pretrained('minilm')
    reviews = load_sample_reviews('train').texts + load_sample_reviews('test').texts
    # documents of several sentences, so that next-sentence pairs exist
    documents = [split_sentences(text) for text in reviews]
    documents = [doc for doc in documents if len(doc) >= 2]
    config = gluonbert.BERTConfig.from_preset(args.preset, vocab_size=len(vocab))
    max_len = min(args.max_len, config.max_length)  # the tiny preset stops at 64
    data = PretrainingData(documents, tokenizer, vocab, max_len=max_len,
                           max_predictions=args.max_predictions, seed=0)
    model = gluonbert.BERTForPretraining(config)
    model.initialize(mx.init.Normal(0.02), ctx=mx.cpu())
    model.hybridize(static_alloc=True)

    lengths = [batch[0].shape[1] for batch in data.batches(args.batch_size, epoch=0)]
    started = time.perf_counter()
    records = pretrain_loop(model, data, steps=2 * args.steps, batch_size=args.batch_size,
                            lr=1e-4, log_interval=args.steps, progress=False)
    total = time.perf_counter() - started
    steady = records[-1]
    print(f"| {args.preset} | {config.num_layers}x{config.units} | {args.batch_size} | "
          f"{max_len} (mean padded {np.mean(lengths):.0f}) | "
          f"{steady['sequences_per_second']:.2f} seq/s | {total:.0f} s total |")


if __name__ == '__main__':
    main()
