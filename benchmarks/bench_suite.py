"""gluonbert performance suite: inference, training, tokenization, padding, GEMM peak.

One run measures everything the same way, in the same conditions:

- inference sequences/s at batch 32 x 128 for bert_12_768_12 and MiniLM (6 x 384):
  gluonbert float32 / bfloat16 / int8 (:mod:`gluonbert.fast`), GluonNLP's BERTModel and,
  when available, Hugging Face transformers (PyTorch) float32 / bfloat16 autocast;
- training samples/s at batch 8 x 128 (forward, backward, AdamW update; no clipping):
  gluonbert float32 / bfloat16 (AMP), GluonNLP, Hugging Face float32 / bfloat16;
- tokenization texts/s on long reviews (the bundled reviews repeated to ~400 words):
  gluonbert's BERTTokenizer, GluonNLP's, and Hugging Face's fast (Rust) tokenizer;
- padding waste with and without length bucketing on a long-tailed length distribution;
- the GEMM peak (one large ``FullyConnected``, float32 / bfloat16 / int8), timed in the
  same interleaved rounds as each inference section's models, and, for every inference
  row, the achieved matrix-product GFLOP/s (padding included) as a fraction of that peak.

Variants are timed interleaved (A, B, C, A, B, C, ...) and repeated; the table gives the
minimum and the median over the repeats. Hugging Face rows run in a separate interpreter
(``--hf-python``, e.g. a virtualenv with torch and transformers), as do gluonbert's
bfloat16 training rows (MXNet's AMP is process-wide); the timings are taken inside that
process and interleaved with the others all the same. Each section (an inference or
training size, tokenization, ...) runs in a fresh interpreter, so that its memory is given
back before the next (BERT-base inference with four MXNet variants holds about 6 GB);
``--no-isolate`` runs everything in one process (the default with ``--quick``).

    python benchmarks/bench_suite.py                                  # full run (minutes)
    python benchmarks/bench_suite.py --hf-python /work/refvenv/bin/python
    python benchmarks/bench_suite.py --only inference --sizes minilm_6_384_12
    python benchmarks/bench_suite.py --quick                          # tiny smoke run

Options: ``--only`` takes groups (inference, training, tokenization, padding, gemm);
``--variants`` keeps rows whose variant contains one of the given substrings.

The measurements live in ``benchmarks/suite/``: the timing harness and the table
(``harness``), the worker processes (``workers``), one module per group (``inference``,
``training``, ``tokenization``, ``padding``, ``gemm``; ``hf`` for Hugging Face's side) and
how sections run (``sections``). This file is the command line.
"""
import argparse
import json
import os
import sys
import time

from suite import harness, sections, workers

GROUPS = ('inference', 'training', 'tokenization', 'padding', 'gemm')
FULL = dict(sizes=('bert_12_768_12', 'minilm_6_384_12'), infer_batch=(32, 128),
            train_batch=(8, 128), repeats=5, warmup=1, gemm=(4096, 4096, 4096),
            token_texts=400, token_words=400, token_repeats=5, padding_examples=20000,
            calib_batches=2)
QUICK = dict(sizes=('tiny',), infer_batch=(4, 16), train_batch=(4, 16), repeats=2, warmup=1,
             gemm=(256, 256, 256), token_texts=16, token_words=400, token_repeats=2,
             padding_examples=2000, calib_batches=1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='tiny sizes and 2 repeats: a smoke test, not a measurement')
    parser.add_argument('--only', default=None,
                        help=f'comma-separated groups to run, from {",".join(GROUPS)}')
    parser.add_argument('--variants', default=None,
                        help='comma-separated substrings: keep only variants containing one '
                             '(e.g. "gluonbert,HF")')
    parser.add_argument('--sizes', default=None,
                        help='comma-separated gluonbert presets (default bert_12_768_12,'
                             'minilm_6_384_12; tiny with --quick)')
    parser.add_argument('--repeats', type=int, default=None, help='timed rounds per variant')
    parser.add_argument('--threads', type=int, default=None,
                        help='OpenMP / torch threads (default: gluonbert default = physical '
                             'cores)')
    parser.add_argument('--hf-python', default=None,
                        help="interpreter with torch and transformers for the Hugging Face "
                             "rows (default: this one if it can import them); 'none' skips them")
    parser.add_argument('--json', default=None, help='also write the results to this file')
    parser.add_argument('--isolate', dest='isolate', action='store_true', default=None,
                        help='run each section (GEMM, inference per size, ...) in its own '
                             'interpreter, so that memory is returned between sections '
                             '(default, except with --quick)')
    parser.add_argument('--no-isolate', dest='isolate', action='store_false')
    parser.add_argument('--worker', choices=('hf', 'mx-amp'), default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument('--section', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(',')) - set(GROUPS)
        if unknown:
            parser.error(f'--only: unknown group(s) {", ".join(sorted(unknown))}; '
                         f'choose from {", ".join(GROUPS)}')
    if args.repeats is not None and args.repeats < 1:
        parser.error('--repeats must be >= 1')
    return args


def serve_worker(kind):
    """``--worker KIND``: serve a benchmark worker on stdin/stdout (see suite.workers)."""
    if kind == 'hf':
        from suite.hf import worker_handlers
    else:
        from suite.training import amp_worker_handlers as worker_handlers
    workers.serve(worker_handlers)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        serve_worker(args.worker)
        return 0
    if args.threads:
        os.environ['OMP_NUM_THREADS'] = str(args.threads)
    settings = dict(QUICK if args.quick else FULL)
    if args.sizes:
        settings['sizes'] = tuple(s.strip() for s in args.sizes.split(',') if s.strip())
    if args.repeats:
        settings['repeats'] = settings['token_repeats'] = args.repeats
    groups = args.only.split(',') if args.only else list(GROUPS)
    wanted = [s.strip() for s in args.variants.split(',')] if args.variants else None

    def keep(name):
        return wanted is None or any(w in name for w in wanted)

    started = time.perf_counter()
    import gluonbert  # before mxnet (which it imports): it sets MXNet's thread count
    from gluonbert._env import physical_cores
    threads = int(os.environ.get('OMP_NUM_THREADS') or physical_cores())
    for size in settings['sizes']:
        if size not in gluonbert.PRESETS:
            print(f'bench_suite: unknown size {size!r}; presets: {", ".join(gluonbert.PRESETS)}',
                  file=sys.stderr)
            return 2
    if args.section:
        rows, hf_versions = sections.run_section(args.section, settings, args, threads, keep)
        print(sections.RESULTS_MARK + json.dumps({'rows': rows, 'hf': hf_versions}), flush=True)
        return 0

    isolate = args.isolate if args.isolate is not None else not args.quick
    rows, hf_versions = [], None
    for section in sections.sections_for(groups, settings['sizes']):
        section_started = time.perf_counter()
        if isolate:
            new_rows, versions = sections.run_isolated(section, argv, threads)
        else:
            new_rows, versions = sections.run_section(section, settings, args, threads, keep)
        rows += new_rows
        hf_versions = hf_versions or versions
        print(f'bench_suite: {section} done in {time.perf_counter() - section_started:.0f} s',
              file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, 'w', encoding='utf-8') as f:
                json.dump(rows, f, indent=2)

    print(harness.environment_line(threads, hf_versions, settings['repeats'], args.quick,
                                   time.perf_counter() - started))
    print(harness.table(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
