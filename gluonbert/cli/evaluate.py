"""``gluonbert-evaluate``: a fine-tuned model (or its ``.onnx`` export) on a labelled file.

Prints accuracy, per-class precision/recall/F1/support, the macro and weighted averages,
the confusion matrix and the expected calibration error; ``--output DIR`` writes them as
``report.json`` with ``confusion.png`` and ``reliability.png``; ``--compare OTHER`` runs a
second model on the same file and says how its answers differ (docs/evaluation.md).
"""
import argparse
import os
import sys

from .. import fast
from ..errors import UsageError
from ..data import check_data_file
from ..evaluation import (ClassifierScorer, classification_metrics, compare_probabilities,
                          format_comparison, format_report, load_scorer, read_labelled,
                          write_report_files)
from ..hardware import require_bf16
from .common import check_at_least, parse_contexts
from .runner import console_entry, run_command

__all__ = ['PROG_EVALUATE', 'build_evaluate_parser', 'evaluate_cli', 'evaluate_main',
           'evaluate_entry']

PROG_EVALUATE = 'gluonbert-evaluate'


def build_evaluate_parser():
    """The ``argparse`` parser of ``gluonbert-evaluate``."""
    parser = argparse.ArgumentParser(
        prog=PROG_EVALUATE,
        description='Evaluate a fine-tuned model on a labelled file: accuracy, per-class '
                    'precision/recall/F1, the confusion matrix and the calibration error.')
    parser.add_argument('--model-dir', required=True, metavar='MODEL',
                        help='a model or adapter directory written by gluonbert-finetune, or '
                             'an exported .onnx file (vocab.txt, tokenizer_config.json and '
                             'config.json beside it; needs onnxruntime)')
    parser.add_argument('--test', required=True, metavar='FILE',
                        help='labelled file (.csv, .tsv, .jsonl or .parquet), as '
                             'gluonbert-finetune --test takes')
    parser.add_argument('--output', default=None, metavar='DIR',
                        help='write report.json, confusion.png and reliability.png here')
    parser.add_argument('--compare', default=None, metavar='OTHER',
                        help='a second model (directory or .onnx) on the same file: label '
                             'agreement and probability differences')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--max-len', type=int, default=None,
                        help="tokens per text (default: the model's training max_len)")
    data = parser.add_argument_group('data columns')
    data.add_argument('--text-column', default='text')
    data.add_argument('--label-column', default='label')
    data.add_argument('--text-pair-column', default=None, metavar='COLUMN')
    data.add_argument('--quoting', choices=('minimal', 'none'), default=None)
    run = parser.add_argument_group('running')
    run.add_argument('--gpus', default='', help='GPU id for gluonbert models; empty means CPU')
    run.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                     help='bfloat16: the --model-dir model in mixed precision (CPU)')
    run.add_argument('--quantize', choices=('int8',), default=None,
                     help='int8: the --model-dir model quantized (CPU; compare it with '
                          '--compare MODEL_DIR, the float32 model)')
    run.add_argument('--calib-file', default=None,
                     help='int8 calibration texts, one per line (default: those the model '
                          'keeps)')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def _validate(args):
    """The flags, checked before anything loads."""
    check_at_least(args, 1, 'batch_size')
    check_at_least(args, 3, 'max_len')
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f'--output {args.output} is a file; give a directory')
    converted = args.quantize or args.dtype != 'float32'
    if args.quantize and args.dtype != 'float32':
        raise UsageError(f'--quantize {args.quantize} and --dtype {args.dtype} do not combine')
    if args.calib_file and not args.quantize:
        raise UsageError('--calib-file is for --quantize int8')
    if converted and args.gpus:
        raise UsageError('--dtype bfloat16 and --quantize int8 are CPU paths; drop --gpus')
    if converted and args.model_dir.lower().endswith('.onnx'):
        raise UsageError('--dtype/--quantize convert a gluonbert model directory, not an '
                         '.onnx file')
    if args.dtype == 'bfloat16':
        require_bf16('--dtype bfloat16', 'use --dtype float32')
    check_data_file(args.test)  # exists, is a file, has a suffix we read


def _main_scorer(args, ctx):
    """The --model-dir scorer, converted by --dtype/--quantize when asked."""
    scorer = load_scorer(args.model_dir, ctx=ctx, max_len=args.max_len)
    if not (args.quantize or args.dtype != 'float32'):
        return scorer
    net = scorer.net
    calib = (fast.calibration_batches(net, scorer.vocab, scorer.tokenizer, args.calib_file,
                                      batch_size=args.batch_size, max_len=args.max_len,
                                      ctx=ctx) if args.quantize else None)
    converted = fast.prepare(net, args.quantize or args.dtype, calib_batches=calib, ctx=ctx)
    return ClassifierScorer(converted, scorer.vocab, scorer.tokenizer, ctx=ctx,
                            max_len=args.max_len, info_net=net,
                            name=f'{args.model_dir} ({args.quantize or args.dtype})')


def _probabilities(scorer, dataset, args):
    scorer.check_dataset(dataset)
    return scorer.probabilities(dataset, batch_size=args.batch_size,
                                progress=not args.no_progress)


def evaluate_cli(args, stdout=None):
    """``gluonbert-evaluate`` for parsed arguments; prints the report to ``stdout`` and
    returns it (a dict; with ``comparison`` when ``--compare`` is given)."""
    stdout = stdout or sys.stdout
    _validate(args)
    ctx = parse_contexts(args.gpus)[0]
    scorer = _main_scorer(args, ctx)
    dataset = read_labelled(args.test, scorer.label_names, text_column=args.text_column,
                            label_column=args.label_column,
                            text_pair_column=args.text_pair_column, quoting=args.quoting)
    other = None
    if args.compare:  # loaded before the long run, so that its problems show at once
        other = load_scorer(args.compare, ctx=ctx, max_len=args.max_len)
        if other.label_names != scorer.label_names:
            raise UsageError(f'--compare {args.compare} has labels '
                             f'{", ".join(other.label_names)}, {args.model_dir} has '
                             f'{", ".join(scorer.label_names)}')
        other.check_dataset(dataset)
    probabilities = _probabilities(scorer, dataset, args)
    report = {'model': scorer.name, 'data': args.test, 'max_len': scorer.max_len}
    report.update(classification_metrics(dataset.labels, probabilities, scorer.label_names))
    lines = [f'{scorer.name} on {args.test}: {len(dataset)} examples '
             f'({", ".join(scorer.label_names)}), max_len {scorer.max_len}', '']
    lines += format_report(report)
    if other is not None:
        second = _probabilities(other, dataset, args)
        comparison = {'model': other.name, 'max_len': other.max_len,
                      'accuracy': classification_metrics(dataset.labels, second,
                                                         other.label_names)['accuracy']}
        comparison.update(compare_probabilities(probabilities, second))
        report['comparison'] = comparison
        lines += [''] + format_comparison(comparison)
    if args.output:
        paths = write_report_files(report, args.output)
        others = ', '.join(os.path.basename(p) for p in paths[1:])
        lines += ['', f'report written to {paths[0]} (and {others})']
    print('\n'.join(lines), file=stdout, flush=True)
    return report


def evaluate_main(argv=None):
    """Entry point of ``gluonbert-evaluate``: parse ``argv``, run, return the exit status."""
    return run_command(PROG_EVALUATE, evaluate_cli, build_evaluate_parser().parse_args(argv))


evaluate_entry = console_entry(evaluate_main)
