"""``gluonbert-export``: a fine-tuned classifier as a plain MXNet model.

Writes ``PREFIX-symbol.json`` and ``PREFIX-0000.params`` (MXNet's ``HybridBlock.export``
format), ``PREFIX-vocab.txt`` and ``PREFIX-meta.json``. The model loads without gluonbert::

    import json, mxnet as mx
    meta = json.load(open(PREFIX + '-meta.json'))
    net = mx.gluon.SymbolBlock.imports(PREFIX + '-symbol.json', meta['input_names'],
                                       PREFIX + '-0000.params')
    logits = net(words, segments, valid_length)   # float32 NDArrays, see meta['inputs']

float32 exports reproduce the fine-tuned model's logits exactly. bfloat16 and int8 exports
(see :mod:`gluonbert.fast`) reproduce the converted model exactly and approximate the
float32 model: ``meta['check']`` records, on a batch of the model's own task (its
calibration texts, or the file given), the largest logit difference and the argmax
agreement measured right after export. (On a MiniLM
fine-tuned on the bundled reviews, bfloat16 kept every test prediction; int8 changed 1 in
100.)
"""
import json
import os
import shutil
import tempfile
import warnings

import numpy as np
import mxnet as mx

from ._io import boundary, check_space, fsync_directory, ndarray_file_bytes, write_text, writing
from .errors import UsageError

__all__ = ['export_classifier']

EXPORT_FORMAT = 'gluonbert-export'
EXPORT_VERSION = 1


def _graph_bytes(model):
    """About the size of the parameter file ``model.export`` writes (its arrays' bytes)."""
    arrays = {}
    for name, param in model.collect_params().items():
        try:
            arrays[f'arg:{name}'] = param.data()
        except (RuntimeError, ValueError):  # not initialised: not written either
            continue
    return ndarray_file_bytes(arrays)


def _vocab_bytes(vocab):
    """The size of ``vocab.save``'s file: one token a line."""
    return sum(len(token.encode('utf-8')) + 1 for token in vocab.idx_to_token)


def _write_graph(model, staging, target, files, others):
    """Write ``model``'s cached graph and parameters into ``staging`` (as
    ``model-symbol.json`` and ``model-0000.params``); returns the graph's input names.
    ``target`` (of :func:`gluonbert._io.writing`) is told which of ``files`` is written and
    the bytes of the export (``others``: those of the files written after these two)."""
    from .fast import INPUT_NAMES
    staged = os.path.join(staging, 'model')
    params_bytes = _graph_bytes(model)
    target.expect(files['symbol'], total=params_bytes + others)  # and the graph: more
    try:
        # keep AMP's casts in the file: without them a bfloat16 graph would not run
        model.export(staged, epoch=0, remove_amp_cast=False)
    except BaseException:
        if os.path.exists(f'{staged}-0000.params'):  # the graph was written, its parameters not
            target.expect(files['params'], params_bytes, total=os.path.getsize(
                f'{staged}-symbol.json') + params_bytes + others)
        else:
            target.partial(f'{staged}-symbol.json')
        raise
    # SLF001, why: gluon has no public way to read a traced graph's input variables
    input_names = [s.name for s in model._cached_graph[0]]  # noqa: SLF001  (see above)
    if input_names != list(INPUT_NAMES):
        raise RuntimeError(f'unexpected input names {input_names}, expected {INPUT_NAMES}')
    return input_names


def _staged_paths(staging):
    """Where the four files are written before they are renamed into place."""
    return {'symbol': os.path.join(staging, 'model-symbol.json'),
            'params': os.path.join(staging, 'model-0000.params'),
            'vocab': os.path.join(staging, 'vocab.txt'),
            'meta': os.path.join(staging, 'meta.json')}


def check_prefix(prefix):
    """``prefix`` if files ``PREFIX-...`` can be written there (its folder is created), else
    a UsageError."""
    if not prefix or prefix.endswith(('/', os.sep)) or os.path.isdir(prefix):
        raise UsageError(f'--output takes a file prefix such as exported/model (files '
                         f'PREFIX-symbol.json, ... are written), got {prefix!r}')
    parent = os.path.dirname(os.path.abspath(prefix))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UsageError(f'--output: {parent} is not a directory')
    os.makedirs(parent, exist_ok=True)
    return prefix


def export_classifier(net, vocab, tokenizer, prefix, *, dtype='float32', calib_batches=None,
                      check_batch=None, max_len=None):
    """Export a :class:`~gluonbert.BERTClassifier` (float32, or converted to ``dtype``).

    Parameters
    ----------
    net : BERTClassifier
    vocab, tokenizer : its vocabulary and tokenizer
    prefix : str
        Output file prefix; parent directories are created.
    dtype : {'float32', 'bfloat16', 'int8'}
    calib_batches : list of (words, segments, valid_length), required for int8
    check_batch : (words, segments, valid_length), optional
        Inputs on which the reloaded export is compared with the in-memory models (default:
        the first calibration batch, else a small batch of random ids).
    max_len : int, optional
        Sequence length recorded in the metadata (default: the model's training max_len).

    Returns
    -------
    dict
        The metadata written to ``PREFIX-meta.json``, including the file paths and the
        reload check (``check``: largest |logit difference| to the in-memory model in the
        same dtype and to the float32 model).
    """
    from .fast import DTYPES, prepare
    from .model import with_kernels
    from .predict import max_len_for
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {", ".join(DTYPES)}, got {dtype!r}')
    prefix = check_prefix(os.fspath(prefix))
    limit = max_len_for(net, max_len)
    if check_batch is None:
        if calib_batches:
            check_batch = calib_batches[0]
        else:
            from .fast import example_inputs
            check_batch = example_inputs(net, batch_size=4, seq_len=min(16, limit))
    files = {'symbol': f'{prefix}-symbol.json', 'params': f'{prefix}-0000.params',
             'vocab': f'{prefix}-vocab.txt', 'meta': f'{prefix}-meta.json'}
    # traced with MXNet's own operators only, so that the files load in plain MXNet
    # (gluonbert's fused CPU operators are an extension library); net is not changed
    portable = with_kernels(net, layer_norm_kernels='mxnet', dropout_kernels='mxnet',
                            attention_kernels='mxnet')
    portable.hybridize(static_alloc=True)
    reference = portable(*check_batch).asnumpy()  # float32 logits; builds the cached graph
    model = (prepare(portable, dtype, calib_batches=calib_batches, portable=True)
             if dtype != 'float32' else portable)
    expected = model(*check_batch).asnumpy()
    # every file is written to a staging directory next to the destination, checked, then
    # renamed into place: a failure (a full disk) leaves a previous export as it was
    parent = os.path.dirname(os.path.abspath(files['params']))
    vocab_bytes = _vocab_bytes(vocab)
    check_space(files['params'], _graph_bytes(model) + vocab_bytes)
    with writing(files['symbol']) as target:
        staging = tempfile.mkdtemp(dir=parent, prefix='.export-')
        try:
            boundary('export.staging', staging)
            staged = _staged_paths(staging)
            input_names = _write_graph(model, staging, target, files, vocab_bytes)
            written = os.path.getsize(staged['symbol']) + os.path.getsize(staged['params'])
            target.expect(files['vocab'], vocab_bytes, total=written + vocab_bytes)
            vocab.save(staged['vocab'])
            check = _reload_check(staged, input_names, check_batch, reference, expected)
            meta = _metadata(net, vocab, tokenizer, dtype, files, input_names, limit,
                             calib_batches, check)
            text = json.dumps(meta, indent=2) + '\n'
            target.expect(files['meta'], len(text), total=written + vocab_bytes + len(text))
            write_text(staged['meta'], text)
            for key in ('symbol', 'params', 'vocab', 'meta'):
                os.replace(staged[key], files[key])
            fsync_directory(parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    meta['paths'] = files
    return meta


def _reload_check(staged, input_names, check_batch, reference, expected):
    """Reload the staged files with plain MXNet, as a user of the files would, and compare
    with the in-memory models: ``meta['check']``."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # MXNet: "Cannot decide type for ... data0"
        reloaded = mx.gluon.SymbolBlock.imports(staged['symbol'], input_names,
                                                staged['params'])
    got = reloaded(*check_batch).astype('float32').asnumpy()
    return {'batch_shape': list(check_batch[0].shape),
            'max_abs_diff_to_converted': float(np.abs(got - expected).max()),
            'max_abs_diff_to_float32': float(np.abs(got - reference).max()),
            'argmax_agreement_with_float32': float((got.argmax(1) == reference.argmax(1))
                                                   .mean())}


def _metadata(net, vocab, tokenizer, dtype, files, input_names, limit, calib_batches, check):
    """What ``PREFIX-meta.json`` holds."""
    from ._version import __version__
    from .predict import label_names_of
    names = label_names_of(net)
    config = net.config
    meta = {
        'format': EXPORT_FORMAT, 'version': EXPORT_VERSION,
        'gluonbert_version': __version__, 'mxnet_version': mx.__version__,
        'dtype': dtype,
        'files': {k: os.path.basename(v) for k, v in files.items()},
        'input_names': input_names,
        'inputs': [
            {'name': input_names[0], 'role': 'words', 'shape': ['batch', 'seq_len'],
             'dtype': 'float32', 'description': '[CLS] tokens [SEP] WordPiece ids from '
             'PREFIX-vocab.txt, padded with pad_id'},
            {'name': input_names[1], 'role': 'segments', 'shape': ['batch', 'seq_len'],
             'dtype': 'float32', 'description': 'segment ids: 0 for a single text and padding'},
            {'name': input_names[2], 'role': 'valid_length', 'shape': ['batch'],
             'dtype': 'float32', 'description': 'number of real tokens per row, in [1, seq_len]'},
        ],
        'outputs': [{'name': 'logits', 'shape': ['batch', len(names)], 'dtype': 'float32',
                     'description': 'softmax gives the class probabilities'}],
        'max_len': limit, 'max_seq_len': config.max_length,
        'truncate': getattr(net, 'extra', {}).get('truncate', 'head'),
        'label_names': names, 'num_classes': len(names),
        'special_tokens': {'pad_id': vocab.pad_id, 'cls_id': vocab.cls_id,
                           'sep_id': vocab.sep_id, 'unk_id': vocab.unk_id},
        'tokenizer': {'lower': tokenizer.lower, 'strip_accents': tokenizer.strip_accents,
                      'max_input_chars_per_word': tokenizer.max_input_chars_per_word},
        'config': config.to_dict(),
        'check': check,
    }
    if dtype == 'int8':
        meta['calibration'] = {'mode': 'naive', 'batches': len(calib_batches),
                               'examples': int(sum(b[0].shape[0] for b in calib_batches))}
    return meta
