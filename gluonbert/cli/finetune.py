"""``gluonbert-finetune``: fine-tune BERT for text classification.

With no arguments: the embedded MiniLM on the bundled movie reviews, on CPU. The run is
read data -> load the model -> tokenize -> train (checkpoints, metrics, early stop) ->
save the best epoch's model (and a LoRA adapter) -> predict the first test example.
"""
import argparse
import contextlib
import dataclasses
import math
import os
import time

import mxnet as mx

from .. import data, ops
from .._io import DirectoryLock
from ..config import BERTConfig
from ..errors import UsageError
from ..hardware import require_bf16
from ..hf_classifier import start_head_from
from ..lora import (apply_lora, lora_parameter_counts, lora_settings, merge_lora,
                    normalise_targets, save_lora, save_lora_base)
from ..model import MAX_CALIBRATION_TEXTS, BERTClassifier, BERTModel, ClassifierInfo
from ..predict import predict_sentiment
from ..pretrained import MINILM_NAME, load_pretrained, save_pretrained
from ..timing import NO_TIMER, PhaseTimer
from ..engine.runconfig import TrainConfig
from ..train import load_best_parameters, train_loop
from .common import (DEFAULT_LRS, KVSTORE_HELP, KVSTORES, check_at_least, claim_run,
                     default_lr, format_lr, join_group, model_kind, parse_contexts,
                     workers_note, write_metrics)
from ..evaluation import report_classifier
from .runner import console_entry, run_command

__all__ = ['PROG_FINETUNE', 'build_finetune_parser', 'finetune', 'finetune_main',
           'finetune_entry', 'default_epochs', 'LORA_DEFAULTS']

PROG_FINETUNE = 'gluonbert-finetune'
# --lora-* values when --lora-rank is given without them
LORA_DEFAULTS = {'lora_alpha': 16.0, 'lora_targets': 'query,value', 'lora_dropout': 0.0}


def default_epochs(model):
    """Passes over the training data when ``--epochs`` is not given: 5 for MiniLM, whose
    bundled sample is small, else 3."""
    return 5 if model == MINILM_NAME else 3


def _lr_help():
    other, minilm = DEFAULT_LRS['pretrained'], DEFAULT_LRS['minilm']
    return (f'peak learning rate (default {format_lr(other[0])}, {format_lr(minilm[0])} for '
            f'minilm; with LoRA {format_lr(other[1])}, {format_lr(minilm[1])} for minilm; '
            f'{format_lr(DEFAULT_LRS["preset"][0])} for a preset trained from scratch)')


def build_finetune_parser():
    """The ``argparse`` parser of ``gluonbert-finetune``."""
    parser = argparse.ArgumentParser(
        prog=PROG_FINETUNE,
        description='Fine-tune BERT for text classification. With no arguments: the embedded '
                    'MiniLM on the bundled movie reviews, on CPU.')
    _add_model_and_data_arguments(parser)
    _add_training_arguments(parser)
    _add_run_arguments(parser)
    return parser


def _add_model_and_data_arguments(parser):
    model = parser.add_argument_group('model and data')
    model.add_argument('--model', default=MINILM_NAME,
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


def _add_training_arguments(parser):
    opt = parser.add_argument_group('optimisation')
    opt.add_argument('--batch-size', type=int, default=32)
    opt.add_argument('--epochs', type=int, default=None,
                     help=f'passes over the training data (default {default_epochs("")}; '
                          f'{default_epochs(MINILM_NAME)} for minilm, whose bundled sample '
                          f'is small)')
    opt.add_argument('--lr', type=float, default=None, help=_lr_help())
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
                      help=f'update scale numerator: the update is scaled by A/R (default '
                           f'{LORA_DEFAULTS["lora_alpha"]:g})')
    lora.add_argument('--lora-targets', default=None, metavar='NAMES',
                      help=f'comma-separated projections from query,key,value,out_proj,'
                           f'ffn_1,ffn_2 (default {LORA_DEFAULTS["lora_targets"]})')
    lora.add_argument('--lora-dropout', type=float, default=None, metavar='P',
                      help=f'dropout on the LoRA branch input (default '
                           f'{LORA_DEFAULTS["lora_dropout"]:g})')


def _add_run_arguments(parser):
    dev = parser.add_argument_group('devices')
    dev.add_argument('--gpus', default='', help='comma-separated GPU ids; empty means CPU')
    dev.add_argument('--kvstore', default='device', choices=KVSTORES, help=KVSTORE_HELP)
    run = parser.add_argument_group('run control')
    run.add_argument('--output-dir', default='runs/finetune')
    run.add_argument('--resume', action='store_true',
                     help='continue from OUTPUT_DIR/checkpoints')
    run.add_argument('--overwrite', action='store_true',
                     help='replace the run in OUTPUT_DIR (without it, and without --resume, '
                          'a directory that holds a run is refused)')
    run.add_argument('--seed', type=int, default=0)
    run.add_argument('--early-stop', type=int, default=None, metavar='N',
                     help='stop after N epochs without a better test accuracy')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    run.add_argument('--profile', action='store_true',
                     help='print where the wall time went (loading, tokenizing, forward/'
                          'backward, updates, evaluation, saving) and store it in '
                          'metrics.json; the run is slightly slower')


# ------------------------------------------------------------------ flags
def _validate_finetune_args(args):
    """Check the flags before anything loads; fills in the LoRA defaults."""
    if args.max_len < 3 or args.max_len > 512:
        raise UsageError(f'--max-len must be in [3, 512], got {args.max_len}')
    check_at_least(args, 1, 'batch_size', 'epochs', 'accumulate')
    if args.resume and args.overwrite:
        raise UsageError('--resume continues the run in --output-dir, --overwrite replaces '
                         'it: give one of them')
    if not 0 <= args.dropout < 1:  # NaN fails too
        raise UsageError(f'--dropout must be in [0, 1), got {args.dropout:g}')
    # the training settings, checked where they are defined (TrainConfig; an unset --epochs
    # or --lr takes the model's default later), with the run's checkpoint directory
    TrainConfig.from_flags(args, checkpoint_dir=os.path.join(args.output_dir, 'checkpoints'))
    if bool(args.train) != bool(args.test):
        raise UsageError('--train and --test go together')
    if args.train and args.dataset:
        raise UsageError('give either --train/--test or --dataset, not both')
    _validate_data_args(args)
    if args.dtype == 'bfloat16' and not args.gpus:  # before anything loads
        require_bf16('--dtype bfloat16', 'use --dtype float32')
    _validate_lora_args(args)


def _validate_data_args(args):
    for path in (args.train, args.test):
        if path:
            data.check_data_file(path)  # exists, is a file, has a suffix we read
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


def _validate_lora_args(args):
    """Check the --lora-* flags and fill in the defaults of those not given."""
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
    if not 0 < args.lora_alpha < math.inf:
        raise UsageError(f'--lora-alpha must be a finite number > 0, got {args.lora_alpha:g}')
    if not 0 <= args.lora_dropout < 1:
        raise UsageError(f'--lora-dropout must be in [0, 1), got {args.lora_dropout:g}')
    try:
        args.lora_targets = ','.join(normalise_targets(args.lora_targets))
    except ValueError as err:
        raise UsageError(f'--lora-targets: {err}') from err


# ------------------------------------------------------------------ loading
def _load_model(args, ctx):
    """``(model, vocab, tokenizer)`` for ``--model`` on the contexts ``ctx``."""
    if model_kind(args.model) == 'preset':
        # a fresh model of that shape, with the embedded model's WordPiece vocabulary
        _, vocab, tokenizer = load_pretrained(MINILM_NAME)
        bert = BERTModel(BERTConfig.from_preset(args.model, vocab_size=len(vocab)))
        bert.initialize(ctx=ctx)
        return bert, vocab, tokenizer
    # a pre-training or fine-tuning output directory, or a Hugging Face classifier: its
    # encoder, and its head where the data's labels are its (hf_classifier.start_head_from)
    return load_pretrained(args.model, ctx=ctx)


def _load_data(args):
    """``(train set, test set)`` from ``--train/--test`` or ``--dataset``."""
    labels = [s.strip() for s in args.labels.split(',')] if args.labels else None
    if args.train:
        options = {'text_column': args.text_column, 'label_column': args.label_column,
                   'labels': labels, 'text_pair_column': args.text_pair_column}
        if args.quoting:
            options['quoting'] = args.quoting
        return data.read_table(args.train, **options), data.read_table(args.test, **options)
    name = args.dataset or 'sample'
    return data.load_dataset(name, 'train'), data.load_dataset(name, 'test')


@contextlib.contextmanager
def _claim_output_dir(path, group):
    """``--output-dir`` as an absolute path, created and locked (``OUTPUT_DIR/.lock``) for
    the run's life, so that a second run on it fails at once; on rank 0 only, the one
    worker that writes there."""
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


# ------------------------------------------------------------------ the run
@dataclasses.dataclass
class _Run:
    """One fine-tuning run: its flags, devices, process group, output and timer."""
    args: argparse.Namespace
    contexts: list
    group: object
    output_dir: str
    timer: object
    started: float

    def path(self, name):
        return os.path.join(self.output_dir, name)


def finetune(args):
    """Run fine-tuning for parsed arguments; returns the metrics dict."""
    _validate_finetune_args(args)
    contexts = parse_contexts(args.gpus)
    group, contexts = join_group(args.kvstore, contexts)
    # one run per OUTPUT_DIR, claimed before the data and the model load
    with _claim_output_dir(args.output_dir, group) as output_dir:
        if group.is_root:
            claim_run(output_dir, 'epoch', resume=args.resume, overwrite=args.overwrite)
        run = _Run(args, contexts, group, output_dir,
                   PhaseTimer() if args.profile else NO_TIMER, time.perf_counter())
        return _finetune(run)


def _finetune(run):
    """:func:`finetune` once OUTPUT_DIR is claimed."""
    args, timer = run.args, run.timer
    with timer('read_data'):  # bad data fails before the model loads
        train_set, test_set = _load_data(args)
    if train_set.label_names != test_set.label_names:
        raise UsageError(f'train labels {train_set.label_names} and test labels '
                         f'{test_set.label_names} differ')
    with timer('load_model'):
        loaded, vocab, tokenizer = _load_model(args, run.contexts)
        bert = getattr(loaded, 'bert', loaded)
    if args.epochs is None:
        args.epochs = default_epochs(args.model)
    if args.max_len > bert.config.max_length:
        raise UsageError(f'--max-len {args.max_len} exceeds the model max_length '
                         f'{bert.config.max_length}')
    with timer('tokenize'):
        loaders = _make_loaders(run, train_set, test_set, vocab, tokenizer)
    net, counts = _build_classifier(run, bert, _classifier_info(args, bert, train_set))
    head_note = start_head_from(net, loaded)
    if head_note and run.group.is_root:
        print(head_note, flush=True)
    lr = args.lr or default_lr(args.model, lora=args.lora_rank is not None)
    if run.group.is_root:
        print(f'fine-tuning {args.model} on {len(train_set)} train / {len(test_set)} test '
              f'examples ({", ".join(train_set.label_names)}), {args.epochs} epochs, batch '
              f'{args.batch_size}, lr {lr:g}, max_len {args.max_len}, '
              f'{", ".join(map(str, run.contexts))}'
              f'{workers_note(run.group, args.kvstore, args.batch_size)}; padding waste '
              f'{loaders[0].padding_waste:.1%} with length bucketing', flush=True)
    history = _train(run, net, loaders, lr)
    if not run.group.is_root:  # rank 0 saves the model and the metrics
        return {'rank': run.group.rank, 'num_workers': run.group.num_workers,
                'history': list(history)}
    lora = _save_model(run, net, vocab, tokenizer)
    metrics = _metrics(run, history, train_set, test_set, lr, loaders[0].padding_waste,
                       counts, lora)
    with timer('report'):  # what gluonbert-evaluate gives for the saved model and test set
        report = report_classifier(net, vocab, tokenizer, test_set, run.output_dir,
                                   ctx=run.contexts[0], batch_size=args.batch_size,
                                   max_len=args.max_len, extra={'model': run.path('model')})
    metrics['evaluation'] = {'report': run.path('report.json'), 'macro_f1': report['macro_f1'],
                             'ece': report['calibration']['ece']}
    metrics['kernels'] = net.config.kernels  # LayerNorm/dropout/AdamW: what trained it
    with timer('predict'):
        demo = _demo_prediction(net, test_set, run.contexts[0], vocab, tokenizer)
    if timer is not NO_TIMER:
        wall = time.perf_counter() - run.started
        metrics['profile'] = dict(timer.to_dict(wall),
                                  outside_forward_backward=timer.share_outside(wall),
                                  fused_ops=ops.status())
    if demo:
        metrics['example_prediction'] = demo
    write_metrics(run.output_dir, metrics)
    _report(metrics, timer)
    return metrics


def _make_loaders(run, train_set, test_set, vocab, tokenizer):
    """``(train, test)`` length-bucketed loaders; each worker of a distributed job reads its
    own shard (equal shards for training)."""
    args = run.args
    transform = data.BERTTransform(tokenizer, vocab, max_len=args.max_len,
                                   truncate=args.truncate,
                                   pair=train_set.text_pairs is not None)
    options = dict(batch_size=args.batch_size, seed=args.seed, pad_id=vocab.pad_id,
                   round_to=8 if run.contexts[0].device_type == 'gpu' else None,
                   num_shards=run.group.num_workers, shard_index=run.group.rank)
    return (data.make_dataloader(train_set, transform, shuffle=True, **options),
            data.make_dataloader(test_set, transform, shuffle=False, even_shards=False,
                                 **options))


def _classifier_info(args, bert, train_set):
    """What the model keeps besides its weights: the task's label names, max_len,
    truncation, the kernels that train it and 64 training inputs for int8 calibration and
    export checks on its own task."""
    count = min(len(train_set), MAX_CALIBRATION_TEXTS)
    pairs = train_set.text_pairs
    texts = [train_set.texts[i] if pairs is None else [train_set.texts[i], pairs[i]]
             for i in range(count)]
    return ClassifierInfo(list(train_set.label_names), max_len=args.max_len,
                          truncate=args.truncate, text_pair=pairs is not None,
                          kernels=bert.config.kernels, calibration_texts=texts)


def _build_classifier(run, bert, info):
    """``(net, counts)``: the classifier on ``bert``, with LoRA if asked, hybridized; the
    counts of trainable and total parameters."""
    args = run.args
    mx.random.seed(args.seed)
    net = BERTClassifier(bert, num_classes=len(info.label_names), dropout=args.dropout,
                         info=info)
    net.classifier.initialize(ctx=run.contexts)
    if args.lora_rank is None:
        counts = lora_parameter_counts(net)  # everything trainable
    else:
        try:
            counts = apply_lora(net, rank=args.lora_rank, alpha=args.lora_alpha,
                                dropout=args.lora_dropout, targets=args.lora_targets)
        except ValueError as err:
            raise UsageError(f'--lora-rank/--lora-targets: {err}') from err
        print(f'LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g} on '
              f'{args.lora_targets}: {counts}', flush=True)
    net.hybridize(static_alloc=True)
    return net, counts


def _train(run, net, loaders, lr):
    """``train_loop`` with the run's flags (their TrainConfig fields); its history."""
    args = run.args
    config = TrainConfig.from_flags(
        args, lr=lr, num_epoch=args.epochs, checkpoint_dir=run.path('checkpoints'),
        metrics_path=run.path('metrics.jsonl'), plot_path=run.path('history.png'),
        progress=not args.no_progress)
    return train_loop(
        net, loaders[0], loaders[1], ctx=run.contexts, config=config, timer=run.timer,
        # flags that change the results besides the config's: --resume checks them too
        run_info={'batch_size': args.batch_size, 'max_len': args.max_len,
                  'truncate': args.truncate, 'dropout': args.dropout,
                  'lora': None if args.lora_rank is None else {
                      'rank': args.lora_rank, 'alpha': args.lora_alpha,
                      'dropout': args.lora_dropout, 'targets': args.lora_targets}})


def _save_model(run, net, vocab, tokenizer):
    """Save the best epoch's weights (checked against their checkpoint) to OUTPUT_DIR/model,
    and with LoRA the adapter first; returns the adapter's summary ({} without LoRA)."""
    args = run.args
    with run.timer('save'):
        load_best_parameters(net, run.path('checkpoints'), run.contexts)
        lora = _save_adapter(run, net, vocab, tokenizer) if args.lora_rank is not None else {}
        save_pretrained(net, vocab, tokenizer, run.path('model'),
                        extra={'base_model': args.model,
                               **({'lora': lora['lora']} if lora else {})})
    return lora


def _save_adapter(run, net, vocab, tokenizer):
    """Save the LoRA adapter to OUTPUT_DIR/adapter, then merge it into ``net`` (in place).

    The adapter names its base by ``--model``; a preset's random base cannot be rebuilt
    from its name, so it is saved to OUTPUT_DIR/base first.
    """
    args = run.args
    base_model = args.model
    if model_kind(args.model) == 'preset':
        base_model = save_lora_base(net, vocab, tokenizer, run.path('base'),
                                    extra={'base_model': args.model})
    rank, alpha, dropout, targets = lora_settings(net)
    adapter_dir = save_lora(net, run.path('adapter'), base_model=base_model)
    adapter_bytes = sum(os.path.getsize(os.path.join(adapter_dir, f))
                        for f in os.listdir(adapter_dir))
    merge_lora(net)  # the merged model predicts at full speed with the usual tools
    return {'adapter_dir': adapter_dir, 'adapter_bytes': adapter_bytes,
            'lora': {'rank': rank, 'alpha': alpha, 'dropout': dropout, 'targets': targets}}


def _metrics(run, history, train_set, test_set, lr, padding_waste, counts, lora):
    """The run's ``metrics.json`` (without the profile)."""
    args, best = run.args, history.best
    train_seconds = sum(r['seconds'] for r in history)
    train_examples = sum(r['samples_per_second'] * r['seconds'] for r in history)
    return {
        'test_accuracy': best['test_accuracy'] if best else None,
        'best_epoch': best['epoch'] + 1 if best else None,
        'final_test_accuracy': history[-1]['test_accuracy'] if history else None,
        'epochs_run': len(history),
        'train_seconds': train_seconds,
        'train_samples_per_second': train_examples / train_seconds if train_seconds else None,
        'wall_seconds': time.perf_counter() - run.started,
        'model': args.model, 'train_examples': len(train_set), 'test_examples': len(test_set),
        'label_names': train_set.label_names, 'max_len': args.max_len,
        'batch_size': args.batch_size, 'lr': lr, 'optimizer': args.optimizer,
        'epochs': args.epochs, 'kvstore': args.kvstore, 'num_workers': run.group.num_workers,
        'dtype': args.dtype, 'padding_waste': padding_waste,
        'model_dir': run.path('model'), 'history': list(history),
        'trainable_parameters': counts.trainable, 'total_parameters': counts.total,
        'trainable_fraction': counts.fraction,
        'adapter_dir': lora.get('adapter_dir'), 'adapter_bytes': lora.get('adapter_bytes'),
        'lora': lora.get('lora'),
    }


def _demo_prediction(net, test_set, ctx, vocab, tokenizer):
    """The trained model on the first test example: ``{'index', 'text', 'label',
    'predicted', 'probability'}`` (index from 0); None for sentence pairs, which
    :func:`~gluonbert.predict_sentiment` does not take."""
    if test_set.text_pairs is not None:
        return None
    index = next((i for i, text in enumerate(test_set.texts) if text.strip()), None)
    if index is None:
        return None
    text = test_set.texts[index]
    prediction = predict_sentiment(net, ctx, vocab, tokenizer, text)
    return {'index': index, 'text': text,
            'label': test_set.label_names[test_set.labels[index]],
            'predicted': prediction.label, 'probability': prediction.probability}


def _excerpt(text, width=60):
    """``text`` on one line, cut at a word to at most ``width`` characters."""
    text = ' '.join(text.split())
    if len(text) <= width:
        return text
    cut = text[:width - 3]
    return (cut.rsplit(' ', 1)[0] if ' ' in cut else cut).rstrip(',;:') + '...'


def _report(metrics, timer):
    """Print the run's summary."""
    print(f"test accuracy {metrics['test_accuracy']:.4f} (epoch {metrics['best_epoch']}), "
          f"{metrics['train_samples_per_second']:.1f} train samples/s, "
          f"{metrics['wall_seconds']:.0f} s in all")
    print(f"model saved to {metrics['model_dir']}")
    evaluation = metrics['evaluation']
    print(f"test macro-F1 {evaluation['macro_f1']:.4f}, expected calibration error "
          f"{evaluation['ece']:.4f}; report in {evaluation['report']} (with confusion.png, "
          f"reliability.png)")
    if metrics['lora']:
        print(f"LoRA adapter ({metrics['adapter_bytes']:,} bytes) saved to "
              f"{metrics['adapter_dir']}")
    demo = metrics.get('example_prediction')
    if demo:
        print(f"test example {demo['index'] + 1}: {_excerpt(demo['text'])!r} (true label "
              f"{demo['label']}) -> predicted {demo['predicted']} "
              f"(p={demo['probability']:.3f})")
    if 'profile' in metrics:
        print('where the time went (--profile):')
        for line in timer.table(metrics['profile']['wall_seconds']):
            print('  ' + line)
        print(f"  {metrics['profile']['outside_forward_backward']:.1%} of the wall time outside "
              f"forward/backward passes (training and evaluation)")


def finetune_main(argv=None):
    """Entry point of ``gluonbert-finetune``: parse ``argv``, run, return the exit status."""
    args = build_finetune_parser().parse_args(argv)
    checkpoints = os.path.join(args.output_dir, 'checkpoints')
    return run_command(PROG_FINETUNE, finetune, args,
                       interrupted=f'; continue with --resume (checkpoints are in {checkpoints})')


finetune_entry = console_entry(finetune_main)
