"""Where the time of a training step goes: MXNet's profiler, aggregated by operator.

    python benchmarks/profile_training.py                         # BERT-base, 8x128
    python benchmarks/profile_training.py --preset minilm --batch-size 32 --iters 5

One fine-tuning step (forward, backward, AdamW) of a classifier with random weights, as
``bench_suite.py`` times it, hybridized with static memory. ``--iters`` steps are
profiled after ``--warmup`` steps, with MXNet's engine bulking off
(``MXNET_EXEC_BULK_EXEC_*=0``, set here before MXNet is imported) so that each operator
is timed on its own. Prints the CPU line, the operators by total time (forward and
backward kernels separately, as MXNet names them), and the share of the step spent in
matrix products (FullyConnected and the attention batch products) against everything
else (element-wise work, softmax, LayerNorm, the optimizer, copies).
"""
import argparse
import json
import os
import time

GEMM_WORDS = ('FullyConnected', 'fully_connected', 'batch_dot', 'interleaved_matmul',
              'selfatt', 'dot')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='bert_12_768_12',
                        help="a config preset, or 'minilm' (its configuration)")
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--seq-len', type=int, default=128)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--top', type=int, default=25, help='operators listed')
    parser.add_argument('--kernels', default='auto', choices=('auto', 'fused', 'mxnet'),
                        help="LayerNorm, dropout and attention products: gluonbert's "
                             "operators ('fused'), MXNet's, or 'auto' (fused when built)")
    return parser.parse_args(argv)


def model_config(gluonbert, preset, kernels):
    if preset == 'minilm':
        config = gluonbert.load_pretrained('minilm')[0].config
        return gluonbert.BERTConfig.from_dict({**config.to_dict(), 'kernels': kernels})
    return gluonbert.BERTConfig.from_preset(preset, vocab_size=30522, kernels=kernels)


def main(argv=None):
    args = parse_args(argv)
    # bulking runs a segment of operators as one engine task, which the profiler then
    # reports as one row: off, so that the rows are operators
    os.environ.setdefault('MXNET_EXEC_BULK_EXEC_TRAIN', '0')
    os.environ.setdefault('MXNET_EXEC_BULK_EXEC_INFERENCE', '0')
    import gluonbert  # first: it sets the OpenMP thread count MXNet reads at import
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon
    from gluonbert.hardware import cpu_info
    from gluonbert.train import make_trainer

    config = model_config(gluonbert, args.preset, args.kernels)
    mx.random.seed(0)
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), num_classes=2)
    net.initialize(mx.init.Normal(0.02))
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = make_trainer(net, optimizer='adamw', lr=5e-5)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(0)
    shape = (args.batch_size, args.seq_len)
    words = mx.nd.array(rng.randint(1000, config.vocab_size, shape))
    segments = mx.nd.zeros(shape)
    valid_length = mx.nd.array(np.full(args.batch_size, args.seq_len))
    labels = mx.nd.array(rng.randint(0, 2, args.batch_size))

    def step(iters):
        for _ in range(iters):
            with autograd.record():
                loss = loss_fn(net(words, segments, valid_length), labels).mean()
            loss.backward()
            trainer.step(1)
        mx.nd.waitall()

    step(args.warmup)
    started = time.perf_counter()
    step(args.iters)
    plain = (time.perf_counter() - started) / args.iters
    mx.profiler.set_config(profile_all=True, aggregate_stats=True, continuous_dump=False,
                           filename='/dev/null')
    mx.profiler.set_state('run')
    started = time.perf_counter()
    step(args.iters)
    profiled = (time.perf_counter() - started) / args.iters
    mx.profiler.set_state('stop')
    stats = json.loads(mx.profiler.dumps(reset=True, format='json'))
    rows = []
    for domain, operators in stats.get('Time', {}).items():
        if domain != 'operator':
            continue
        for name, record in operators.items():
            rows.append((name, record['Count'] / args.iters, record['Total'] / args.iters))
    rows.sort(key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    gemm = sum(r[2] for r in rows if any(w in r[0] for w in GEMM_WORDS))
    print(f'CPU: {cpu_info().describe()}')
    print(f'{args.preset} ({config.num_layers}x{config.units}, kernels '
          f'{net.bert.config.kernels}), training step {shape[0]}x'
          f'{shape[1]}: {plain:.3f} s ({args.batch_size / plain:.2f} samples/s, bulking '
          f'{os.environ["MXNET_EXEC_BULK_EXEC_TRAIN"]}); profiled '
          f'{profiled:.3f} s; operator time {total / 1e3:.3f} s per step\n')
    print('| operator | calls/step | ms/step | share |')
    print('|---|---:|---:|---:|')
    for name, calls, ms in rows[:args.top]:
        print(f'| {name} | {calls:g} | {ms:.1f} | {ms / total:.1%} |')
    # achieved rates: the dense layers' FLOPs (backward twice forward), the attention
    # products' (QK^T and attention x V)
    tokens = args.batch_size * args.seq_len
    dense = 2 * tokens * config.num_layers * (4 * config.units ** 2 +
                                              2 * config.units * config.hidden_size)
    attention = 4 * args.batch_size * args.seq_len ** 2 * config.units * config.num_layers
    ms = {name: total_ms for name, _, total_ms in rows}
    for label, flops, names in (
            ('dense layers, forward', dense, ['FullyConnected']),
            ('dense layers, backward', 2 * dense, ['_backward_FullyConnected']),
            ('attention products, forward', attention,
             ['_contrib_interleaved_matmul_selfatt_qk',
              '_contrib_interleaved_matmul_selfatt_valatt', 'gluonbert_selfatt_qk',
              'gluonbert_selfatt_valatt']),
            ('attention products, backward', 2 * attention,
             ['_backward_interleaved_matmul_selfatt_qk',
              '_backward_interleaved_matmul_selfatt_valatt', '_backward_gluonbert_selfatt_qk',
              '_backward_gluonbert_selfatt_valatt'])):
        spent = sum(ms.get(name, 0.0) for name in names)
        if spent:
            print(f'{label}: {flops / 1e9:.1f} GFLOP in {spent:.0f} ms = '
                  f'{flops / spent / 1e6:.0f} GFLOP/s')
    print(f'\nmatrix products (FullyConnected, attention products): {gemm / total:.1%} of the '
          f'operator time; the rest (element-wise, softmax, LayerNorm, optimizer, copies): '
          f'{(total - gemm) / total:.1%}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
