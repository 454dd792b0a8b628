"""``--backend auto`` and ``--fast`` with a backend: the fastest (backend, precision) on
this CPU that keeps float32's answers, by measurement.

A short calibration on the model's own texts (the ones kept with its
:class:`~gluonbert.model.ClassifierInfo`) times each candidate this machine can run
(:func:`candidates`: mxnet float32, bfloat16 where native, int8 where the CPU has VNNI or
AMX, as :mod:`gluonbert.fast` allows; onnxruntime float32 and int8; OpenVINO f32, and bf16
where the CPU has AMX or AVX512_BF16) and keeps the fastest whose labels agree with
gluonbert's float32 on at least :data:`MIN_AGREEMENT` of the texts (the rule of
``--fast``, :func:`gluonbert.sysinfo.fastest_path`). The choice, with the timings, the CPU
and gluonbert's version, is written into the model's cache
(:func:`~gluonbert.backends.runners.cache_root`), keyed by the model's fingerprint, the
CPU's features and the thread count, so that later runs read it instead of measuring.
"""
import hashlib
import json
import os
import time

import numpy as np

from .._env import default_num_threads
from .._io import write_text
from .._version import __version__
from ..errors import UsageError
from ..hardware import bf16_support, cpu_info
from ..predict import mxnet_probabilities
from ..sysinfo import int8_caveat
from .runners import (cache_root, missing_backend, model_fingerprint, onnx_classifier,
                      onnx_export_dir, openvino_precision)

__all__ = ['MIN_AGREEMENT', 'RECORD_VERSION', 'available_backends', 'candidates', 'build',
           'measure', 'choose', 'choice_path', 'read_choice', 'write_choice', 'pick',
           'load_backend', 'backend_report', 'format_backend_report']

MIN_AGREEMENT = 0.99      # the share of float32's labels a faster path must keep
RECORD_VERSION = 1
_MIN_SECONDS = 0.5        # timed rounds go on until each candidate has run this long
_MAX_PASSES = 5


def available_backends():
    """The backends whose packages are installed here, mxnet first."""
    return ['mxnet'] + [b for b in ('onnxruntime', 'openvino') if missing_backend(b) is None]


def candidates(backends, cpu=None, bf16=None):
    """``(backend, precision)`` pairs worth measuring on this CPU for ``backends``."""
    cpu = cpu or cpu_info()
    bf16 = bf16_support()[0] if bf16 is None else bf16
    found = []
    if 'mxnet' in backends:
        found.append(('mxnet', 'float32'))
        if bf16:
            found.append(('mxnet', 'bfloat16'))
        if int8_caveat(cpu) is None:
            found.append(('mxnet', 'int8'))
    if 'onnxruntime' in backends:
        found += [('onnxruntime', 'float32'), ('onnxruntime', 'int8')]
    if 'openvino' in backends:
        found.append(('openvino', 'f32'))
        if openvino_precision(cpu) == 'bf16':
            found.append(('openvino', 'bf16'))
    return found


def _batches(net, vocab, tokenizer, texts, batch_size):
    """``(words, valid_length)`` NumPy batches of ``texts`` as gluonbert.predict pads them
    (sorted by length)."""
    from ..data import pad_ids
    from ..predict import encoder_for
    encode = encoder_for(net, vocab, tokenizer)
    encoded = sorted((encode(t) for t in texts), key=len)
    return [pad_ids(encoded[i:i + batch_size], vocab.pad_id)
            for i in range(0, len(encoded), batch_size)]


def build(candidate, net, vocab, tokenizer, model_dir, *, ctx=None, fingerprint=None,
          exported=None):
    """The predictor of ``candidate`` (a ``(backend, precision)`` pair): an MXNet block, or
    a :class:`~gluonbert.backends.runners.BackendClassifier` of the model's cached ONNX
    export."""
    import mxnet as mx
    from .. import fast
    backend, precision = candidate
    ctx = ctx or mx.cpu()
    if backend == 'mxnet':
        calib = (fast.calibration_batches(net, vocab, tokenizer, ctx=ctx)
                 if precision == 'int8' else None)
        return fast.prepare(net, precision, calib_batches=calib, ctx=ctx)
    directory = onnx_export_dir(model_dir, net, vocab, tokenizer, fingerprint=fingerprint,
                                exported=exported)
    return onnx_classifier(directory, net, backend, precision)


def _run(predictor, ctx, words, valid_length):
    run_padded = getattr(predictor, 'run_padded', None)
    if run_padded is not None:
        return run_padded(words, valid_length)
    return mxnet_probabilities(predictor, ctx, words, valid_length)


def _pass(predictor, ctx, batches):
    """Seconds of one pass of ``predictor`` over ``batches``."""
    start = time.perf_counter()
    for words, valid_length in batches:
        _run(predictor, ctx, words, valid_length)
    return time.perf_counter() - start


def measure(net, vocab, tokenizer, model_dir, options, *, ctx=None, batch_size=32,
            fingerprint=None, exported=None):
    """Time each of ``options`` on the model's calibration texts against gluonbert's
    float32 (``net``, hybridized); returns ``(rows, predictors)``: one dict per option
    (``backend``, ``precision``, ``texts_per_s``, ``label_agreement``,
    ``max_abs_prob_diff``, ``keeps_answers``, or ``error`` where it could not run), the
    built predictors by option and the number of texts."""
    import mxnet as mx
    from ..hf_export import check_texts
    ctx = ctx or mx.cpu()
    texts = check_texts(net, limit=64)
    batches = _batches(net, vocab, tokenizer, texts, batch_size)
    reference = np.concatenate([mxnet_probabilities(net, ctx, w, v) for w, v in batches])
    rows, predictors, answers = [], {}, {}
    for option in options:  # built, and a warm-up pass whose answers are kept
        row = {'backend': option[0], 'precision': option[1]}
        rows.append(row)
        try:
            predictor = build(option, net, vocab, tokenizer, model_dir, ctx=ctx,
                              fingerprint=fingerprint, exported=exported)
            answers[option] = np.concatenate([_run(predictor, ctx, w, v) for w, v in batches])
        except (RuntimeError, ValueError, OSError, mx.base.MXNetError) as err:
            # a runtime that cannot compile or run this model here is not a candidate
            row['error'] = f'{type(err).__name__}: {str(err).strip().splitlines()[0]}'[:200]
            continue
        predictors[option] = predictor
    # timed in rounds, one pass of each candidate per round, so that other work on the
    # machine slows them alike; each one's fastest pass counts
    best, rounds, spent = dict.fromkeys(predictors, float('inf')), 0, 0.0
    while predictors and (rounds < 2 or (spent < _MIN_SECONDS and rounds < _MAX_PASSES)):
        for option, predictor in predictors.items():
            seconds = _pass(predictor, ctx, batches)
            best[option], spent = min(best[option], seconds), spent + seconds / len(predictors)
        rounds += 1
    for row in rows:
        option = (row['backend'], row['precision'])
        if option not in predictors:
            continue
        agreement = float((answers[option].argmax(1) == reference.argmax(1)).mean())
        row.update(texts_per_s=round(len(texts) / best[option], 2), label_agreement=agreement,
                   max_abs_prob_diff=float(np.abs(answers[option] - reference).max()),
                   keeps_answers=agreement >= MIN_AGREEMENT)
    return rows, predictors, len(texts)


def choose(rows):
    """The fastest row that keeps float32's answers (None when none does)."""
    kept = [r for r in rows if r.get('keeps_answers')]
    return max(kept, key=lambda r: r['texts_per_s']) if kept else None


def _cpu_key(cpu, threads):
    text = json.dumps([cpu.model, cpu.features(), threads])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def choice_path(model_dir, scope, fingerprint=None, cpu=None, threads=None):
    """Where the choice among ``scope`` (``auto`` or one backend's precisions) is kept for
    this model on this CPU."""
    cpu, threads = cpu or cpu_info(), threads or default_num_threads()
    fingerprint = fingerprint or model_fingerprint(model_dir)
    return os.path.join(cache_root(model_dir), 'choice',
                        f'{fingerprint}-{_cpu_key(cpu, threads)}-{scope}.json')


def read_choice(model_dir, scope, fingerprint=None):
    """The recorded choice for ``scope``, or None where there is none for this model, CPU,
    thread count, gluonbert version and set of installed backends."""
    path = choice_path(model_dir, scope, fingerprint)
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get('version') != RECORD_VERSION or \
            record.get('gluonbert') != __version__ or \
            record.get('available') != available_backends() or \
            not isinstance(record.get('choice'), dict):
        return None
    return record


def write_choice(model_dir, scope, rows, picked, texts, fingerprint=None):
    """Record the measurement (atomically) and return the record."""
    cpu, threads = cpu_info(), default_num_threads()
    record = {'version': RECORD_VERSION, 'gluonbert': __version__, 'scope': scope,
              'cpu': cpu.describe(), 'cpu_features': cpu.features(), 'threads': threads,
              'available': available_backends(), 'texts': texts,
              'min_label_agreement': MIN_AGREEMENT, 'measured': rows,
              'choice': {'backend': picked['backend'], 'precision': picked['precision'],
                         'texts_per_s': picked['texts_per_s']}}
    path = choice_path(model_dir, scope, fingerprint, cpu, threads)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text(path, json.dumps(record, indent=2) + '\n')
    return record


def pick(net, vocab, tokenizer, model_dir, scope, *, ctx=None, fingerprint=None,
         exported=None):
    """``(predictor, record, measured_now)`` for ``scope`` (``auto``, or one backend):
    the recorded choice when there is one, else measured and recorded."""
    fingerprint = fingerprint or model_fingerprint(model_dir)
    backends = available_backends() if scope == 'auto' else [scope]
    if net.info.text_pair:
        raise UsageError('--backend auto and --fast with a backend measure single-text '
                         'classifiers only; this one classifies sentence pairs')
    record = read_choice(model_dir, scope, fingerprint)
    if record is not None:
        option = (record['choice']['backend'], record['choice']['precision'])
        return (build(option, net, vocab, tokenizer, model_dir, ctx=ctx,
                      fingerprint=fingerprint, exported=exported), record, False)
    rows, predictors, texts = measure(net, vocab, tokenizer, model_dir,
                                      candidates(backends), ctx=ctx, fingerprint=fingerprint,
                                      exported=exported)
    picked = choose(rows) or {'backend': 'mxnet', 'precision': 'float32', 'texts_per_s': None}
    record = write_choice(model_dir, scope, rows, picked, texts, fingerprint)
    option = (picked['backend'], picked['precision'])
    predictor = predictors.get(option) or build(option, net, vocab, tokenizer, model_dir,
                                                ctx=ctx, fingerprint=fingerprint)
    return predictor, record, True


def load_backend(model_dir, backend='mxnet', *, fast=False, ctx=None, exported=None):
    """``(predictor, vocab, tokenizer, said)`` of a model directory run by ``backend``
    (``mxnet``, ``onnxruntime``, ``openvino`` or ``auto``); ``predictor`` goes wherever
    :func:`gluonbert.predict.predict` takes a net, ``said`` is one line on what runs.

    ``mxnet`` is the hybridized float32 model (its fast paths are gluonbert-predict's
    --dtype/--quantize/--fast); ``onnxruntime`` runs the float32 export and ``openvino``
    the export at :func:`~gluonbert.backends.runners.openvino_precision`. ``auto``, or
    ``fast`` with onnxruntime or openvino, takes the fastest candidate that keeps float32's
    labels (:func:`pick`). A missing package is an EnvironmentProblem naming the extra.
    """
    from ..model_dir import load_classifier
    from .runners import BACKENDS, require_backend
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend not in ('mxnet', 'auto'):
        require_backend(backend)  # before the model loads
    net, vocab, tokenizer = load_classifier(model_dir, ctx=ctx)
    net.hybridize(static_alloc=True)
    if backend == 'mxnet' and not fast:
        return net, vocab, tokenizer, 'mxnet float32'
    fingerprint = model_fingerprint(model_dir)
    if backend == 'auto' or fast:
        predictor, record, now = pick(net, vocab, tokenizer, model_dir, backend, ctx=ctx,
                                      fingerprint=fingerprint, exported=exported)
        choice = record['choice']
        how = 'measured now' if now else 'as measured before'
        speed = choice['texts_per_s']
        said = (f"{choice['backend']} {choice['precision']} ({how}: "
                + (f'{speed:.1f} texts/s on the calibration texts, ' if speed else '')
                + "the fastest that keeps float32's labels; "
                + f'{choice_path(model_dir, backend, fingerprint)})')
        return predictor, vocab, tokenizer, said
    precision = 'float32' if backend == 'onnxruntime' else openvino_precision()
    predictor = build((backend, precision), net, vocab, tokenizer, model_dir, ctx=ctx,
                      fingerprint=fingerprint, exported=exported)
    return predictor, vocab, tokenizer, f'{backend} {precision}'


def _version(package):
    import importlib
    return getattr(importlib.import_module(package), '__version__', '?')


def backend_report(model_dir=None):
    """What gluonbert-info says of the backends: each one's state, what ``auto`` does
    here, and (with ``model_dir``) the choice recorded for that model on this CPU."""
    available = available_backends()
    states = {'mxnet': 'yes'}
    for backend in ('onnxruntime', 'openvino'):
        problem = missing_backend(backend)
        states[backend] = f'yes ({_version(backend)})' if problem is None else f'no: {problem}'
    if len(available) == 1:
        auto = ('mxnet only (no other backend installed: '
                f'{missing_backend("onnxruntime") or missing_backend("openvino")})')
    else:
        auto = 'measures ' + ', '.join(f'{b} {p}' for b, p in candidates(available))
    result = {'backends': states, 'auto': auto}
    if model_dir is not None:
        record = read_choice(model_dir, 'auto')
        result['model_dir'] = model_dir
        result['choice_file'] = choice_path(model_dir, 'auto')
        result['choice'] = record
    return result


def format_backend_report(info):
    """Lines of :func:`backend_report` for gluonbert-info's text output."""
    lines = ['backends: ' + '; '.join(f'{k} {v}' for k, v in info['backends'].items()),
             f"--backend auto: {info['auto']}"]
    if 'model_dir' in info:
        record = info['choice']
        if record is None:
            lines.append(f"{info['model_dir']}: no backend choice recorded for this CPU "
                         f"(gluonbert-predict --backend auto measures and records it)")
        else:
            choice = record['choice']
            lines.append(f"{info['model_dir']}: --backend auto runs {choice['backend']} "
                         f"{choice['precision']} (measured by gluonbert {record['gluonbert']} "
                         f"on {record['texts']} texts, {record['threads']} threads, "
                         f"{record['cpu']})")
            for row in record['measured']:
                lines.append('  ' + _row_text(row))
    return lines


def _row_text(row):
    name = f"{row['backend']} {row['precision']}"
    if 'error' in row:
        return f'{name}: did not run ({row["error"]})'
    kept = 'keeps' if row['keeps_answers'] else 'changes'
    return (f"{name}: {row['texts_per_s']:.1f} texts/s, {kept} the labels "
            f"({row['label_agreement']:.1%} agree), max |dp| {row['max_abs_prob_diff']:.2g}")
