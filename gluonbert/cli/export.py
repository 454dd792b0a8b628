"""``gluonbert-export``: a fine-tuned classifier as a plain MXNet model (symbol + params,
vocabulary and metadata; see :mod:`gluonbert.export`), one ONNX file with its tokenizer
and label files (``--format onnx``, :mod:`gluonbert.onnx_export`) or a Hugging Face
directory (``--format hf``, :mod:`gluonbert.hf_export`)."""
import argparse
import sys

from ..errors import UsageError
from ..export import check_prefix, export_classifier
from ..hardware import require_bf16
from ..model_dir import load_classifier
from ..sysinfo import fastest_path, int8_caveat
from .runner import console_entry, run_command

__all__ = ['PROG_EXPORT', 'build_export_parser', 'export_cli', 'export_main', 'export_entry']

PROG_EXPORT = 'gluonbert-export'
FORMATS = ('mxnet', 'onnx', 'hf')


def build_export_parser():
    """The ``argparse`` parser of ``gluonbert-export``."""
    parser = argparse.ArgumentParser(
        prog=PROG_EXPORT,
        description='Export a fine-tuned classifier to run without gluonbert: an MXNet '
                    'symbol + params for mxnet.gluon.SymbolBlock.imports (default), one '
                    'ONNX file for onnxruntime, or a Hugging Face transformers directory.')
    parser.add_argument('--model-dir', required=True,
                        help='directory written by gluonbert-finetune (OUTPUT_DIR/model) or '
                             'a LoRA adapter directory')
    parser.add_argument('--format', choices=FORMATS, default='mxnet',
                        help='mxnet (default): MXNet symbol + params; onnx: OUTPUT/model.onnx '
                             '(inputs input_ids, attention_mask, token_type_ids) with '
                             'config.json (label names) and the tokenizer files; hf: a '
                             'transformers BertForSequenceClassification directory')
    parser.add_argument('--output', required=True, metavar='PREFIX|DIR',
                        help='mxnet: writes PREFIX-symbol.json, PREFIX-0000.params, '
                             'PREFIX-vocab.txt and PREFIX-meta.json; onnx and hf: a new '
                             '(or empty) directory')
    parser.add_argument('--dtype', choices=('float32', 'bfloat16', 'int8'), default=None,
                        help='float32 (exact, the default), bfloat16 (mixed precision) or int8 '
                             '(quantized dense layers, calibrated); CPU inference. onnx: '
                             'int8 also writes model_int8.onnx (dynamic quantization); hf: '
                             'float32 only')
    parser.add_argument('--fast', action='store_true',
                        help="the fastest dtype that keeps float32's answers on this CPU: int8 "
                             "with VNNI/AMX, bfloat16 where native, else float32; says which")
    parser.add_argument('--max-len', type=int, default=None,
                        help="sequence length recorded in the metadata (onnx, hf: the "
                             "tokenizer's model_max_length) and used for calibration and "
                             "the checks (default: the model's training max_len)")
    parser.add_argument('--calib-file', default=None,
                        help="texts of the model's task, one per line, for int8 calibration "
                             "and the reload check (default: the 64 training texts "
                             "gluonbert-finetune keeps with the model)")
    parser.add_argument('--calib-size', type=int, default=64,
                        help='int8: number of calibration texts (default 64)')
    return parser


def _validate_export_args(args):
    """Check the flags before the model loads; returns the dtype to export (--dtype, the
    one --fast picks, or float32). ``args`` is left as parsed."""
    if args.calib_size < 1:
        raise UsageError(f'--calib-size must be >= 1, got {args.calib_size}')
    if args.max_len is not None and args.max_len < 3:
        raise UsageError(f'--max-len must be at least 3, got {args.max_len}')
    if args.fast and args.dtype:
        raise UsageError(f'--fast picks the dtype itself; drop --dtype {args.dtype} or --fast')
    if args.format != 'mxnet':
        allowed = ('float32', 'int8') if args.format == 'onnx' else ('float32',)
        if args.fast or (args.dtype or 'float32') not in allowed:
            flag = '--fast' if args.fast else f'--dtype {args.dtype}'
            raise UsageError(f'--format {args.format} writes {" or ".join(allowed)}; drop '
                             f'{flag} (or use --format mxnet)')
        return args.dtype or 'float32'
    dtype = args.dtype
    if args.fast:
        dtype, why = fastest_path()
        print(f'{PROG_EXPORT}: --fast: {dtype} ({why})', file=sys.stderr, flush=True)
    dtype = dtype or 'float32'
    if dtype == 'bfloat16':
        require_bf16('--dtype bfloat16', 'use --dtype float32, or --fast (the fastest dtype '
                     'that keeps the answers here)')
    return dtype


def export_cli(args, stdout=None):
    """``gluonbert-export`` for parsed arguments: export, reload, compare, and say so on
    ``stdout``; returns the metadata :func:`~gluonbert.export.export_classifier` wrote."""
    from ..fast import calibration_batches
    stdout = stdout or sys.stdout
    dtype = _validate_export_args(args)
    if args.format != 'mxnet':
        return _export_portable(args, dtype, stdout)
    check_prefix(args.output)  # before the model loads
    net, vocab, tokenizer = load_classifier(args.model_dir)
    if args.max_len is not None and args.max_len > net.config.max_length:
        raise UsageError(f'--max-len {args.max_len} exceeds the model max_length '
                         f'{net.config.max_length}')
    calib = None
    if dtype == 'int8':
        calib = calibration_batches(net, vocab, tokenizer, args.calib_file,
                                    limit=args.calib_size, max_len=args.max_len)
        if int8_caveat() and not args.fast:  # --fast never takes int8 with a caveat
            print(f'{PROG_EXPORT}: note: {int8_caveat()}', file=sys.stderr, flush=True)
    # the reload check runs on text of the model's own task
    check = calibration_batches(net, vocab, tokenizer, args.calib_file, limit=32,
                                max_len=args.max_len)[0]
    meta = export_classifier(net, vocab, tokenizer, args.output, dtype=dtype,
                             calib_batches=calib, check_batch=check, max_len=args.max_len)
    check = meta['check']
    stdout.write(f"exported {args.model_dir} ({dtype}) to {meta['paths']['symbol']}, "
                 f"{meta['paths']['params']}, {meta['paths']['vocab']}, "
                 f"{meta['paths']['meta']}\n")
    stdout.write(f"reloaded with SymbolBlock.imports: max |logit diff| "
                 f"{check['max_abs_diff_to_converted']:.3g} to the {dtype} model, "
                 f"{check['max_abs_diff_to_float32']:.3g} to float32; same argmax as float32 "
                 f"on {check['argmax_agreement_with_float32']:.0%} of "
                 f"{check['batch_shape'][0]} texts of its task\n")
    stdout.flush()
    return meta


def _export_portable(args, dtype, stdout):
    """``--format onnx`` or ``hf``: export, check, and say so on ``stdout``."""
    from ..hf_export import check_output_dir, check_texts, export_hf
    if args.format == 'onnx':
        from ..onnx_export import export_onnx, require_onnx
        require_onnx()  # before the model loads
    check_output_dir(args.output, f'--format {args.format}')
    net, vocab, tokenizer = load_classifier(args.model_dir)
    if args.max_len is not None and args.max_len > net.config.max_length:
        raise UsageError(f'--max-len {args.max_len} exceeds the model max_length '
                         f'{net.config.max_length}')
    texts = check_texts(net, args.calib_file, limit=32)
    if args.format == 'hf':
        result = export_hf(net, vocab, tokenizer, args.output, texts, max_len=args.max_len)
        stdout.write(f"exported {args.model_dir} to {result['directory']} (Hugging Face "
                     f"BertForSequenceClassification: {', '.join(result['files'])})\n"
                     f"read back with gluonbert's Hugging Face reader: the encoder equal\n")
        checked = result['transformers']
        stdout.write('transformers is not installed: not loaded with it\n' if checked is None
                     else f"loaded with transformers: same token ids, max |logit diff| "
                          f"{checked['max_abs_logit_diff']:.3g} (tolerance "
                          f"{checked['tolerance']:.3g}) on {len(texts)} texts of its task\n")
    else:
        result = export_onnx(net, vocab, tokenizer, args.output, texts, dtype=dtype,
                             max_len=args.max_len)
        check = result['check']
        stdout.write(f"exported {args.model_dir} to {result['directory']} "
                     f"({', '.join(result['files'])})\n"
                     f"ran in onnxruntime: max |logit diff| {check['max_abs_logit_diff']:.3g} "
                     f"(tolerance {check['tolerance']:.3g}), max |prob diff| "
                     f"{check['max_abs_prob_diff']:.3g} to gluonbert float32 on "
                     f"{check['batch_shape'][0]} texts of its task\n")
        if 'int8' in result:
            low = result['int8']
            stdout.write(f"model_int8.onnx: same label as float32 on "
                         f"{low['label_agreement']:.0%}, max |prob diff| "
                         f"{low['max_abs_prob_diff']:.3g}"
                         f"{' (reduce_range: no VNNI)' if low['reduce_range'] else ''}\n")
    stdout.flush()
    return result


def export_main(argv=None):
    """Entry point of ``gluonbert-export``: parse ``argv``, run, return the exit status."""
    return run_command(PROG_EXPORT, export_cli, build_export_parser().parse_args(argv))


export_entry = console_entry(export_main)
