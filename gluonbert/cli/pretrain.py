"""``gluonbert-pretrain``: pre-train BERT (masked LM + next sentence) from scratch (a preset)
or from pretrained weights (further pre-training), on shards prepared by
``gluonbert-pretrain-data`` (``--data``) or on text files prepared first into
``OUTPUT_DIR/data`` (``--corpus``).

Phases of different lengths (BERT's 128 then 512 tokens) are runs on shard directories
prepared for each ``--max-len``, each run after the first starting from the previous one's
output directory (``--model``)."""
import argparse
import math
import os
import time

from ..config import BERTConfig
from ..data import ShardedPretrainingData, read_manifest
from ..errors import DataError, UsageError
from ..model import BERTForPretraining
from ..params import initialize_missing, parameter_counts
from ..engine.loop import DivergedError
from ..engine.runconfig import PretrainConfig
from ..pretrain import evaluate_pretraining, pretrain_loop
from ..pretrained import MINILM_NAME, load_pretrained, load_vocabulary, save_pretrained
from .common import (DEFAULT_LRS, KVSTORE_HELP, KVSTORES, check_at_least, claim_run,
                     default_lr, format_lr, join_group, model_kind, parse_contexts,
                     workers_note, write_metrics)
from .pretrain_data import MODEL_HELP, check_max_len, model_source, prepare
from .runner import console_entry, run_command

__all__ = ['PROG_PRETRAIN', 'build_pretrain_parser', 'pretrain', 'pretrain_main',
           'pretrain_entry']

PROG_PRETRAIN = 'gluonbert-pretrain'
CORPUS_MAX_LEN = 128  # --max-len with --corpus when not given
CORPUS_HELDOUT_EVERY = 10  # --corpus holds out every 10th example
MAX_POSITIONS = 8192  # --max-length: BERT's is 512; a table this long is already 8192 x units


def _add_data_arguments(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--data', metavar='DIR',
                        help='shards prepared by gluonbert-pretrain-data (with the same '
                             '--model)')
    source.add_argument('--corpus', nargs='+', metavar='FILE',
                        help='text files or glob patterns, prepared first into OUTPUT_DIR/data '
                             '(kept for a resume; prepared again when they or the settings '
                             'change): .txt (one sentence per line, blank line between '
                             'documents) or .csv/.tsv/.jsonl with one document per row')
    parser.add_argument('--text-column', default='text',
                        help='column of documents (csv/jsonl; --corpus)')
    parser.add_argument('--workers', type=int, default=1,
                        help='processes preparing --corpus')
    parser.add_argument('--examples-per-shard', type=int, default=8192,
                        help='shard size when preparing --corpus (each distributed worker '
                             'reads its own shards: at least one per worker)')
    parser.add_argument('--max-len', type=int, default=None,
                        help=f"tokens per example: with --data the shards' (a different value "
                             f"is an error), with --corpus {CORPUS_MAX_LEN} unless given")
    parser.add_argument('--max-predictions', type=int, default=None,
                        help='masked tokens per example (default: ceil(0.15 x max_len))')
    parser.add_argument('--whole-word-masking', action='store_true',
                        help='mask every WordPiece of a chosen word')
    parser.add_argument('--shuffle-buffer', type=int, default=10000,
                        help='training examples shuffled together while streaming')
    parser.add_argument('--eval-examples', type=int, default=1024,
                        help='held-out examples evaluated at every log and at the end')


def build_pretrain_parser():
    """The ``argparse`` parser of ``gluonbert-pretrain``."""
    parser = argparse.ArgumentParser(
        prog=PROG_PRETRAIN,
        description='Pre-train BERT (masked LM + next sentence), from scratch (a preset) or '
                    'from pretrained weights, on shards of gluonbert-pretrain-data (--data) '
                    'or on text files (--corpus).')
    _add_data_arguments(parser)
    parser.add_argument('--model', default='tiny',
                        help=f'{MODEL_HELP}. A preset is trained from scratch. Default: tiny')
    parser.add_argument('--max-length', type=int, default=None,
                        help="position embeddings of a preset trained from scratch (default: "
                             "the preset's, or max_len when longer); a pretrained model keeps "
                             "its own")
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--steps', type=int, default=1000)
    parser.add_argument('--lr', type=float, default=None,
                        help=f'peak learning rate (default {format_lr(DEFAULT_LRS["preset"][2])} '
                             f'from scratch, {format_lr(DEFAULT_LRS["pretrained"][2])} '
                             f'otherwise)')
    parser.add_argument('--warmup-ratio', type=float, default=0.1)
    parser.add_argument('--accumulate', type=int, default=1)
    parser.add_argument('--log-interval', type=int, default=50)
    parser.add_argument('--checkpoint-every', type=int, default=None,
                        help='updates between checkpoints (default: --log-interval)')
    parser.add_argument('--gpus', default='')
    parser.add_argument('--kvstore', default='device', choices=KVSTORES, help=KVSTORE_HELP)
    parser.add_argument('--output-dir', default='runs/pretrain')
    parser.add_argument('--resume', action='store_true',
                        help='continue from OUTPUT_DIR/checkpoints')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace the run in OUTPUT_DIR (without it, and without --resume, '
                             'a directory that holds a run is refused)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-progress', action='store_true')
    return parser


def _load_model(args, ctx, max_len, group):
    """``(model, vocab, tokenizer)``: a :class:`~gluonbert.BERTForPretraining` for
    ``--model``; heads its checkpoint lacks (MiniLM has none) are initialised."""
    if model_kind(args.model, pretraining=True) == 'preset':
        vocab, tokenizer = load_vocabulary(MINILM_NAME)
        max_length = args.max_length or max(BERTConfig.from_preset(args.model).max_length,
                                            max_len)
        config = BERTConfig.from_preset(args.model, vocab_size=len(vocab),
                                        max_length=max_length)
        model = BERTForPretraining(config)
        model.initialize(ctx=ctx)
        return model, vocab, tokenizer
    loaded, vocab, tokenizer = load_pretrained(model_source(args.model), ctx=ctx,
                                               with_heads=True)
    model = loaded if getattr(loaded, 'task', None) == 'pretraining' else \
        BERTForPretraining(bert=getattr(loaded, 'bert', loaded))
    initialize_missing(model, ctx)
    if args.max_length is not None and group.is_root:
        print(f'note: --max-length is ignored: {args.model} keeps its own position embeddings '
              f'(max_length {model.config.max_length})')
    return model, vocab, tokenizer


def _max_len(args, output_dir):
    """``(shard directory, max_len)``; with ``--data`` the manifest's max_len, which
    ``--max-len`` must match."""
    if args.corpus is not None:
        return os.path.join(output_dir, 'data'), args.max_len or CORPUS_MAX_LEN
    prepared = read_manifest(args.data)['settings']['max_len']
    if args.max_len is not None and args.max_len != prepared:
        raise UsageError(f'{args.data}: the shards were prepared for --max-len {prepared}; '
                         f'prepare them again with --max-len {args.max_len} '
                         f'(gluonbert-pretrain-data --max-len {args.max_len} --output '
                         f'ANOTHER_DIR ...), or leave --max-len out')
    return args.data, prepared


def _wait_for_root(group, failed=0.0):
    """Every worker of a distributed job waits here until rank 0 has prepared the
    ``--corpus`` shards (or failed to: ``failed`` on rank 0)."""
    if not group.is_distributed:
        return
    if group.metrics_are_global:
        failed = group.allreduce([failed])[0]
    else:  # dist_async: a value pushed to the servers would be taken for a gradient
        group.kvstore._barrier()  # noqa: SLF001  (MXNet's only worker barrier)
    if failed and not group.is_root:
        raise DataError('rank 0 could not prepare the --corpus shards (its error says why)')


def _prepare_corpus(args, data_dir, vocab, tokenizer, max_len, group):
    """Rank 0 prepares ``--corpus`` into ``data_dir`` (OUTPUT_DIR/data, the run's own:
    another preparation there is replaced) while the other workers wait."""
    if group.is_root:
        try:
            prepare(args.corpus, data_dir, vocab, tokenizer, progress=not args.no_progress,
                    max_len=max_len, seed=args.seed, workers=args.workers,
                    heldout_every=CORPUS_HELDOUT_EVERY, text_column=args.text_column,
                    examples_per_shard=args.examples_per_shard,
                    overwrite=True)
        except BaseException:
            _wait_for_root(group, failed=1.0)
            raise
    _wait_for_root(group)
    if not os.path.isfile(os.path.join(data_dir, 'manifest.json')):
        raise DataError(f'rank {group.rank} does not see the shards rank 0 prepared in '
                        f'{data_dir}: --corpus with several workers needs OUTPUT_DIR on a '
                        f'shared filesystem (or prepare the shards on every machine with '
                        f'gluonbert-pretrain-data and pass --data)')


def _open_data(args, data_dir, vocab, max_predictions, group):
    """``(training data, held-out data)``: the held-out split, or re-masked training
    examples when the shards have none."""
    masking = dict(max_predictions=max_predictions, whole_word_masking=args.whole_word_masking)
    data = ShardedPretrainingData(data_dir, vocab, split='train', seed=args.seed,
                                  shuffle_buffer=args.shuffle_buffer, **masking)
    split = 'heldout' if data.manifest['shards']['heldout'] else 'train'
    if split == 'train' and group.is_root:
        print('note: the shards have no held-out examples; the held-out figures are of '
              're-masked training examples')
    eval_data = ShardedPretrainingData(data_dir, vocab, split=split, seed=args.seed + 1,
                                       max_examples=args.eval_examples, **masking)
    return data, eval_data


def _check(args):
    check_at_least(args, 1, 'max_predictions', 'batch_size', 'steps', 'accumulate',
                   'log_interval', 'checkpoint_every', 'workers', 'shuffle_buffer',
                   'eval_examples', 'max_length', 'examples_per_shard')
    check_max_len(args.max_len)
    if args.resume and args.overwrite:
        raise UsageError('--resume continues the run in --output-dir, --overwrite replaces '
                         'it: give one of them')
    if args.max_length is not None and args.max_length > MAX_POSITIONS:
        raise UsageError(f'--max-length must be at most {MAX_POSITIONS} (position embeddings), '
                         f'got {args.max_length}')
    if args.max_length is not None and args.max_len is not None and \
            args.max_length < args.max_len:
        raise UsageError(f'--max-length {args.max_length} is shorter than --max-len '
                         f'{args.max_len}: the examples need a position embedding each')
    if args.max_predictions is not None and args.max_len is not None and \
            args.max_predictions > args.max_len:
        raise UsageError(f'--max-predictions must be at most --max-len ({args.max_len}), got '
                         f'{args.max_predictions}')
    # the training settings, checked where they are defined (an unset --lr takes the
    # model's default later)
    PretrainConfig.from_flags(args, checkpoint_dir=os.path.join(args.output_dir or '.',
                                                                'checkpoints'))


def _start_line(args, data, eval_data, lr, max_len, group):
    shards, evaluated = len(data.records), min(len(eval_data), args.eval_examples)
    return (f"pre-training {args.model} on {len(data):,} training examples in {shards:,} "
            f"shard{'' if shards == 1 else 's'}, {evaluated:,} held-out examples evaluated; "
            f"{args.steps} steps, batch {args.batch_size}, lr {lr:g}, max_len {max_len}, "
            f"max_predictions {data.max_predictions}"
            f"{workers_note(group, args.kvstore, args.batch_size)}")


def pretrain(args):
    """Run pre-training for parsed arguments; returns the metrics dict."""
    _check(args)
    group, contexts = join_group(args.kvstore, parse_contexts(args.gpus))
    ctx = contexts[0]
    output_dir = os.path.abspath(args.output_dir)
    if group.is_root:  # one run per OUTPUT_DIR, before anything loads
        claim_run(output_dir, 'step', resume=args.resume, overwrite=args.overwrite)
    data_dir, max_len = _max_len(args, output_dir)
    if args.max_predictions is not None and args.max_predictions > max_len:
        raise UsageError(f'--max-predictions must be at most the examples\' length ({max_len}), '
                         f'got {args.max_predictions}')
    model, vocab, tokenizer = _load_model(args, ctx, max_len, group)
    if max_len > model.config.max_length:
        hint = ('raise --max-length' if model_kind(args.model, pretraining=True) == 'preset'
                else 'prepare the data with a smaller --max-len')
        raise UsageError(f'the examples are {max_len} tokens long (--max-len), but {args.model} '
                         f'has {model.config.max_length} position embeddings (max_length); '
                         f'{hint}')
    if group.is_root:  # only rank 0 writes OUTPUT_DIR
        os.makedirs(output_dir, exist_ok=True)
    if args.corpus is not None:
        _prepare_corpus(args, data_dir, vocab, tokenizer, max_len, group)
    data, eval_data = _open_data(args, data_dir, vocab,
                                 args.max_predictions or math.ceil(0.15 * max_len), group)
    lr = args.lr or default_lr(args.model, pretraining=True)
    model.hybridize(static_alloc=True)
    if group.is_root:
        print(_start_line(args, data, eval_data, lr, max_len, group), flush=True)
    started = time.perf_counter()
    config = PretrainConfig.from_flags(
        args, lr=lr, checkpoint_dir=os.path.join(output_dir, 'checkpoints'),
        metrics_path=os.path.join(output_dir, 'metrics.jsonl'), progress=not args.no_progress)
    records = pretrain_loop(model, data, config=config, ctx=ctx, eval_data=eval_data)
    seconds = time.perf_counter() - started
    if not group.is_root:  # rank 0 evaluates and saves the model
        return {'rank': group.rank, 'num_workers': group.num_workers, 'records': records}
    return _finish(args, model, (vocab, tokenizer), eval_data.batches(args.batch_size, ctx=ctx),
                   output_dir, seconds, group, records,
                   {'data_dir': os.path.abspath(data_dir), 'max_len': max_len,
                    'train_examples': len(data),
                    'eval_examples': min(len(eval_data), args.eval_examples)})


def _finish(args, model, vocabulary, eval_batches, output_dir, seconds, group, records, data):
    """Evaluate on the held-out batches, save the model and the metrics, and say so."""
    final = evaluate_pretraining(model, eval_batches)
    for key in ('mlm_loss', 'nsp_loss'):  # the last update may have overflowed the weights
        if not math.isfinite(final[key]):
            raise DivergedError(f'training diverged: the held-out {key} is {final[key]} after '
                                f'update {args.steps}; the model was not saved: lower the '
                                f'learning rate (--lr)')
    model_dir = os.path.join(output_dir, 'model')
    save_pretrained(model, *vocabulary, model_dir,
                    extra={'pretrained_from': args.model, 'steps': args.steps,
                           'max_len': data['max_len']})
    metrics = {**final, 'steps': args.steps, 'seconds': seconds,
               'sequences_per_second': args.steps * args.batch_size * args.accumulate *
               group.num_workers / seconds, 'model_dir': model_dir,
               'kvstore': args.kvstore, 'num_workers': group.num_workers, **data,
               'parameters': parameter_counts(model), 'records': records}
    write_metrics(output_dir, metrics)
    print(f"held-out: MLM accuracy {final['mlm_accuracy']:.4f}, MLM loss "
          f"{final['mlm_loss']:.4f} (perplexity {final['mlm_perplexity']:.1f}), NSP accuracy "
          f"{final['nsp_accuracy']:.4f}; {metrics['sequences_per_second']:.1f} sequences/s")
    print(f'model saved to {model_dir} (fine-tune it with: gluonbert-finetune --model '
          f'{model_dir}; pre-train further with: gluonbert-pretrain --model {output_dir} ...)')
    return metrics


def pretrain_main(argv=None):
    """Entry point of ``gluonbert-pretrain``: parse ``argv``, run, return the exit status."""
    return run_command(PROG_PRETRAIN, pretrain, build_pretrain_parser().parse_args(argv),
                       interrupted='; continue with --resume')


pretrain_entry = console_entry(pretrain_main)
