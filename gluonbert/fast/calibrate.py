"""Inputs for converting and calibrating: example batches, texts encoded as
:func:`gluonbert.predict` does, and the recording of layer outputs that int8 calibration
needs."""
import os

import numpy as np
import mxnet as mx

from ..errors import DataError

__all__ = ['example_inputs', 'encode_batches', 'calibration_texts', 'calibration_batches',
           'record_layer_outputs']

def example_inputs(net, batch_size=2, seq_len=8, ctx=None):
    """A small valid ``(words, segments, valid_length)`` batch for tracing ``net``."""
    ctx = ctx or mx.cpu()
    config = getattr(net, 'config', None)
    vocab_size = config.vocab_size if config is not None else 2
    seq_len = min(seq_len, config.max_length) if config is not None else seq_len
    rng = np.random.RandomState(0)
    words = mx.nd.array(rng.randint(0, vocab_size, (batch_size, seq_len)), ctx=ctx)
    segments = mx.nd.zeros((batch_size, seq_len), ctx=ctx)
    valid_length = mx.nd.array(np.linspace(seq_len, max(1, seq_len // 2), batch_size).round(),
                               ctx=ctx)
    return words, segments, valid_length


def encode_batches(net, vocabulary, tokenizer, texts, batch_size=32, max_len=None, ctx=None):
    """Texts -> list of ``(words, segments, valid_length)`` batches, encoded and truncated as
    :func:`gluonbert.predict` does (for calibration and benchmarks)."""
    from ..data import pad_ids
    from ..predict import encoder_for
    ctx = ctx or mx.cpu()
    encode = encoder_for(net, vocabulary, tokenizer, max_len)
    encoded = [encode(t) for t in texts]
    batches = []
    for start in range(0, len(encoded), batch_size):
        words, valid_length = pad_ids(encoded[start:start + batch_size], vocabulary.pad_id)
        batches.append((mx.nd.array(words, ctx=ctx), mx.nd.zeros(words.shape, ctx=ctx),
                        mx.nd.array(valid_length, ctx=ctx)))
    return batches


def calibration_texts(path=None, limit=64, *, net=None):
    """Up to ``limit`` texts of the model's own task for int8 calibration and export checks.

    From ``path`` (UTF-8, one text per non-empty line) if given, else from ``net``'s
    :class:`~gluonbert.model.ClassifierInfo` (``gluonbert-finetune`` keeps 64 training
    texts there). Without either: a DataError that asks for a file, rather than
    calibrating on another task's text.
    """
    from ..predict import info_of
    if limit < 1:
        raise ValueError(f'the calibration size must be >= 1, got {limit}')
    if path is None:
        info = info_of(net) if net is not None else None
        if info is None or not info.calibration_texts:
            raise DataError('no calibration texts: this model keeps none of its task (saved '
                            'before gluonbert kept them, or built in Python); give a file of '
                            'texts of its task, one per line (--calib-file FILE)')
        if info.text_pair:
            raise DataError('int8 calibration of sentence-pair models is not supported yet; '
                            'use float32 or bfloat16')
        return list(info.calibration_texts[:limit])
    if not os.path.isfile(path):
        raise DataError(f'no such calibration file: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            texts = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as err:
        raise DataError(f'{path} is not UTF-8 text ({err.reason} at byte {err.start})') \
            from err
    if not texts:
        raise DataError(f'calibration file {path} has no text (one text per line)')
    return texts[:limit]


def calibration_batches(net, vocabulary, tokenizer, path=None, *, limit=64, batch_size=32,
                        max_len=None, ctx=None):
    """:func:`encode_batches` of :func:`calibration_texts` (for :func:`quantize_int8`)."""
    return encode_batches(net, vocabulary, tokenizer, calibration_texts(path, limit, net=net),
                          batch_size=batch_size, max_len=max_len, ctx=ctx)


def record_layer_outputs(sym, names, arg_params, aux_params, batches, collect):
    """Run the float graph ``sym`` over ``batches`` on the CPU, handing every layer's output
    to ``collect(name, array_handle)`` (a quantization collector's ``collect``).

    MXNet 1.9 offers a monitor callback only on a bound executor, and ``Module`` keeps its
    executor in a private attribute: this function is the one place that reaches it.
    """
    module = mx.mod.Module(symbol=sym, context=mx.cpu(), data_names=names, label_names=None)
    module.bind(for_training=False, data_shapes=[(n, x.shape) for n, x in zip(names, batches[0])])
    module.set_params(arg_params, aux_params, allow_missing=False, force_init=True)
    bound = None
    for batch in batches:
        shapes = [(n, x.shape) for n, x in zip(names, batch)]
        if shapes != bound:
            # a new shape rebinds the executor: (re)install the monitor on it
            module.reshape(shapes)
            executor = module._exec_group.execs[0]  # noqa: SLF001  see the docstring
            executor.set_monitor_callback(collect, monitor_all=True)
            bound = shapes
        module.forward(mx.io.DataBatch(data=[x.as_in_context(mx.cpu()) for x in batch]),
                       is_train=False)
        for out in module.get_outputs():
            out.wait_to_read()
