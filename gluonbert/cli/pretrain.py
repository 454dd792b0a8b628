"""``gluonbert-pretrain``: pre-train BERT (masked LM + next sentence) on a text corpus, from
scratch (a preset) or from pretrained weights (further pre-training)."""
import argparse
import os
import time

from ..config import BERTConfig
from ..errors import UsageError
from ..model import BERTForPretraining
from ..params import initialize_missing, parameter_counts
from ..pretrain import PretrainingData, evaluate_pretraining, pretrain_loop, read_corpus
from ..pretrained import MINILM_NAME, load_pretrained, save_pretrained
from .common import (DEFAULT_LRS, KVSTORE_HELP, KVSTORES, check_at_least, default_lr,
                     format_lr, join_group, model_kind, parse_contexts, workers_note,
                     write_metrics)
from .runner import console_entry, run_command

__all__ = ['PROG_PRETRAIN', 'build_pretrain_parser', 'pretrain', 'pretrain_main',
           'pretrain_entry']

PROG_PRETRAIN = 'gluonbert-pretrain'


def build_pretrain_parser():
    """The ``argparse`` parser of ``gluonbert-pretrain``."""
    parser = argparse.ArgumentParser(
        prog=PROG_PRETRAIN,
        description='Pre-train BERT (masked LM + next sentence) on a text corpus, from '
                    'scratch (a preset) or from pretrained weights (further pre-training).')
    parser.add_argument('--corpus', required=True,
                        help='.txt (one sentence per line, blank line between documents) or '
                             '.csv/.tsv/.jsonl with one document per row')
    parser.add_argument('--text-column', default='text', help='column of documents (csv/jsonl)')
    parser.add_argument('--model', default='tiny',
                        help="a preset (tiny, bert_12_768_12, ...) trained from scratch with "
                             "the embedded WordPiece vocabulary, 'minilm', a GluonNLP zoo "
                             "name, or a model directory. Default: tiny")
    parser.add_argument('--max-len', type=int, default=128)
    parser.add_argument('--max-predictions', type=int, default=20)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--steps', type=int, default=1000)
    parser.add_argument('--lr', type=float, default=None,
                        help=f'peak learning rate (default {format_lr(DEFAULT_LRS["preset"][2])} '
                             f'from scratch, {format_lr(DEFAULT_LRS["pretrained"][2])} '
                             f'otherwise)')
    parser.add_argument('--warmup-ratio', type=float, default=0.1)
    parser.add_argument('--accumulate', type=int, default=1)
    parser.add_argument('--log-interval', type=int, default=50)
    parser.add_argument('--gpus', default='')
    parser.add_argument('--kvstore', default='device', choices=KVSTORES, help=KVSTORE_HELP)
    parser.add_argument('--output-dir', default='runs/pretrain')
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-progress', action='store_true')
    return parser


def _load_model(args, ctx, max_len):
    """``(model, vocab, tokenizer)``: a :class:`~gluonbert.BERTForPretraining` for
    ``--model``; heads its checkpoint lacks (MiniLM has none) are initialised."""
    if model_kind(args.model, pretraining=True) == 'preset':
        _, vocab, tokenizer = load_pretrained(MINILM_NAME)
        config = BERTConfig.from_preset(args.model, vocab_size=len(vocab),
                                        max_length=max(max_len, 64))
        model = BERTForPretraining(config)
        model.initialize(ctx=ctx)
        return model, vocab, tokenizer
    loaded, vocab, tokenizer = load_pretrained(args.model, ctx=ctx, with_heads=True)
    model = loaded if isinstance(loaded, BERTForPretraining) else \
        BERTForPretraining(bert=getattr(loaded, 'bert', loaded))
    initialize_missing(model, ctx)
    return model, vocab, tokenizer


def _split_corpus(documents, tokenizer, vocab, args):
    """``(train data, held-out data, train documents, held-out documents)``: the last tenth
    of the documents (at least 2) are held out; with fewer than 6 documents the held-out
    batches are re-masked training documents."""
    held_out = max(2, len(documents) // 10) if len(documents) >= 6 else 0
    train_docs = documents[:len(documents) - held_out] if held_out else documents
    eval_docs = documents[len(documents) - held_out:] if held_out else documents
    options = dict(max_len=args.max_len, max_predictions=args.max_predictions)
    return (PretrainingData(train_docs, tokenizer, vocab, seed=args.seed, **options),
            PretrainingData(eval_docs, tokenizer, vocab, seed=args.seed + 1, **options),
            train_docs, eval_docs)


def pretrain(args):
    """Run pre-training for parsed arguments; returns the metrics dict."""
    check_at_least(args, 1, 'max_predictions', 'batch_size', 'steps', 'accumulate',
                   'log_interval')
    if not 5 <= args.max_len <= 512:
        raise UsageError(f'--max-len must be in [5, 512], got {args.max_len}')
    group, contexts = join_group(args.kvstore, parse_contexts(args.gpus))
    ctx = contexts[0]
    documents = read_corpus(args.corpus, text_column=args.text_column)
    model, vocab, tokenizer = _load_model(args, ctx, args.max_len)
    if args.max_len > model.config.max_length:
        raise UsageError(f'--max-len {args.max_len} exceeds the model max_length '
                         f'{model.config.max_length}')
    data, eval_data, train_docs, eval_docs = _split_corpus(documents, tokenizer, vocab, args)
    output_dir = os.path.abspath(args.output_dir)
    if group.is_root:  # only rank 0 writes OUTPUT_DIR
        os.makedirs(output_dir, exist_ok=True)
    lr = args.lr or default_lr(args.model, pretraining=True)
    model.hybridize(static_alloc=True)
    if group.is_root:
        print(f'pre-training {args.model} on {len(train_docs)} documents ({len(data)} examples '
              f'per epoch), {len(eval_docs)} held out; {args.steps} steps, batch '
              f'{args.batch_size}, lr {lr:g}, max_len {args.max_len}'
              f'{workers_note(group, args.kvstore, args.batch_size)}', flush=True)
    started = time.perf_counter()
    records = pretrain_loop(
        model, data, steps=args.steps, batch_size=args.batch_size, lr=lr, ctx=ctx,
        eval_data=eval_data, warmup_ratio=args.warmup_ratio, accumulate=args.accumulate,
        seed=args.seed, checkpoint_dir=os.path.join(output_dir, 'checkpoints'),
        resume=args.resume, metrics_path=os.path.join(output_dir, 'metrics.jsonl'),
        log_interval=args.log_interval, progress=not args.no_progress, kvstore=args.kvstore)
    seconds = time.perf_counter() - started
    if not group.is_root:  # rank 0 evaluates and saves the model
        return {'rank': group.rank, 'num_workers': group.num_workers, 'records': records}
    return _finish(args, model, vocab, tokenizer, eval_data.batches(args.batch_size, ctx=ctx),
                   output_dir, seconds, group, records)


def _finish(args, model, vocab, tokenizer, eval_batches, output_dir, seconds, group, records):
    """Evaluate on the held-out batches, save the model and the metrics, and say so."""
    final = evaluate_pretraining(model, eval_batches)
    model_dir = os.path.join(output_dir, 'model')
    save_pretrained(model, vocab, tokenizer, model_dir,
                    extra={'pretrained_from': args.model, 'steps': args.steps})
    metrics = {**final, 'steps': args.steps, 'seconds': seconds,
               'sequences_per_second': args.steps * args.batch_size * args.accumulate *
               group.num_workers / seconds, 'model_dir': model_dir,
               'kvstore': args.kvstore, 'num_workers': group.num_workers,
               'parameters': parameter_counts(model), 'records': records}
    write_metrics(output_dir, metrics)
    print(f"held-out: MLM accuracy {final['mlm_accuracy']:.4f}, MLM loss "
          f"{final['mlm_loss']:.4f} (perplexity {final['mlm_perplexity']:.1f}), NSP accuracy "
          f"{final['nsp_accuracy']:.4f}; {metrics['sequences_per_second']:.1f} sequences/s")
    print(f'model saved to {model_dir} (fine-tune it with: gluonbert-finetune --model '
          f'{model_dir})')
    return metrics


def pretrain_main(argv=None):
    """Entry point of ``gluonbert-pretrain``: parse ``argv``, run, return the exit status."""
    return run_command(PROG_PRETRAIN, pretrain, build_pretrain_parser().parse_args(argv),
                       interrupted='; continue with --resume')


pretrain_entry = console_entry(pretrain_main)
