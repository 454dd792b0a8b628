"""Command-line tools: ``gluonbert-finetune`` and ``gluonbert-predict``.

Errors the user can fix (bad flags, missing files, bad data, offline downloads, a CPU
without what was asked for) print one line and exit with status 2; anything else is a bug
and prints its traceback (exit status 1).
"""
import argparse
import atexit
import codecs
import contextlib
import io
import itertools
import json
import os
import sys
import time

from .errors import GluonbertError, UsageError
from .hardware import require_bf16

__all__ = ['finetune_main', 'predict_main', 'pretrain_main', 'build_finetune_parser']

PROG_FINETUNE = 'gluonbert-finetune'
PROG_PREDICT = 'gluonbert-predict'


def _fail(prog, message, error):
    """Print the one line for a user error; GLUONBERT_DEBUG=1 shows its traceback."""
    if os.environ.get('GLUONBERT_DEBUG') == '1':
        raise error
    print(f'{prog}: error: {message}', file=sys.stderr)
    return 2


def _file_problem(err):
    """The one line for an OSError about a named file (a missing or unreadable input, a
    full disk); None for other OSErrors, which are bugs and keep their traceback."""
    if err.filename is None:
        return None
    return f'{err.filename}: {err.strerror or err}'


def run_command(prog, command, args, *, interrupted=''):
    """Run ``command(args)`` for a console script: 0 on success; a user error (a
    :class:`~gluonbert.errors.GluonbertError`, or an OSError naming a file) prints one line
    and returns 2; any other exception is a bug and propagates with its traceback (exit 1);
    Ctrl-C prints ``interrupted`` (e.g. how to resume) and returns 130."""
    try:
        command(args)
    except GluonbertError as err:
        return _fail(prog, str(err), err)
    except OSError as err:
        message = _file_problem(err)
        if message is None:
            raise
        return _fail(prog, message, err)
    except KeyboardInterrupt:
        print(f'\n{prog}: interrupted{interrupted}', file=sys.stderr)
        return 130
    return 0


def exit_now(code):
    """End a console command with ``code`` at once: atexit handlers run and stdout/stderr are
    flushed, then the process exits without Python's teardown, which for a trained MXNet
    process (freeing its memory pools, C++ destructors) took 0.2 s of a 28 s fine-tune.
    Everything the command writes is closed before it returns."""
    atexit._run_exitfuncs()  # pylint: disable=protected-access
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code or 0)


def console_entry(main):
    """``main(argv) -> exit code`` as a console-script entry point that ends with
    :func:`exit_now` (an exception still ends the process the usual way)."""
    def entry(argv=None):
        exit_now(main(argv))
    entry.__doc__ = main.__doc__
    return entry


KVSTORE_HELP = ("device (default) or local: one process, data parallel over --gpus; "
                "dist_sync, dist_device_sync, dist_async: parameter servers, start the job with "
                "gluonbert-launch; horovod: start it with horovodrun. With several workers "
                "--batch-size is per worker and only rank 0 writes OUTPUT_DIR")


def _kvstore_choices():
    from .distributed import KVSTORES
    return KVSTORES


def _join_group(kvstore, contexts):
    """The distributed group; under Horovod each process keeps GPU LOCAL_RANK of --gpus."""
    from .distributed import get_group
    group = get_group(kvstore)
    if kvstore == 'horovod' and len(contexts) > 1:
        if group.local_rank >= len(contexts):
            raise UsageError(f'horovod local rank {group.local_rank} has no GPU in --gpus '
                             f'(give one GPU id per process on this machine)')
        contexts = [contexts[group.local_rank]]
    return group, contexts


def _contexts(gpus):
    import mxnet as mx
    if gpus is None or gpus.strip() == '':
        return [mx.cpu()]
    try:
        ids = [int(g) for g in gpus.split(',') if g.strip()]
    except ValueError as err:
        raise UsageError(f'--gpus takes comma-separated GPU ids, e.g. 0 or 0,1; got {gpus!r}') \
            from err
    available = mx.context.num_gpus()
    missing = [i for i in ids if i >= available]
    if missing:
        raise UsageError(f'GPU {missing[0]} requested but this MXNet sees {available} GPU(s) '
                         f'(is a CUDA build of MXNet, e.g. mxnet-cu117, installed?)')
    return [mx.gpu(i) for i in ids]


def build_finetune_parser():
    parser = argparse.ArgumentParser(
        prog=PROG_FINETUNE,
        description='Fine-tune BERT for text classification. With no arguments: the embedded '
                    'MiniLM on the bundled movie reviews, on CPU.')
    model = parser.add_argument_group('model and data')
    model.add_argument('--model', default='minilm',
                       help="'minilm' (embedded), bert_12_768_12 / bert_24_1024_16 (GluonNLP "
                            "zoo), a model directory, or a config preset such as 'tiny' "
                            "(random initialisation, for smoke runs). Default: minilm")
    model.add_argument('--dataset', default=None,
                       help="'sample' (bundled reviews, default), 'imdb' (downloads), or an "
                            "aclImdb directory")
    model.add_argument('--train', help='training file (.csv, .tsv, .jsonl or .parquet)')
    model.add_argument('--test', help='test file (.csv, .tsv, .jsonl or .parquet)')
    model.add_argument('--text-column', default='text')
    model.add_argument('--text-pair-column', default=None, metavar='COLUMN',
                       help='second text of sentence-pair tasks (GLUE MRPC, RTE, QNLI, ...): '
                            'the input is [CLS] text [SEP] pair [SEP], segments 0 then 1')
    model.add_argument('--label-column', default='label')
    model.add_argument('--labels', default=None,
                       help='comma-separated label names, in id order, for other label sets; '
                            'numbers (e.g. 1,5) match labels by value')
    model.add_argument('--quoting', choices=('minimal', 'none'), default=None,
                       help="CSV/TSV quoting: 'minimal' (default; as the csv module and pandas "
                            "write) or 'none' (quotes are text, as in GLUE's TSV files)")
    seq = parser.add_argument_group('sequence')
    seq.add_argument('--max-len', type=int, default=128)
    seq.add_argument('--truncate', choices=('head', 'head+tail'), default='head')
    opt = parser.add_argument_group('optimisation')
    opt.add_argument('--batch-size', type=int, default=32)
    opt.add_argument('--epochs', type=int, default=None,
                     help='passes over the training data (default 3; 5 for minilm, whose '
                          'bundled sample is small)')
    opt.add_argument('--lr', type=float, default=None,
                     help='peak learning rate (default 5e-5, 3e-4 for minilm; with LoRA '
                          '1e-3, 5e-3 for minilm; 1e-3 for a preset trained from scratch)')
    opt.add_argument('--warmup-ratio', type=float, default=0.1)
    opt.add_argument('--weight-decay', type=float, default=0.01)
    opt.add_argument('--optimizer', choices=('adamw', 'bertadam'), default='adamw',
                     help="adamw (default; bias-corrected) or GluonNLP's bertadam")
    opt.add_argument('--accumulate', type=int, default=1)
    opt.add_argument('--dropout', type=float, default=0.1, help='classifier dropout')
    opt.add_argument('--dtype', choices=('float32', 'float16', 'bfloat16'), default='float32')
    lora = parser.add_argument_group(
        'LoRA', 'train low-rank adapters and the head only; writes OUTPUT_DIR/adapter (small) '
                'as well as the merged OUTPUT_DIR/model')
    lora.add_argument('--lora-rank', type=int, default=None, metavar='R',
                      help='enable LoRA with this rank (e.g. 8)')
    lora.add_argument('--lora-alpha', type=float, default=None, metavar='A',
                      help='update scale numerator: the update is scaled by A/R (default 16)')
    lora.add_argument('--lora-targets', default=None, metavar='NAMES',
                      help='comma-separated projections from query,key,value,out_proj,'
                           'ffn_1,ffn_2 (default query,value)')
    lora.add_argument('--lora-dropout', type=float, default=None, metavar='P',
                      help='dropout on the LoRA branch input (default 0)')
    dev = parser.add_argument_group('devices')
    dev.add_argument('--gpus', default='', help='comma-separated GPU ids; empty means CPU')
    dev.add_argument('--kvstore', default='device', choices=_kvstore_choices(),
                     help=KVSTORE_HELP)
    run = parser.add_argument_group('run control')
    run.add_argument('--output-dir', default='runs/finetune')
    run.add_argument('--resume', action='store_true',
                     help='continue from OUTPUT_DIR/checkpoints')
    run.add_argument('--seed', type=int, default=0)
    run.add_argument('--early-stop', type=int, default=None, metavar='N',
                     help='stop after N epochs without a better test accuracy')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    run.add_argument('--profile', action='store_true',
                     help='print where the wall time went (loading, tokenizing, forward/'
                          'backward, updates, evaluation, saving) and store it in '
                          'metrics.json; the run is slightly slower')
    return parser


def _validate_finetune_args(args):
    if args.max_len < 3 or args.max_len > 512:
        raise UsageError(f'--max-len must be in [3, 512], got {args.max_len}')
    for flag in ('batch_size', 'epochs', 'accumulate'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f'--{flag.replace("_", "-")} must be >= 1, got {getattr(args, flag)}')
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f'--lr must be > 0, got {args.lr}')
    if not 0 <= args.warmup_ratio < 1:
        raise UsageError(f'--warmup-ratio must be in [0, 1), got {args.warmup_ratio}')
    if bool(args.train) != bool(args.test):
        raise UsageError('--train and --test go together')
    if args.train and args.dataset:
        raise UsageError('give either --train/--test or --dataset, not both')
    _validate_data_args(args)
    if args.dtype == 'bfloat16' and not args.gpus:  # before anything loads
        require_bf16('--dtype bfloat16', 'use --dtype float32')
    _validate_lora_args(args)


def _validate_data_args(args):
    from .data import check_data_file
    for path in (args.train, args.test):
        if path:
            check_data_file(path)  # exists, is a file, has a suffix we read
    if args.dataset and os.path.isfile(args.dataset):
        raise UsageError(f'--dataset takes sample, imdb or an aclImdb directory; give data '
                         f'files with --train {args.dataset} --test TEST_FILE')
    if args.text_pair_column:
        if not args.train:
            raise UsageError('--text-pair-column needs --train/--test files')
        if args.truncate != 'head':
            raise UsageError('--truncate head+tail is for single texts; sentence pairs trim '
                             'the longer text')
        if args.max_len < 4:
            raise UsageError(f'--max-len must be >= 4 for sentence pairs, got {args.max_len}')
    if args.quoting and not args.train:
        raise UsageError('--quoting is for --train/--test CSV or TSV files')


LORA_DEFAULTS = {'lora_alpha': 16.0, 'lora_targets': 'query,value', 'lora_dropout': 0.0}


def _validate_lora_args(args):
    """Check the --lora-* flags and fill in the defaults of those not given."""
    from .lora import _normalise_targets
    if args.lora_rank is None:
        given = [f'--{k.replace("_", "-")}' for k in LORA_DEFAULTS if getattr(args, k) is not None]
        if given:
            raise UsageError(f'{", ".join(given)} need(s) --lora-rank')
        return
    for key, value in LORA_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.lora_rank < 1:
        raise UsageError(f'--lora-rank must be >= 1, got {args.lora_rank}')
    if not args.lora_alpha > 0:
        raise UsageError(f'--lora-alpha must be > 0, got {args.lora_alpha:g}')
    if not 0 <= args.lora_dropout < 1:
        raise UsageError(f'--lora-dropout must be in [0, 1), got {args.lora_dropout:g}')
    try:
        args.lora_targets = ','.join(_normalise_targets(args.lora_targets))
    except ValueError as err:
        raise UsageError(f'--lora-targets: {err}') from err


def _load_model(args, ctx):
    """(bert, vocab, tokenizer, default lr) for --model."""
    from .config import PRESETS, BERTConfig
    from .model import BERTModel
    from .pretrained import MINILM_NAME, load_pretrained
    if args.model in PRESETS:
        # a fresh model of that shape, with the embedded model's WordPiece vocabulary
        _, vocab, tokenizer = load_pretrained(MINILM_NAME)
        config = BERTConfig.from_preset(args.model, vocab_size=len(vocab))
        bert = BERTModel(config)
        bert.initialize(ctx=ctx)
        return bert, vocab, tokenizer, 1e-3
    model, vocab, tokenizer = load_pretrained(args.model, ctx=ctx)
    # a pre-training or fine-tuning output directory: continue from its encoder
    bert = getattr(model, 'bert', model)
    return bert, vocab, tokenizer, 3e-4 if args.model == MINILM_NAME else 5e-5


def _load_data(args):
    from .data import load_dataset, read_table
    labels = [s.strip() for s in args.labels.split(',')] if args.labels else None
    if args.train:
        options = {'text_column': args.text_column, 'label_column': args.label_column,
                   'labels': labels, 'text_pair_column': args.text_pair_column}
        if args.quoting:
            options['quoting'] = args.quoting
        return read_table(args.train, **options), read_table(args.test, **options)
    name = args.dataset or 'sample'
    return load_dataset(name, 'train'), load_dataset(name, 'test')


def _save_adapter(args, net, vocab, tokenizer, output_dir):
    """Save LoRA adapters to OUTPUT_DIR/adapter, then merge them into ``net`` (in place).

    The adapter names its base by ``--model``; a preset's random base cannot be rebuilt
    from its name, so it is saved to OUTPUT_DIR/base first.
    """
    import mxnet as mx
    from .config import PRESETS
    from .convert import assign_parameters
    from .lora import _lora_settings, base_parameters, merge_lora, save_lora
    from .model import BERTModel
    from .pretrained import save_pretrained
    base_model = args.model
    if args.model in PRESETS:
        base = BERTModel(net.config)
        base.initialize(ctx=mx.cpu())
        assign_parameters(base, {name: p.data() for name, p in base_parameters(net.bert).items()},
                          source='the frozen base')
        base_model = save_pretrained(base, vocab, tokenizer, os.path.join(output_dir, 'base'),
                                     extra={'base_model': args.model})
    rank, alpha, dropout, targets = _lora_settings(net)
    adapter_dir = save_lora(net, os.path.join(output_dir, 'adapter'), base_model=base_model,
                            max_len=args.max_len,
                            extra={'max_len': args.max_len, 'truncate': args.truncate})
    adapter_bytes = sum(os.path.getsize(os.path.join(adapter_dir, f))
                        for f in os.listdir(adapter_dir))
    merge_lora(net)  # the merged model predicts at full speed with the usual tools
    return {'adapter_dir': adapter_dir, 'adapter_bytes': adapter_bytes,
            'lora': {'rank': rank, 'alpha': alpha, 'dropout': dropout, 'targets': targets}}


@contextlib.contextmanager
def _claim_output_dir(path, group):
    """``--output-dir`` as an absolute path, created and locked (``OUTPUT_DIR/.lock``) for
    the run's life, so that a second run on it fails at once; on rank 0 only, the one
    worker that writes there."""
    from ._io import DirectoryLock
    output_dir = os.path.abspath(path)
    if not group.is_root:
        yield output_dir
        return
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f'--output-dir {path} is a file; give a directory')
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as err:
        raise UsageError(f'--output-dir {path}: cannot create it ({err.strerror or err})') \
            from err
    with DirectoryLock(output_dir):
        yield output_dir


def finetune(args):
    """Run fine-tuning for parsed arguments; returns the metrics dict."""
    _validate_finetune_args(args)
    contexts = _contexts(args.gpus)
    group, contexts = _join_group(args.kvstore, contexts)
    # one run per OUTPUT_DIR, claimed before the data and the model load
    with _claim_output_dir(args.output_dir, group) as output_dir:
        return _finetune(args, contexts, group, output_dir)


def _finetune(args, contexts, group, output_dir):
    """:func:`finetune` once OUTPUT_DIR is claimed."""
    import mxnet as mx
    from .data import BERTTransform, make_dataloader
    from .model import BERTClassifier
    from .lora import apply_lora, lora_parameter_counts
    from .predict import predict_sentiment
    from .pretrained import MINILM_NAME, save_pretrained
    from .timing import NO_TIMER, PhaseTimer
    from .train import load_best_parameters, train_loop

    started = time.perf_counter()
    timer = PhaseTimer() if args.profile else NO_TIMER
    with timer('read_data'):  # bad data fails before the model loads
        train_set, test_set = _load_data(args)
    if train_set.label_names != test_set.label_names:
        raise UsageError(f'train labels {train_set.label_names} and test labels '
                         f'{test_set.label_names} differ')
    label_names = train_set.label_names
    with timer('load_model'):
        bert, vocab, tokenizer, default_lr = _load_model(args, contexts)
    if args.epochs is None:
        args.epochs = 5 if args.model == MINILM_NAME else 3
    if args.max_len > bert.config.max_length:
        raise UsageError(f'--max-len {args.max_len} exceeds the model max_length '
                         f'{bert.config.max_length}')
    transform = BERTTransform(tokenizer, vocab, max_len=args.max_len, truncate=args.truncate,
                              pair=train_set.text_pairs is not None)
    round_to = 8 if contexts[0].device_type == 'gpu' else None
    # each worker of a distributed job reads its own shard (equal shards for training)
    with timer('tokenize'):
        shards = dict(num_shards=group.num_workers, shard_index=group.rank)
        train_data = make_dataloader(train_set, transform, batch_size=args.batch_size,
                                     shuffle=True, seed=args.seed, pad_id=vocab.pad_id,
                                     round_to=round_to, **shards)
        test_data = make_dataloader(test_set, transform, batch_size=args.batch_size,
                                    shuffle=False, seed=args.seed, pad_id=vocab.pad_id,
                                    round_to=round_to, even_shards=False, **shards)

    mx.random.seed(args.seed)
    net = BERTClassifier(bert, num_classes=len(label_names), dropout=args.dropout)
    net.classifier.initialize(ctx=contexts)
    net.label_names = label_names
    if args.lora_rank is None:
        counts = lora_parameter_counts(net)  # everything trainable
    else:
        try:
            counts = apply_lora(net, rank=args.lora_rank, alpha=args.lora_alpha,
                                dropout=args.lora_dropout, targets=args.lora_targets)
        except ValueError as err:
            raise UsageError(f'--lora-rank/--lora-targets: {err}') from err
        if default_lr < 1e-3:
            # LoRA trains few parameters, from zero: it wants a step ~10x larger
            default_lr = 5e-3 if args.model == MINILM_NAME else 1e-3
        print(f'LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g} on '
              f'{args.lora_targets}: {counts}', flush=True)
    net.hybridize(static_alloc=True)

    lr = args.lr or default_lr
    workers = (f', {group.num_workers} workers ({args.kvstore}, global batch '
               f'{args.batch_size * group.num_workers})' if group.is_distributed else '')
    if group.is_root:
        print(f'fine-tuning {args.model} on {len(train_set)} train / {len(test_set)} test '
              f'examples ({", ".join(label_names)}), {args.epochs} epochs, batch '
              f'{args.batch_size}, lr {lr:g}, max_len {args.max_len}, '
              f'{", ".join(map(str, contexts))}{workers}; padding waste '
              f'{train_data.padding_waste:.1%} with length bucketing', flush=True)
    history = train_loop(
        net, train_data, test_data, args.epochs, lr, contexts,
        optimizer=args.optimizer, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, accumulate=args.accumulate, dtype=args.dtype,
        seed=args.seed, checkpoint_dir=os.path.join(output_dir, 'checkpoints'),
        resume=args.resume, early_stop=args.early_stop,
        metrics_path=os.path.join(output_dir, 'metrics.jsonl'),
        plot_path=os.path.join(output_dir, 'history.png'), progress=not args.no_progress,
        kvstore=args.kvstore, timer=timer,
        # flags that change the results besides train_loop's own: --resume checks them
        run_info={'batch_size': args.batch_size, 'max_len': args.max_len,
                  'truncate': args.truncate, 'dropout': args.dropout,
                  'lora': None if args.lora_rank is None else {
                      'rank': args.lora_rank, 'alpha': args.lora_alpha,
                      'dropout': args.lora_dropout, 'targets': args.lora_targets}})
    if not group.is_root:  # rank 0 saves the model and the metrics
        return {'rank': group.rank, 'num_workers': group.num_workers, 'history': list(history)}

    best = history.best
    model_dir = os.path.join(output_dir, 'model')
    with timer('save'):  # the best epoch's weights, checked against their checkpoint
        load_best_parameters(net, os.path.join(output_dir, 'checkpoints'), contexts)
        net.extra = {'max_len': args.max_len, 'truncate': args.truncate}
        lora = _save_adapter(args, net, vocab, tokenizer, output_dir) \
            if args.lora_rank is not None else {}
        save_pretrained(net, vocab, tokenizer, model_dir,
                        extra={'max_len': args.max_len, 'truncate': args.truncate,
                               'base_model': args.model,
                               **({'lora': lora['lora']} if lora else {})})
    train_seconds = sum(r['seconds'] for r in history)
    train_examples = sum(r['samples_per_second'] * r['seconds'] for r in history)
    metrics = {
        'test_accuracy': best['test_accuracy'] if best else None,
        'best_epoch': best['epoch'] + 1 if best else None,
        'final_test_accuracy': history[-1]['test_accuracy'] if history else None,
        'epochs_run': len(history),
        'train_seconds': train_seconds,
        'train_samples_per_second': train_examples / train_seconds if train_seconds else None,
        'wall_seconds': time.perf_counter() - started,
        'model': args.model, 'train_examples': len(train_set), 'test_examples': len(test_set),
        'label_names': label_names, 'max_len': args.max_len, 'batch_size': args.batch_size,
        'lr': lr, 'optimizer': args.optimizer, 'epochs': args.epochs,
        'kvstore': args.kvstore, 'num_workers': group.num_workers,
        'dtype': args.dtype, 'padding_waste': train_data.padding_waste,
        'model_dir': model_dir, 'history': list(history),
        'trainable_parameters': counts.trainable, 'total_parameters': counts.total,
        'trainable_fraction': counts.fraction,
        'adapter_dir': lora.get('adapter_dir'), 'adapter_bytes': lora.get('adapter_bytes'),
        'lora': lora.get('lora'),
    }
    example = 'this movie is so great'
    with timer('predict'):
        prediction = predict_sentiment(net, contexts[0], vocab, tokenizer, example)
    if timer is not NO_TIMER:
        wall = time.perf_counter() - started
        from . import ops
        metrics['profile'] = dict(timer.to_dict(wall),
                                  outside_forward_backward=timer.share_outside(wall),
                                  fused_ops=ops.status())
    from .train import _write_text
    _write_text(os.path.join(output_dir, 'metrics.json'), json.dumps(metrics, indent=2) + '\n')
    print(f"test accuracy {metrics['test_accuracy']:.4f} (epoch {metrics['best_epoch']}), "
          f"{metrics['train_samples_per_second']:.1f} train samples/s, "
          f"{metrics['wall_seconds']:.0f} s in all")
    print(f'model saved to {model_dir}')
    if lora:
        print(f"LoRA adapter ({lora['adapter_bytes']:,} bytes) saved to {lora['adapter_dir']}")
    print(f'predict_sentiment({example!r}) -> {prediction.label} '
          f'(p={prediction.probability:.3f})')
    if 'profile' in metrics:
        print('where the time went (--profile):')
        for line in timer.table(metrics['profile']['wall_seconds']):
            print('  ' + line)
        print(f"  {metrics['profile']['outside_forward_backward']:.1%} of the wall time outside "
              f"forward/backward passes (training and evaluation)")
    return metrics


def finetune_main(argv=None):
    """Entry point of ``gluonbert-finetune``."""
    args = build_finetune_parser().parse_args(argv)
    checkpoints = os.path.join(args.output_dir, 'checkpoints')
    return run_command(PROG_FINETUNE, finetune, args,
                       interrupted=f'; continue with --resume (checkpoints are in {checkpoints})')


def build_predict_parser():
    parser = argparse.ArgumentParser(
        prog=PROG_PREDICT,
        description='Classify texts with a fine-tuned model; one JSON line per text. Reads '
                    'one text per line from stdin when no TEXT is given.')
    parser.add_argument('--model-dir', required=True,
                        help='directory written by gluonbert-finetune: OUTPUT_DIR/model, or '
                             'OUTPUT_DIR/adapter for a LoRA adapter (its base is loaded too)')
    parser.add_argument('texts', nargs='*', metavar='TEXT')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--max-len', type=int, default=None)
    parser.add_argument('--gpus', default='')
    fast = parser.add_argument_group('CPU fast paths (see gluonbert.fast)')
    fast.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                      help='bfloat16: mixed-precision dense layers (CPUs with AVX512-BF16/AMX)')
    fast.add_argument('--quantize', choices=('int8',), default=None,
                      help='int8: quantized dense layers, calibrated on --calib-file')
    fast.add_argument('--calib-file', default=None,
                      help='int8 calibration texts, one per line (default: the bundled '
                           'movie reviews)')
    return parser


def _validate_fast_flags(args):
    """--dtype / --quantize / --calib-file make sense together and on this machine."""
    dtype, quantize = args.dtype, args.quantize
    if quantize and dtype != 'float32':
        raise UsageError(f'--quantize {quantize} and --dtype {dtype} do not combine; pick one')
    if args.calib_file and not quantize:
        raise UsageError('--calib-file is for --quantize int8')
    if (quantize or dtype != 'float32') and args.gpus:
        raise UsageError('--dtype bfloat16 and --quantize int8 are CPU fast paths; use them '
                         'without --gpus')
    if dtype == 'bfloat16':
        require_bf16('--dtype bfloat16', 'use --dtype float32, or --quantize int8 (faster '
                     'than float32)')


def _fast_model(args, net, vocab, tokenizer, ctx, num_texts=0):
    """The classifier converted as --dtype / --quantize ask (gluonbert.fast); the flags
    were checked by :func:`_validate_fast_flags`."""
    from . import fast
    dtype, quantize, calib_file = args.dtype, args.quantize, args.calib_file
    if not quantize and dtype == 'float32':
        # the folded, oneDNN-fused copy (fast.to_float32 on CPU) takes about 0.2 s to make
        # and then runs about 1.35x faster than the hybridized model: worth it beyond a batch
        return fast.prepare(net, 'float32', ctx=ctx) if num_texts > args.batch_size else net
    calib = (fast.calibration_batches(net, vocab, tokenizer, calib_file,
                                      batch_size=args.batch_size, max_len=args.max_len, ctx=ctx)
             if quantize else None)
    return fast.prepare(net, quantize or dtype, calib_batches=calib, ctx=ctx)


def _text_problem(text):
    """Why ``text`` cannot be classified (None if it can)."""
    if not text:
        return 'empty line'
    if not text.strip():
        return 'blank line (whitespace only)'
    try:
        text.encode('utf-8')
    except UnicodeEncodeError as err:  # e.g. a lone surrogate from undecodable argv bytes
        return f'not valid Unicode: unpaired surrogate at character {err.start + 1}'
    return None


def _input_lines(stdin):
    """``(number, text, problem)`` for each line of ``stdin`` as it arrives, ``text`` None
    where ``problem`` says why. A binary stream (``.buffer`` when there is one) is split at
    ``\n`` only and decoded here, line by line, so that no input can make invalid output."""
    source = getattr(stdin, 'buffer', stdin)
    for number, raw in enumerate(source, 1):
        newline, cr, bom = (('\n', '\r', '\ufeff') if isinstance(raw, str)
                            else (b'\n', b'\r', codecs.BOM_UTF8))
        raw = raw[:-1] if raw.endswith(newline) else raw
        raw = raw[:-1] if raw.endswith(cr) else raw
        if number == 1 and raw.startswith(bom):
            raw = raw[len(bom):]
        if isinstance(raw, bytes):
            try:
                raw = raw.decode('utf-8')
            except UnicodeDecodeError as err:
                yield number, None, (f'invalid UTF-8 at byte {err.start + 1} '
                                     f'(0x{raw[err.start]:02x})')
                continue
        problem = _text_problem(raw)
        yield number, None if problem else raw, problem


def _chunks(items, size):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# characters str.splitlines() breaks at that json.dumps leaves unescaped: escape them too,
# so that each output line stays one line for any reader
_LINE_BREAKS = {0x85: '\\u0085', 0x2028: '\\u2028', 0x2029: '\\u2029'}


def _json_lines_writer(stdout):
    """``write(objects)``: one JSON line each, UTF-8 (to ``.buffer`` when there is one),
    flushed."""
    binary = getattr(stdout, 'buffer', None)
    if binary is None and not isinstance(stdout, io.TextIOBase):
        binary = stdout

    def write(objects):
        text = ''.join(json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS) + '\n'
                       for obj in objects)
        if binary is None:
            stdout.write(text)
            stdout.flush()
            return
        if binary is not stdout:
            stdout.flush()  # what was printed before goes first
        binary.write(text.encode('utf-8'))
        binary.flush()
    return write


def predict_cli(args, stdin=None, stdout=None):
    """``gluonbert-predict``: one JSON line per TEXT, or per line of ``stdin`` (a text or
    binary stream), in order.

    Stdin is read in chunks of ``--batch-size`` lines as they arrive: each chunk is
    answered before the next is read. A line that cannot be classified (empty, blank,
    invalid UTF-8) gets ``{"line": N, "error": "..."}`` (``"argument"`` for TEXTs) on its
    output line. The float32 fast path is used beyond one batch: more TEXTs than
    ``--batch-size``, or a full first chunk of stdin.
    """
    from .export import load_classifier
    from .predict import predict
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if args.batch_size < 1:
        raise UsageError(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.max_len is not None and args.max_len < 3:
        raise UsageError(f'--max-len must be >= 3, got {args.max_len}')
    _validate_fast_flags(args)  # before the model loads
    contexts = _contexts(args.gpus)
    # a model directory, or a LoRA adapter merged into its base (the plain model's speed)
    net, vocab, tokenizer = load_classifier(args.model_dir, ctx=contexts[0])
    if args.texts:
        key = 'argument'
        items = ((i, t, _text_problem(t)) for i, t in enumerate(args.texts, 1))
    else:
        key, items = 'line', _input_lines(stdin)
    chunks = _chunks(items, args.batch_size)
    first = next(chunks, None)
    if first is None:
        raise UsageError('no text given (pass TEXT arguments or lines on stdin)')
    # a full first chunk of stdin: more lines are likely to follow
    expected = len(args.texts) if args.texts else len(first) + (len(first) == args.batch_size)
    net.hybridize(static_alloc=True)
    net = _fast_model(args, net, vocab, tokenizer, contexts[0], num_texts=expected)
    write = _json_lines_writer(stdout)
    try:
        for chunk in itertools.chain([first], chunks):
            texts = [text for _, text, problem in chunk if problem is None]
            predictions = iter(predict(net, contexts[0], vocab, tokenizer, texts,
                                       batch_size=args.batch_size, max_len=args.max_len))
            write([{key: number, 'error': problem} if problem else
                   next(predictions).to_dict() for number, _, problem in chunk])
    except BrokenPipeError:  # the reader went away (e.g. `| head`): nothing more to say
        pass


def predict_main(argv=None):
    """Entry point of ``gluonbert-predict``."""
    return run_command(PROG_PREDICT, predict_cli, build_predict_parser().parse_args(argv))


# ------------------------------------------------------------------ gluonbert-pretrain
PROG_PRETRAIN = 'gluonbert-pretrain'


def build_pretrain_parser():
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
                        help='peak learning rate (default 1e-3 from scratch, 5e-5 otherwise)')
    parser.add_argument('--warmup-ratio', type=float, default=0.1)
    parser.add_argument('--accumulate', type=int, default=1)
    parser.add_argument('--log-interval', type=int, default=50)
    parser.add_argument('--gpus', default='')
    parser.add_argument('--kvstore', default='device', choices=_kvstore_choices(),
                        help=KVSTORE_HELP)
    parser.add_argument('--output-dir', default='runs/pretrain')
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-progress', action='store_true')
    return parser


def _init_missing(block, ctx):
    """Initialise only the parameters that have no value yet (e.g. new heads)."""
    for param in block.collect_params().values():
        if param._data is None and not param._deferred_init:  # pylint: disable=protected-access
            param.initialize(ctx=ctx)


def pretrain(args):
    """Run pre-training for parsed arguments; returns the metrics dict."""
    from .config import PRESETS, BERTConfig
    from .model import BERTForPretraining
    from .params import parameter_counts
    from .pretrain import PretrainingData, evaluate_pretraining, pretrain_loop, read_corpus
    from .pretrained import MINILM_NAME, load_pretrained, save_pretrained
    from .train import _write_text

    for flag in ('max_predictions', 'batch_size', 'steps', 'accumulate', 'log_interval'):
        if getattr(args, flag) < 1:
            raise UsageError(f'--{flag.replace("_", "-")} must be >= 1')
    if not 5 <= args.max_len <= 512:
        raise UsageError(f'--max-len must be in [5, 512], got {args.max_len}')
    contexts = _contexts(args.gpus)
    group, contexts = _join_group(args.kvstore, contexts)
    ctx = contexts[0]
    documents = read_corpus(args.corpus, text_column=args.text_column)
    if args.model in PRESETS:
        _, vocab, tokenizer = load_pretrained(MINILM_NAME)
        config = BERTConfig.from_preset(args.model, vocab_size=len(vocab),
                                        max_length=max(args.max_len, 64))
        model = BERTForPretraining(config)
        model.initialize(ctx=ctx)
        default_lr = 1e-3
    else:
        loaded, vocab, tokenizer = load_pretrained(args.model, ctx=ctx, with_heads=True)
        model = loaded if isinstance(loaded, BERTForPretraining) else \
            BERTForPretraining(bert=getattr(loaded, 'bert', loaded))
        _init_missing(model, ctx)  # heads the checkpoint lacks (MiniLM has none)
        default_lr = 5e-5
    if args.max_len > model.config.max_length:
        raise UsageError(f'--max-len {args.max_len} exceeds the model max_length '
                         f'{model.config.max_length}')
    held_out = max(2, len(documents) // 10) if len(documents) >= 6 else 0
    train_docs = documents[:len(documents) - held_out] if held_out else documents
    eval_docs = documents[len(documents) - held_out:] if held_out else documents
    options = dict(max_len=args.max_len, max_predictions=args.max_predictions)
    data = PretrainingData(train_docs, tokenizer, vocab, seed=args.seed, **options)
    # with fewer than 6 documents the held-out batches are re-masked training documents
    eval_data = PretrainingData(eval_docs, tokenizer, vocab, seed=args.seed + 1, **options)
    output_dir = os.path.abspath(args.output_dir)
    if group.is_root:  # only rank 0 writes OUTPUT_DIR
        os.makedirs(output_dir, exist_ok=True)
    lr = args.lr or default_lr
    model.hybridize(static_alloc=True)
    workers = (f', {group.num_workers} workers ({args.kvstore}, global batch '
               f'{args.batch_size * group.num_workers})' if group.is_distributed else '')
    if group.is_root:
        print(f'pre-training {args.model} on {len(train_docs)} documents ({len(data)} examples '
              f'per epoch), {len(eval_docs)} held out; {args.steps} steps, batch '
              f'{args.batch_size}, lr {lr:g}, max_len {args.max_len}{workers}', flush=True)
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
    final = evaluate_pretraining(model, eval_data.batches(args.batch_size, ctx=ctx))
    model_dir = os.path.join(output_dir, 'model')
    save_pretrained(model, vocab, tokenizer, model_dir,
                    extra={'pretrained_from': args.model, 'steps': args.steps})
    metrics = {**final, 'steps': args.steps, 'seconds': seconds,
               'sequences_per_second': args.steps * args.batch_size * args.accumulate *
               group.num_workers / seconds, 'model_dir': model_dir,
               'kvstore': args.kvstore, 'num_workers': group.num_workers,
               'parameters': parameter_counts(model), 'records': records}
    _write_text(os.path.join(output_dir, 'metrics.json'), json.dumps(metrics, indent=2) + '\n')
    print(f"held-out: MLM accuracy {final['mlm_accuracy']:.4f}, MLM loss "
          f"{final['mlm_loss']:.4f} (perplexity {final['mlm_perplexity']:.1f}), NSP accuracy "
          f"{final['nsp_accuracy']:.4f}; {metrics['sequences_per_second']:.1f} sequences/s")
    print(f'model saved to {model_dir} (fine-tune it with: gluonbert-finetune --model '
          f'{model_dir})')
    return metrics


def pretrain_main(argv=None):
    """Entry point of ``gluonbert-pretrain``."""
    return run_command(PROG_PRETRAIN, pretrain, build_pretrain_parser().parse_args(argv),
                       interrupted='; continue with --resume')


_COMMANDS = {'finetune': finetune_main, 'predict': predict_main, 'pretrain': pretrain_main}

finetune_entry = console_entry(finetune_main)
predict_entry = console_entry(predict_main)
pretrain_entry = console_entry(pretrain_main)

if __name__ == '__main__':
    # python -m gluonbert.cli finetune|predict|pretrain [flags]: the console scripts without
    # an installed entry point
    if len(sys.argv) < 2 or sys.argv[1] not in _COMMANDS:
        sys.exit(f'usage: python -m gluonbert.cli {{{",".join(_COMMANDS)}}} [flags]')
    exit_now(_COMMANDS[sys.argv[1]](sys.argv[2:]))
