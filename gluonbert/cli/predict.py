"""``gluonbert-predict``: classify texts with a fine-tuned model, one JSON line per text.

Texts come as arguments, or one per line on stdin, read in chunks of ``--batch-size``
lines as they arrive; each chunk is answered before the next is read.
"""
import argparse
import codecs
import dataclasses
import io
import itertools
import json
import math
import sys
from typing import Optional

from .. import fast
from ..backends import BACKENDS, load_backend, require_backend
from ..errors import ModelError, UsageError
from ..hardware import require_bf16
from ..model_dir import load_classifier
from ..predict import predict
from ..sysinfo import fastest_path, int8_caveat
from .common import parse_contexts
from .runner import console_entry, run_command

__all__ = ['PROG_PREDICT', 'build_predict_parser', 'predict_cli', 'predict_main',
           'predict_entry']

PROG_PREDICT = 'gluonbert-predict'


def build_predict_parser():
    """The ``argparse`` parser of ``gluonbert-predict``."""
    parser = argparse.ArgumentParser(
        prog=PROG_PREDICT,
        description='Classify texts with a fine-tuned model; one JSON line per text. Reads '
                    'one text per line from stdin when no TEXT is given.')
    parser.add_argument('--model-dir', required=True,
                        help='directory written by gluonbert-finetune: OUTPUT_DIR/model, or '
                             'OUTPUT_DIR/adapter for a LoRA adapter (its base is loaded too), '
                             'or a Hugging Face BertForSequenceClassification directory')
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
                      help="int8 calibration texts of the model's task, one per line "
                           "(default: the 64 training texts gluonbert-finetune keeps with "
                           "the model)")
    fast.add_argument('--fast', action='store_true',
                      help="the fastest path that keeps float32's answers on this CPU: int8 "
                           "with VNNI/AMX, bfloat16 where native, else float32; says which "
                           "on stderr. With --backend onnxruntime|openvino: the fastest of "
                           "that backend's precisions, measured")
    fast.add_argument('--backend', choices=BACKENDS, default='mxnet',
                      help="mxnet (gluonbert itself), onnxruntime or openvino (on the model's "
                           "ONNX export, cached beside it), or auto: the fastest on this CPU "
                           "that keeps float32's labels, measured once and recorded "
                           "(docs/backends.md)")
    return parser


@dataclasses.dataclass(frozen=True)
class FastPath:
    """The CPU path that --dtype / --quantize / --fast resolve to."""
    dtype: str                      # 'float32' or 'bfloat16'
    quantize: Optional[str] = None  # None or 'int8' (with dtype 'float32')


def _validate_fast_flags(args):
    """--dtype / --quantize / --calib-file make sense together and on this machine;
    returns the :class:`FastPath` they (or --fast) choose. ``args`` is left as parsed."""
    dtype, quantize = args.dtype, args.quantize
    if args.backend != 'mxnet':
        if quantize or dtype != 'float32' or args.gpus or args.calib_file:
            raise UsageError(f'--backend {args.backend} runs on the CPU at its own precision; '
                             f'drop --dtype, --quantize, --calib-file or --gpus')
        if args.backend != 'auto':
            require_backend(args.backend)
        return FastPath('float32')
    if args.fast:
        if quantize or dtype != 'float32' or args.gpus:
            raise UsageError('--fast picks the CPU path itself; drop --dtype, --quantize or '
                             '--gpus')
        choice, why = fastest_path()
        print(f'{PROG_PREDICT}: --fast: {choice} ({why})', file=sys.stderr, flush=True)
        dtype, quantize = ('float32', 'int8') if choice == 'int8' else (choice, None)
    if quantize and dtype != 'float32':
        raise UsageError(f'--quantize {quantize} and --dtype {dtype} do not combine; pick one')
    if args.calib_file and not quantize:
        raise UsageError('--calib-file is for --quantize int8')
    if (quantize or dtype != 'float32') and args.gpus:
        raise UsageError('--dtype bfloat16 and --quantize int8 are CPU fast paths; use them '
                         'without --gpus')
    if dtype == 'bfloat16':
        require_bf16('--dtype bfloat16', 'use --dtype float32, or --fast (the fastest path '
                     'that keeps the answers here)')
    return FastPath(dtype, quantize)


def _fast_model(args, path, net, vocab, tokenizer, ctx, num_texts=0):
    """The classifier converted to ``path`` (a :class:`FastPath` from
    :func:`_validate_fast_flags`; gluonbert.fast)."""
    dtype, quantize, calib_file = path.dtype, path.quantize, args.calib_file
    if not quantize and dtype == 'float32':
        # the folded, oneDNN-fused copy (fast.to_float32 on CPU) takes about 0.2 s to make
        # and then runs about 1.35x faster than the hybridized model: worth it beyond a batch
        return fast.prepare(net, 'float32', ctx=ctx) if num_texts > args.batch_size else net
    calib = (fast.calibration_batches(net, vocab, tokenizer, calib_file,
                                      batch_size=args.batch_size, max_len=args.max_len, ctx=ctx)
             if quantize else None)
    if quantize and int8_caveat() and not args.fast:  # --fast never takes int8 with a caveat
        print(f'{PROG_PREDICT}: note: {int8_caveat()}', file=sys.stderr, flush=True)
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
        text = ''.join(json.dumps(obj, ensure_ascii=False, allow_nan=False)
                       .translate(_LINE_BREAKS) + '\n'
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


def _answer(prediction, model_dir, key, number):
    """The JSON object of ``prediction`` (of input ``key`` ``number``); a ModelError when
    its probabilities are not finite, which JSON cannot say (RFC 8259 has no NaN)."""
    values = prediction.probabilities.values()
    if not all(math.isfinite(p) for p in values):
        shown = ', '.join(f'{p:g}' for p in values)
        raise ModelError(f'{model_dir}: the model gives non-finite probabilities ({shown}) for '
                         f'{key} {number}: its weights overflow float32 or are damaged')
    return prediction.to_dict()


def predict_cli(args, stdin=None, stdout=None):
    """``gluonbert-predict``: one JSON line per TEXT, or per line of ``stdin`` (a text or
    binary stream), in order.

    Stdin is read in chunks of ``--batch-size`` lines as they arrive: each chunk is
    answered before the next is read. A line that cannot be classified (empty, blank,
    invalid UTF-8) gets ``{"line": N, "error": "..."}`` (``"argument"`` for TEXTs) on its
    output line. The float32 fast path is used beyond one batch: more TEXTs than
    ``--batch-size``, or a full first chunk of stdin.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if args.batch_size < 1:
        raise UsageError(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.max_len is not None and args.max_len < 3:
        raise UsageError(f'--max-len must be >= 3, got {args.max_len}')
    path = _validate_fast_flags(args)  # before the model loads
    contexts = parse_contexts(args.gpus)
    # a model directory, or a LoRA adapter merged into its base (the plain model's speed)
    if args.backend != 'mxnet':
        net, vocab, tokenizer, said = load_backend(args.model_dir, args.backend, fast=args.fast,
                                                   ctx=contexts[0])
        print(f'{PROG_PREDICT}: --backend {args.backend}: {said}', file=sys.stderr, flush=True)
    else:
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
    if args.backend == 'mxnet':
        net.hybridize(static_alloc=True)
        net = _fast_model(args, path, net, vocab, tokenizer, contexts[0], num_texts=expected)
    write = _json_lines_writer(stdout)
    try:
        for chunk in itertools.chain([first], chunks):
            texts = [text for _, text, problem in chunk if problem is None]
            predictions = iter(predict(net, contexts[0], vocab, tokenizer, texts,
                                       batch_size=args.batch_size, max_len=args.max_len))
            write([{key: number, 'error': problem} if problem else
                   _answer(next(predictions), args.model_dir, key, number)
                   for number, _, problem in chunk])
    except BrokenPipeError:  # the reader went away (e.g. `| head`): nothing more to say
        pass


def predict_main(argv=None):
    """Entry point of ``gluonbert-predict``: parse ``argv``, run, return the exit status."""
    return run_command(PROG_PREDICT, predict_cli, build_predict_parser().parse_args(argv))


predict_entry = console_entry(predict_main)
