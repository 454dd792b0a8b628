"""Corpus-scale pre-training data: shard preparation, streaming training, memory at scale.

    python benchmarks/bench_pretrain_data.py                   # 100 MB and 1 GB (tens of minutes)
    python benchmarks/bench_pretrain_data.py --sizes 100 --workers 1,2 --train-steps 200
    python benchmarks/bench_pretrain_data.py --sizes 2,8 --train-steps 20 --workdir /tmp/bpd-small

For each ``--sizes`` (megabytes of text, 10**6 bytes; fractions taken) a synthetic corpus
is generated once into ``--workdir`` (reused when present with that size; ~15 s per GB):
``.txt``, one sentence per line and a blank line between documents, documents of 5-40
sentences of 8-30 words drawn uniformly (seeded) from the MiniLM vocabulary's whole
alphabetic words, the first capitalised, a period at the end (so one word is one WordPiece
token, and the period another). Then each phase runs in its own interpreter (this script
with a hidden ``--phase``), so that its peak RSS is its own:

- preparation (``gluonbert.data.prepare_shards``, max_len 128, seed 0, progress off) with
  each of ``--workers`` processes into a fresh directory: tokens/s = the manifest's
  ``counts['tokens']`` (WordPiece tokens of the corpus) / wall seconds of the call; peak RSS
  of the preparing process (see below) and of the largest worker (``RUSAGE_CHILDREN``,
  after the pool is joined; forked workers count the pages they share with the parent).
  The shards must not depend on the workers: their digests are compared, and only the
  first directory is kept;
- streaming training (``ShardedPretrainingData`` of those shards, shuffle buffer 10000, max
  predictions 20) of a tiny BERT (``tiny`` preset, max_length 128, initialised N(0, 0.02),
  hybridized) with ``gluonbert.pretrain_loop`` for ``--train-steps`` updates at batch 32,
  progress off: tokens/s = the non-padding tokens (sum of ``valid_length``) of the batches
  of the second half of the updates / the wall seconds from the request of the first of
  them to the loop's return (the first half is warm-up: graph construction, allocator, the
  shuffle buffer's fill); sequences/s over the same window; peak RSS of the process. The
  figure of merit: the peak RSS at the largest size over that at the smallest (<= 1.10);
- the in-memory path (``read_corpus`` + ``PretrainingData`` of the smallest corpus, same
  model and loop, measured the same way), unless ``--skip-memory``; its set-up time (read,
  tokenize, pack) is reported beside it.

Every phase's process first imports MXNet and loads MiniLM (for its vocabulary and
tokenizer; the weights are dropped at once), which peaks at about 450 MiB ("set-up peak"),
above what preparing a corpus needs. So the peak is then reset (Linux: ``5`` written to
``/proc/self/clear_refs``) and "peak RSS" is that of the measured call, on top of the
resident "base RSS" left by the set-up: the process's ``VmHWM``, which is ``ru_maxrss``
but for one thing, that an exec'd process's ``ru_maxrss`` starts at its parent's peak
(and ``clear_refs`` does not reset that part; the JSON keeps ``ru_maxrss_mib`` too). For
the same reason this driving process stays small (MXNet imported, nothing loaded; the
corpora are generated in a child as well). Where the reset is not possible (or the memory
does not settle) the peak is ``ru_maxrss``, marked ``*``. The tables at the end hold every
figure, the command line, the CPU line and the date.
"""
import argparse
import datetime
import gc
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time

BATCH_SIZE = 32
MAX_LEN = 128
MAX_PREDICTIONS = 20
SHUFFLE_BUFFER = 10000
SEED = 0
DOCS_PER_BLOCK = 1000      # documents generated per numpy block (~3.5 MB of text)
SIZE_SLACK = 1 << 20       # a corpus may exceed its size by less than this (whole documents)
RESULT_MARK = 'bench_pretrain_data result: '
PHASES = ('corpus', 'prepare', 'train', 'train-memory')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='100,1000',
                        help='comma-separated corpus sizes in MB (10**6 bytes), e.g. 0.5,2')
    parser.add_argument('--workers', default='1,2',
                        help='comma-separated preparation worker counts')
    parser.add_argument('--train-steps', type=int, default=200,
                        help='pre-training updates per training run (the second half timed)')
    parser.add_argument('--workdir', default='/tmp/gluonbert-bench-pretrain-data',
                        help='corpora (kept and reused) and shard directories')
    parser.add_argument('--skip-memory', action='store_true',
                        help='skip the in-memory PretrainingData comparison')
    # one measured phase in this interpreter; prints one RESULT_MARK line of JSON
    parser.add_argument('--phase', choices=PHASES, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--corpus', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--shards', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--prepare-workers', type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument('--megabytes', type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.sizes = [float(s) for s in args.sizes.split(',') if s.strip()]
        args.workers = [int(w) for w in args.workers.split(',') if w.strip()]
    except ValueError as err:
        parser.error(f'--sizes/--workers: {err}')
    if not args.sizes or min(args.sizes) <= 0:
        parser.error('--sizes must be positive numbers of MB')
    if not args.workers or min(args.workers) < 1:
        parser.error('--workers must be integers >= 1')
    if args.train_steps < 2:
        parser.error('--train-steps must be >= 2 (the second half is timed)')
    args.sizes = sorted(set(args.sizes))
    return args


# ------------------------------------------------------------------------------ corpora
def corpus_path(workdir, megabytes):
    return os.path.join(workdir, f'corpus-{megabytes:g}MB.txt')


def corpus_ready(path, megabytes):
    target = int(megabytes * 1e6)
    return os.path.isfile(path) and 0 <= os.path.getsize(path) - target < SIZE_SLACK


def word_table(vocab):
    """``(pool, starts, lengths, count)``: the bytes of each vocabulary word (whole,
    alphabetic, ASCII) in 4 forms: ``word ``, ``Word ``, ``word.\\n`` (a sentence's end),
    ``word.\\n\\n`` (a document's end); form k of word i is entry ``k * count + i``."""
    import numpy as np
    words = [t for t in vocab.idx_to_token if t.isascii() and t.isalpha()]
    forms = ([w + ' ' for w in words] + [w.capitalize() + ' ' for w in words]
             + [w + '.\n' for w in words] + [w + '.\n\n' for w in words])
    lengths = np.array([len(f) for f in forms], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pool = np.frombuffer(''.join(forms).encode('ascii'), dtype=np.uint8)
    return pool, starts, lengths, len(words)


def corpus_block(rng, table, documents):
    """``(bytes as uint8, end offset of each document)`` of ``documents`` random ones."""
    import numpy as np
    pool, starts, lengths, count = table
    sentences = rng.integers(5, 41, size=documents)
    sentence_words = rng.integers(8, 31, size=int(sentences.sum()))
    sentence_ends = np.cumsum(sentence_words)          # after each sentence's last word
    document_last = sentence_ends[np.cumsum(sentences) - 1] - 1   # each document's last word
    form = np.zeros(int(sentence_ends[-1]), dtype=np.int64)
    form[sentence_ends - sentence_words] = 1
    form[sentence_ends - 1] = 2
    form[document_last] = 3
    entry = form * count + rng.integers(0, count, size=len(form))
    size = lengths[entry]
    ends = np.cumsum(size)
    gather = np.repeat(starts[entry] - (ends - size), size) + np.arange(int(ends[-1]))
    return pool[gather], ends[document_last]


def generate_corpus(path, megabytes, table):
    """Write a corpus of ``megabytes`` MB (whole documents, just over) to ``path``."""
    import numpy as np
    target = int(megabytes * 1e6)
    rng = np.random.default_rng([SEED, target])
    partial, written = path + '.partial', 0
    with open(partial, 'wb') as f:
        while written < target:
            data, document_ends = corpus_block(rng, table, DOCS_PER_BLOCK)
            if written + len(data) >= target:
                data = data[:document_ends[np.searchsorted(document_ends, target - written)]]
            data.tofile(f)
            written += len(data)
    os.replace(partial, path)


# ------------------------------------------------------------------------------ phases
def peak_mib(who):
    """Peak RSS in MiB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(who).ru_maxrss / 1024


def status_mib(key):
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process in MiB (Linux's
    /proc/self/status), else None."""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak(tries=20):
    """Reset this process's peak RSS (``VmHWM``, and with it ``ru_maxrss``) to its current
    RSS (Linux's ``clear_refs``), again while memory is still being given back (the peak
    would be that of the moment); False where that is not possible."""
    for _ in range(tries):
        try:
            with open('/proc/self/clear_refs', 'w', encoding='ascii') as f:
                f.write('5')
        except OSError:
            return False
        peak, now = status_mib('VmHWM'), status_mib('VmRSS')
        if peak is None or now is None:
            return False
        if peak - now < 16:
            return True
        time.sleep(0.1)
    return False


def own_peak_mib():
    """This process's peak RSS in MiB: ``VmHWM`` where Linux has it, else ``ru_maxrss``.
    (They differ in one way: an exec'd process's ``ru_maxrss`` starts at its parent's
    peak, which ``clear_refs`` does not reset.)"""
    peak = status_mib('VmHWM')
    return peak if peak is not None else peak_mib(resource.RUSAGE_SELF)


class CountedData:
    """``pretrain_loop``'s data, seen through: when each batch is asked for, and its
    non-padding tokens (the sum of ``valid_length``)."""

    def __init__(self, data):
        self.data, self.marks = data, []   # (perf_counter when requested, tokens)

    def __getattr__(self, name):
        return getattr(self.data, name)

    def epoch_batches(self, *args, **kwargs):
        batches = iter(self.data.epoch_batches(*args, **kwargs))
        while True:
            requested = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.marks.append((requested, float(batch[2].asnumpy().sum())))
            yield batch


def train_figures(gluonbert, mx, vocab, data, steps):
    """Train the tiny model on ``data``; the timed second half's figures."""
    config = gluonbert.BERTConfig.from_preset('tiny', vocab_size=len(vocab), max_length=MAX_LEN)
    model = gluonbert.BERTForPretraining(config)
    model.initialize(mx.init.Normal(0.02), ctx=mx.cpu())
    model.hybridize(static_alloc=True)
    counted = CountedData(data)
    started = time.perf_counter()
    records = gluonbert.pretrain_loop(model, counted, steps=steps, batch_size=BATCH_SIZE,
                                      lr=1e-4, log_interval=steps, progress=False)
    ended = time.perf_counter()
    timed = counted.marks[steps // 2:steps]
    seconds = ended - timed[0][0]
    tokens = sum(t for _, t in timed)
    return {'steps': steps, 'timed_steps': len(timed), 'timed_seconds': seconds,
            'tokens_per_second': tokens / seconds,
            'sequences_per_second': len(timed) * BATCH_SIZE / seconds,
            'mean_valid_length': tokens / (len(timed) * BATCH_SIZE),
            'loop_seconds': ended - started,
            'loop_sequences_per_second': records[-1]['sequences_per_second'],
            'mlm_loss': records[-1]['mlm_loss']}


def run_phase(args):
    """One measured phase in this interpreter; prints its figures as one JSON line."""
    import gluonbert  # first: it sets the OpenMP thread count MXNet reads at import
    import mxnet as mx
    from gluonbert.data import (PretrainingData, ShardedPretrainingData, prepare_shards,
                                read_corpus)
    from gluonbert.pretrained import load_vocabulary
    vocab, tokenizer = load_vocabulary('minilm')  # without the weights
    if args.phase == 'corpus':
        started = time.perf_counter()
        generate_corpus(args.corpus, args.megabytes, word_table(vocab))
        print(RESULT_MARK + json.dumps({'seconds': time.perf_counter() - started}), flush=True)
        return 0
    gc.collect()
    mx.nd.waitall()
    # the set-up (importing MXNet, reading the vocabulary) may peak above what preparing a
    # small corpus needs
    result = {'phase': args.phase, 'setup_peak_rss_mib': own_peak_mib(),
              'peak_reset': reset_peak(), 'base_rss_mib': status_mib('VmRSS')}
    if args.phase == 'prepare':
        children_before = peak_mib(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        manifest = prepare_shards(args.corpus, args.shards, tokenizer, vocab, max_len=MAX_LEN,
                                  seed=SEED, workers=args.prepare_workers, overwrite=True,
                                  progress=False)
        seconds = time.perf_counter() - started
        result.update(seconds=seconds, counts=manifest['counts'],
                      tokens_per_second=manifest['counts']['tokens'] / seconds,
                      shard_digests={split: [r['sha256'] for r in records]
                                     for split, records in manifest['shards'].items()},
                      children_rss_before_mib=children_before,
                      worker_peak_rss_mib=peak_mib(resource.RUSAGE_CHILDREN))
    elif args.phase == 'train':
        data = ShardedPretrainingData(args.shards, vocab, max_predictions=MAX_PREDICTIONS,
                                      seed=SEED, shuffle_buffer=SHUFFLE_BUFFER)
        result.update(examples=len(data), **train_figures(gluonbert, mx, vocab, data,
                                                          args.train_steps))
    else:
        started = time.perf_counter()
        data = PretrainingData(read_corpus(args.corpus), tokenizer, vocab, max_len=MAX_LEN,
                               max_predictions=MAX_PREDICTIONS, seed=SEED)
        result.update(setup_seconds=time.perf_counter() - started, examples=len(data),
                      **train_figures(gluonbert, mx, vocab, data, args.train_steps))
    result['ru_maxrss_mib'] = peak_mib(resource.RUSAGE_SELF)
    result['peak_rss_mib'] = own_peak_mib() if result['peak_reset'] else result['ru_maxrss_mib']
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def measure(phase, **options):
    """Run ``phase`` of this script in a fresh interpreter; its figures."""
    command = [sys.executable, os.path.abspath(__file__), '--phase', phase]
    for key, value in options.items():
        command += [f'--{key.replace("_", "-")}', str(value)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    results = [json.loads(line[len(RESULT_MARK):]) for line in done.stdout.splitlines()
               if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not results:
        sys.stdout.write(done.stdout)
        raise SystemExit(f'bench_pretrain_data: phase {phase} failed (exit {done.returncode}): '
                         f'{shlex.join(command)}')
    return results[-1]


# ------------------------------------------------------------------------------ report
def markdown(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def mib(value):
    return '-' if value is None else f'{value:,.0f}'


def peak(result):
    """The phase's peak RSS in MiB, ``*`` where it could not be reset after the set-up."""
    return mib(result['peak_rss_mib']) + ('' if result['peak_reset'] else '*')


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.phase:
        return run_phase(args)
    import gluonbert  # first: it sets the OpenMP thread count MXNet reads at import
    import mxnet as mx
    from gluonbert._env import physical_cores
    from gluonbert.hardware import cpu_info
    command = shlex.join([sys.executable, sys.argv[0], *argv])
    threads = os.environ.get('OMP_NUM_THREADS') or physical_cores()
    cpu = (f'{cpu_info().describe()}; {physical_cores()} physical cores, {os.cpu_count()} '
           f'CPUs, {threads} threads (OMP_NUM_THREADS); gluonbert {gluonbert.__version__}, '
           f'mxnet {mx.__version__}')
    print(f'CPU: {cpu}', flush=True)
    os.makedirs(args.workdir, exist_ok=True)
    corpora, prepared, trained = {}, [], {}
    for megabytes in args.sizes:
        path = corpus_path(args.workdir, megabytes)
        if corpus_ready(path, megabytes):
            corpora[megabytes] = (os.path.getsize(path), 'reused')
        else:
            # in a child too: this process stays small, as an exec'd child's ru_maxrss
            # starts at its parent's peak
            seconds = measure('corpus', corpus=path, megabytes=megabytes)['seconds']
            corpora[megabytes] = (os.path.getsize(path), f'generated in {seconds:.1f} s')
        print(f'{megabytes:g} MB: {path}, {corpora[megabytes][0]:,} bytes, '
              f'{corpora[megabytes][1]}', flush=True)

        kept, digests = None, None
        for workers in args.workers:
            shards = os.path.join(args.workdir, f'shards-{megabytes:g}MB-w{workers}')
            shutil.rmtree(shards, ignore_errors=True)   # fresh: a same manifest is returned
            result = measure('prepare', corpus=path, shards=shards, prepare_workers=workers)
            same = digests is None or result['shard_digests'] == digests
            if result['worker_peak_rss_mib'] <= result['children_rss_before_mib'] and \
                    workers > 1:
                print('  (the largest worker RSS is not told apart from an earlier child '
                      'process of the phase)', flush=True)
            prepared.append((megabytes, workers, result, same))
            worker_note = (f', largest worker {mib(result["worker_peak_rss_mib"])} MiB'
                           if workers > 1 else '')
            print(f'  prepare, {workers} worker(s): {result["counts"]["tokens"]:,} tokens in '
                  f'{result["seconds"]:.1f} s = {result["tokens_per_second"]:,.0f} tokens/s; '
                  f'peak RSS {peak(result)} MiB{worker_note}; '
                  f'{result["counts"]["train_examples"]:,} train examples'
                  f'{"" if same else "; SHARDS DIFFER from the first run"}', flush=True)
            if kept is None:
                kept, digests = shards, result['shard_digests']
            else:
                shutil.rmtree(shards, ignore_errors=True)

        result = measure('train', shards=kept, train_steps=args.train_steps)
        trained[(megabytes, 'shards')] = result
        print(f'  train (streaming): {result["tokens_per_second"]:,.0f} tokens/s, '
              f'{result["sequences_per_second"]:.1f} seq/s; peak RSS {peak(result)} MiB',
              flush=True)
        if megabytes == args.sizes[0] and not args.skip_memory:
            result = measure('train-memory', corpus=path, train_steps=args.train_steps)
            trained[(megabytes, 'memory')] = result
            print(f'  train (in memory): {result["tokens_per_second"]:,.0f} tokens/s, '
                  f'{result["sequences_per_second"]:.1f} seq/s; peak RSS {peak(result)} MiB; '
                  f'data set-up {result["setup_seconds"]:.1f} s', flush=True)

    print()
    now = datetime.datetime.now().astimezone()
    print(f'## Pre-training data benchmark, {now:%Y-%m-%d %H:%M %Z}')
    print()
    print(f'`{command}`')
    print()
    print(f'CPU: {cpu}')
    print()
    print(markdown(
        ['corpus', 'bytes', 'tokens', 'workers', 'prepare s', 'tokens/s', 'set-up peak MiB',
         'base RSS MiB', 'peak RSS MiB', 'largest worker peak RSS MiB', 'train examples',
         'same shards'],
        [[f'{mb:g} MB', f'{corpora[mb][0]:,}', f'{r["counts"]["tokens"]:,}', w,
          f'{r["seconds"]:.1f}', f'{r["tokens_per_second"]:,.0f}',
          mib(r['setup_peak_rss_mib']), mib(r['base_rss_mib']), peak(r),
          mib(r['worker_peak_rss_mib']) if w > 1 else '-',
          f'{r["counts"]["train_examples"]:,}', 'yes' if same else 'NO']
         for mb, w, r, same in prepared]))
    print()
    print(markdown(
        ['corpus', 'data', 'tokens/s', 'seq/s', 'mean valid length', 'timed steps',
         'data set-up s', 'loop s', 'set-up peak MiB', 'base RSS MiB', 'peak RSS MiB'],
        [[f'{mb:g} MB', 'ShardedPretrainingData' if kind == 'shards' else 'PretrainingData',
          f'{r["tokens_per_second"]:,.0f}', f'{r["sequences_per_second"]:.1f}',
          f'{r["mean_valid_length"]:.1f}', f'{r["timed_steps"]} of {r["steps"]}',
          f'{r["setup_seconds"]:.1f}' if 'setup_seconds' in r else '-',
          f'{r["loop_seconds"]:.1f}', mib(r['setup_peak_rss_mib']), mib(r['base_rss_mib']),
          peak(r)]
         for (mb, kind), r in trained.items()]))
    print()
    print(f'tiny BERT ({BATCH_SIZE} x {MAX_LEN}, {MAX_PREDICTIONS} predictions); tokens/s: '
          f'sum of valid_length over the batches of the second half of the updates / its '
          f'wall seconds; preparation tokens/s: manifest tokens / wall seconds of '
          f'prepare_shards; peak RSS: of the measured call (base RSS included): VmHWM reset '
          f'after the set-up (* where it could not be: ru_maxrss); largest worker: '
          f'RUSAGE_CHILDREN ru_maxrss.')
    smallest, largest = args.sizes[0], args.sizes[-1]
    if largest != smallest:
        big, small = trained[(largest, 'shards')], trained[(smallest, 'shards')]
        ratio = big['peak_rss_mib'] / small['peak_rss_mib']
        growth = ((big['peak_rss_mib'] - big['base_rss_mib'])
                  / max(small['peak_rss_mib'] - small['base_rss_mib'], 1e-9))
        print(f'streaming training peak RSS, {largest:g} MB / {smallest:g} MB: {ratio:.3f} '
              f'({"within" if ratio <= 1.10 else "NOT within"} 10%); above the base RSS '
              f'(model, optimizer, data): {growth:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
