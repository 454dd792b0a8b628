"""``gluonbert-pretrain-data``: prepare a pre-training corpus once into shards (tokenized,
packed into sentence pairs, split into training and held-out examples) that
``gluonbert-pretrain --data DIR`` streams.

An interrupted preparation keeps what it wrote: the same command continues it. The same
command on a finished directory does nothing.
"""
import argparse
import os
import shlex
import time

from ..data import prepare_shards
from ..errors import UsageError
from ..pretrained import MANIFEST as MODEL_MANIFEST, MINILM_NAME
from ..pretrained import load_vocabulary as load_vocabulary_of
from .common import check_at_least, model_kind
from .runner import console_entry, run_command

__all__ = ['PROG_PRETRAIN_DATA', 'build_pretrain_data_parser', 'pretrain_data',
           'pretrain_data_main', 'pretrain_data_entry', 'model_source', 'load_vocabulary',
           'check_max_len', 'print_preparation']

PROG_PRETRAIN_DATA = 'gluonbert-pretrain-data'
MODEL_HELP = ("a preset (tiny, bert_12_768_12, ...: the embedded MiniLM WordPiece "
              "vocabulary), 'minilm', a GluonNLP zoo name, a model directory, or the output "
              "directory of an earlier gluonbert-pretrain run")


def build_pretrain_data_parser():
    """The ``argparse`` parser of ``gluonbert-pretrain-data``."""
    parser = argparse.ArgumentParser(
        prog=PROG_PRETRAIN_DATA,
        description='Prepare a pre-training corpus into shards for gluonbert-pretrain --data: '
                    'tokenized with the vocabulary of --model, packed into sentence pairs of '
                    'at most --max-len tokens, every --heldout-every-th one held out. Run the '
                    'same command again to continue an interrupted preparation.')
    parser.add_argument('--input', required=True, nargs='+', action='extend',
                        metavar='PATTERN',
                        help='corpus files or glob patterns (quote them), repeatable: .txt '
                             '(one sentence per line, a blank line between documents) or '
                             '.csv/.tsv/.jsonl (one document per row)')
    parser.add_argument('--output', required=True, metavar='DIR',
                        help='directory of the shards and manifest.json')
    parser.add_argument('--model', default='tiny',
                        help=f'where the vocabulary and tokenizer come from: {MODEL_HELP}. '
                             f'Pre-train with the same --model. Default: tiny')
    parser.add_argument('--max-len', type=int, default=128,
                        help='tokens per example, [CLS] and [SEP]s included (5 to 512)')
    parser.add_argument('--workers', type=int, default=1,
                        help='processes that tokenize and pack (the shards do not depend on it)')
    parser.add_argument('--short-seq-prob', type=float, default=0.1,
                        help='probability of a shorter example (BERT: 0.1)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--examples-per-shard', type=int, default=8192)
    parser.add_argument('--documents-per-chunk', type=int, default=256,
                        help='documents packed together (random next sentences come from '
                             'the same chunk)')
    parser.add_argument('--heldout-every', type=int, default=20,
                        help='hold out every N-th example (0: none)')
    parser.add_argument('--heldout-max', type=int, default=5000,
                        help='at most this many held-out examples')
    parser.add_argument('--text-column', default='text', help='column of documents (csv/jsonl)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace the shards of another preparation in --output')
    parser.add_argument('--no-progress', action='store_true')
    return parser


def model_source(model):
    """What :func:`~gluonbert.load_pretrained` loads for ``--model``: the ``model/``
    subdirectory of an earlier ``gluonbert-pretrain`` run's output directory, else
    ``model`` itself."""
    if model_kind(model, pretraining=True) != 'pretrained' or not os.path.isdir(model) or \
            os.path.exists(os.path.join(model, MODEL_MANIFEST)):
        return model
    inner = os.path.join(model, 'model')
    return inner if os.path.isdir(inner) else model


def load_vocabulary(model):
    """``(vocab, tokenizer)`` of ``--model``, as ``gluonbert-pretrain`` would load them: a
    preset's are the embedded MiniLM's; a saved model directory's are read without its
    weights."""
    if model_kind(model, pretraining=True) == 'preset':
        model = MINILM_NAME
    return load_vocabulary_of(model_source(model))


def check_max_len(max_len):
    """A UsageError unless ``--max-len`` is in [5, 512]."""
    if max_len is not None and not 5 <= max_len <= 512:
        raise UsageError(f'--max-len must be in [5, 512], got {max_len}')


def _check(args):
    check_max_len(args.max_len)
    check_at_least(args, 1, 'workers', 'examples_per_shard')
    check_at_least(args, 2, 'documents_per_chunk')
    check_at_least(args, 0, 'heldout_every', 'heldout_max', 'seed')
    if not args.text_column:
        raise UsageError('--text-column must name a column, got an empty name')
    if not 0 <= args.short_seq_prob <= 1:
        raise UsageError(f'--short-seq-prob must be in [0, 1], got {args.short_seq_prob}')


def _plural(count, word):
    return f'{count:,} {word}' + ('' if count == 1 else 's')


def print_preparation(manifest, directory, seconds, *, done_before=False):
    """Print what a preparation holds (examples, tokens, shards, documents) and its speed."""
    counts, shards = manifest['counts'], manifest['shards']
    how = 'already prepared (nothing to do)' if done_before else \
        f"in {seconds:.1f} s ({counts['tokens'] / max(seconds, 1e-9):,.0f} tokens/s)"
    print(f"{_plural(counts['train_examples'], 'training example')} "
          f"({counts['train_tokens']:,} tokens, the copied random B spans included) in "
          f"{_plural(len(shards['train']), 'shard')}, "
          f"{_plural(counts['heldout_examples'], 'held-out example')}; from "
          f"{_plural(counts['documents'], 'document')} ({counts['sentences']:,} sentences, "
          f"{counts['tokens']:,} tokens, {counts['skipped_documents']:,} skipped) {how}")
    print(f'manifest: {os.path.join(os.path.abspath(directory), "manifest.json")}')


def prepare(inputs, directory, vocab, tokenizer, *, progress=True, **settings):
    """:func:`~gluonbert.data.prepare_shards` into ``directory``, then its summary;
    returns ``(manifest, seconds)``."""
    path = os.path.join(directory, 'manifest.json')
    before = os.stat(path).st_mtime_ns if os.path.isfile(path) else None
    started = time.perf_counter()
    manifest = prepare_shards(inputs, directory, tokenizer, vocab, progress=progress,
                              **settings)
    seconds = time.perf_counter() - started
    done_before = before is not None and os.stat(path).st_mtime_ns == before
    print_preparation(manifest, directory, seconds, done_before=done_before)
    return manifest, seconds


def pretrain_data(args):
    """Prepare the shards for parsed arguments; returns the manifest and ``seconds``."""
    _check(args)
    vocab, tokenizer = load_vocabulary(args.model)
    manifest, seconds = prepare(
        args.input, args.output, vocab, tokenizer, progress=not args.no_progress,
        max_len=args.max_len, short_seq_prob=args.short_seq_prob, seed=args.seed,
        workers=args.workers, examples_per_shard=args.examples_per_shard,
        documents_per_chunk=args.documents_per_chunk, heldout_every=args.heldout_every,
        heldout_max=args.heldout_max, text_column=args.text_column, overwrite=args.overwrite)
    print(f'next: gluonbert-pretrain --data {shlex.quote(os.path.abspath(args.output))} '
          f'--model {shlex.quote(args.model)} --output-dir runs/pretrain ...')
    return {**manifest, 'seconds': seconds}


def pretrain_data_main(argv=None):
    """Entry point of ``gluonbert-pretrain-data``: parse ``argv``, run, return the exit
    status."""
    return run_command(PROG_PRETRAIN_DATA, pretrain_data,
                       build_pretrain_data_parser().parse_args(argv),
                       interrupted='; run the same command again to continue')


pretrain_data_entry = console_entry(pretrain_data_main)
