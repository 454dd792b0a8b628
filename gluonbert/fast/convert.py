"""Conversions of a fine-tuned :class:`~gluonbert.BERTClassifier` for fast inference.

- :func:`optimize`: hybridize with static memory (and optionally partition for a backend).
- :func:`to_float32`: a float32 copy with constants folded and oneDNN fusion.
- :func:`to_bfloat16`: mixed precision with oneDNN bfloat16 matrix products (AMP graph
  conversion). Needs a CPU with AVX512-BF16 or AMX to be faster than float32.
- :func:`quantize_int8`: post-training int8 quantization of the dense layers with oneDNN,
  calibrated (naive min/max) on a few batches. Needs AVX512-VNNI / AMX to pay off.
- :func:`prepare`: one of the above by name (``'float32'``, ``'bfloat16'``, ``'int8'``).

``to_float32``, ``to_bfloat16`` and ``quantize_int8`` return an
:class:`InferenceClassifier`: a ``SymbolBlock`` that takes ``(words, segments,
valid_length)`` like the original, returns float32 logits, and carries ``info``
(:class:`~gluonbert.model.ClassifierInfo`), ``num_classes`` and ``config``, so
:func:`gluonbert.predict`, :func:`gluonbert.predict_sentiment` and
:func:`gluonbert.evaluate_accuracy` accept it in place of the original. It can be
exported (:func:`gluonbert.export.export_classifier`) and reloaded with plain MXNet.

Every conversion returns a new block and leaves ``net`` as it was (its settings, its
parameters, its cached graph). Global state is not changed, except by
:func:`init_amp_bfloat16`, which turns on MXNet's process-wide AMP for training.

Only inference: the converted blocks have no gradients. For bfloat16 *training* pass
``dtype='bfloat16'`` to :func:`gluonbert.train_loop` (AMP, see :func:`init_amp_bfloat16`).
"""
import json
import os
import tempfile

import mxnet as mx
from mxnet.gluon import SymbolBlock

from .._env import quiet_native_stderr
from .._io import save_ndarrays
from ..amp import bf16_fp32_ops, init_amp_bfloat16
from ..hardware import require_bf16
from .calibrate import example_inputs, record_layer_outputs
from .passes import inference_graph, partition

__all__ = ['DTYPES', 'INTERLEAVED_ATTENTION_OPS', 'INT8_EXCLUDED_OPERATORS',
           'init_amp_bfloat16', 'optimize', 'to_float32', 'to_bfloat16', 'quantize_int8',
           'prepare', 'InferenceClassifier']

DTYPES = ('float32', 'bfloat16', 'int8')

# MXNet 1.9.1's AMP lists do not mention the fused self-attention kernels, which have no
# bfloat16 implementation: declare them float32 (AMP then casts their inputs).
INTERLEAVED_ATTENTION_OPS = ('_contrib_interleaved_matmul_selfatt_qk',
                             '_contrib_interleaved_matmul_selfatt_valatt')

# Operators kept in float32 by quantize_int8. The oneDNN int8 self-attention kernels fail
# on this graph in MXNet 1.9.1 (checked again 2026-11-30): quantizing the QK^T product
# corrupts the heap at the first forward ("free(): invalid pointer"; both, a segfault);
# the attention-times-V product alone needs uint8 softmax inputs (quantized_dtype 'auto')
# and then runs, at no measurable gain (MiniLM 32x128: 118.6 against 115.8 seq/s): the two
# products are about 3% of BERT's inference FLOPs at 128 tokens. An int8 embedding table
# only loses accuracy (the lookup costs nothing), and the int8 residual adds feed float32
# LayerNorms (a dequantize each), so they save nothing either. Activation (the pooler's
# tanh) has no int8 kernel (MXNet would exclude it itself, with a warning).
INT8_EXCLUDED_OPERATORS = ('_sg_mkldnn_selfatt_qk', '_sg_mkldnn_selfatt_valatt', 'Embedding',
                           'elemwise_add', 'Activation')

# ------------------------------------------------------------------------- the block
class InferenceClassifier(SymbolBlock):
    """A converted classifier graph: ``(words, segments, valid_length) -> float32 logits``.

    Holds the source model's ``config``, ``num_classes`` and ``info`` (its
    :class:`~gluonbert.model.ClassifierInfo`: label names, training ``max_len`` and
    truncation), so the prediction helpers treat it like a
    :class:`~gluonbert.BERTClassifier`. ``dtype`` says how it computes.
    """

    def __init__(self, outputs, inputs, params=None, *, source=None, dtype='float32'):
        super().__init__(outputs, inputs, params=params)
        self.dtype = dtype
        self.config = getattr(source, 'config', None)
        self.num_classes = getattr(source, 'num_classes', None)
        self.info = getattr(source, 'info', None)

    @property
    def label_names(self):
        return None if self.info is None else list(self.info.label_names)

    def forward(self, words, segments, valid_length=None):  # pylint: disable=arguments-differ
        if valid_length is None and isinstance(words, mx.nd.NDArray):
            valid_length = mx.nd.full((words.shape[0],), words.shape[1], ctx=words.context)
        if isinstance(words, mx.nd.NDArray) and self.config is not None:
            from ..model import check_inputs
            cfg = self.config
            check_inputs(words, segments, valid_length, max_length=cfg.max_length,
                         vocab_size=cfg.vocab_size, type_vocab_size=cfg.type_vocab_size)
        return super().forward(words, segments, valid_length)

    def __repr__(self):
        return (f'InferenceClassifier(dtype={self.dtype}, num_classes={self.num_classes}, '
                f'config={self.config})')


def _load_block(sym, names, arg_params, aux_params, source, dtype, ctx):
    block = InferenceClassifier(sym, [mx.sym.var(n, dtype='float32') for n in names],
                                source=source, dtype=dtype)
    values = {f'arg:{k}': v for k, v in arg_params.items()}
    values.update({f'aux:{k}': v for k, v in aux_params.items()})
    with tempfile.TemporaryDirectory() as tmp:
        # a round trip through a file, as SymbolBlock.imports loads: dtypes come from the values
        path = os.path.join(tmp, 'params')
        save_ndarrays(path, {k: v.as_in_context(mx.cpu()) for k, v in values.items()})
        block.collect_params().load(path, ctx=ctx, cast_dtype=True, dtype_source='saved')
    return block


# -------------------------------------------------------------------------- converters
def optimize(net, *, static_shape=True, backend=None, example=None):
    """Hybridize ``net`` for inference with static memory planning; returns ``net``.

    Parameters
    ----------
    static_shape : bool, default True
        Also plan for fixed input shapes (best when batches repeat shapes, e.g. padded to
        ``max_len``; a new shape re-plans once).
    backend : str, optional
        Partition the graph for a subgraph backend first, e.g. ``'MKLDNN'`` (oneDNN
        operator fusion: fused self-attention and Dense+GELU kernels, which a plainly
        hybridized graph does not get; :func:`to_float32` does this on a folded copy).
    example : tuple of NDArray, optional
        Inputs for ``backend`` partitioning (default :func:`example_inputs`).
    """
    if backend:
        example = example or example_inputs(net)
        net.optimize_for(*example, backend=backend, static_alloc=True,
                         static_shape=static_shape)
    else:
        net.hybridize(static_alloc=True, static_shape=static_shape)
    return net


def to_float32(net, *, ctx=None, example=None, static_shape=True, portable=False):
    """A float32 copy of ``net`` for inference, partitioned for oneDNN on CPU.

    The parameter-only parts of the graph are precomputed (:func:`fold_constants`) and the
    graph is fused by the oneDNN backend: the self-attention kernels become oneDNN's
    (about 3x faster than the generic ones) and GELU joins its Dense layer. LayerNorm is
    gluonbert's fused operator when available (MiniLM 32x128: +5%), unless ``portable``
    asks for MXNet's operators only (a graph to export). Outputs equal the original's to
    float32 rounding (about 1e-6). ``net`` itself is not changed. On a GPU the copy is
    folded, not partitioned (the oneDNN backend is CPU-only).

    Returns an :class:`InferenceClassifier`, hybridized with static memory.
    """
    ctx = ctx or mx.cpu()
    on_cpu = ctx.device_type == 'cpu'
    example = example or example_inputs(net, ctx=ctx)
    # gluonbert's fused operators are CPU-only: a GPU graph is traced with MXNet's
    names, sym, arg_params, aux_params = inference_graph(net, example,
                                                         builtin=portable or not on_cpu)
    if on_cpu:
        sym = partition(sym, names, example, arg_params, aux_params, ctx)
    block = _load_block(sym, names, arg_params, aux_params, net, 'float32', ctx)
    block.hybridize(static_alloc=True, static_shape=static_shape)
    return block


def to_bfloat16(net, *, ctx=None, example=None, static_shape=True, cast_params=True,
                fuse=True, portable=False):
    """A bfloat16 mixed-precision copy of ``net`` for CPU inference.

    Dense layers (all but a few percent of BERT's arithmetic) run in bfloat16 through
    oneDNN; embeddings, softmax, LayerNorm, GELU and the fused attention kernels stay
    float32 (AMP's lists, with the attention kernels added while converting).
    Logits agree with float32 to about 1e-2 relative (bfloat16 has an 8-bit mantissa).

    ``fuse`` partitions the converted graph with the oneDNN backend ('MKLDNN'), fusing
    each bfloat16 Dense layer with the element-wise work around it (measured on 2 cores,
    BERT-base 32x128: 23.6 -> 26.0 sequences/s; logits change by < 4e-3).

    LayerNorm is gluonbert's fused operator (kept float32 by AMP; MiniLM 32x128: +8%,
    BERT-base +6%), unless ``portable`` asks for MXNet's operators only (a graph to export).

    Returns an :class:`InferenceClassifier`, hybridized with static memory.
    """
    from mxnet.contrib import amp
    ctx = ctx or mx.cpu()
    if ctx.device_type != 'cpu':
        raise ValueError('to_bfloat16 is for CPU inference; on GPU use float16 AMP')
    require_bf16('bfloat16 inference', 'use float32, or the dtype '
                 'gluonbert.sysinfo.fastest_path() names')
    example = example or example_inputs(net, ctx=ctx)
    names, sym, arg_params, aux_params = inference_graph(net, example, builtin=portable)
    with bf16_fp32_ops():
        sym, arg_params, aux_params = amp.convert_model(
            sym, arg_params, aux_params, target_dtype='bfloat16',
            cast_optional_params=cast_params)
    # logits back to float32, so that callers can read them with .asnumpy()
    sym = mx.sym.amp_cast(sym, dtype='float32', name='logits_float32')
    if fuse:
        sym = partition(sym, names, example, arg_params, aux_params, ctx)
    block = _load_block(sym, names, arg_params, aux_params, net, 'bfloat16', ctx)
    block.hybridize(static_alloc=True, static_shape=static_shape)
    return block


def quantize_int8(net, calib_batches, *, ctx=None, calib_mode='naive',
                  granularity='channel-wise', exclude_operators=INT8_EXCLUDED_OPERATORS,
                  exclude_layers=None, exclude_layers_match=None, static_shape=True):
    """Post-training int8 quantization of ``net``'s dense layers with oneDNN (MXNet's
    ``contrib.quantization``), calibrated on ``calib_batches``.

    Parameters
    ----------
    net : BERTClassifier (or any HybridBlock ``(words, segments, valid_length)``)
    calib_batches : list of ``(words, segments, valid_length)``
        A few representative batches (e.g. :func:`calibration_batches`, 64 texts); shapes
        may differ. ``valid_length`` and the word ids are never quantized: only the
        outputs of float layers are.
    calib_mode : {'naive', 'entropy'}
        'naive' takes each layer's min/max over the batches; 'entropy' minimises the KL
        divergence of the clipped distribution (needs scipy).
    granularity : {'channel-wise', 'tensor-wise'}
        Weight scales per output channel (default; on a fine-tuned MiniLM it halved the
        probability error of 'tensor-wise' at the same speed) or one per tensor.
    exclude_operators : sequence of str
        Graph operators kept in float32 (default :data:`INT8_EXCLUDED_OPERATORS`).
    exclude_layers : sequence of str, optional
        Graph node names kept in float32.
    exclude_layers_match : sequence of str, optional
        Substrings: nodes whose name contains one are kept in float32. ``['ffn_2']`` keeps
        the feed-forward output projections (whose GELU inputs have long tails) in float:
        more accurate, about a sixth of the int8 speed-up given back.

    Returns an :class:`InferenceClassifier`, hybridized with static memory.
    """
    from mxnet.contrib import quantization
    ctx = ctx or mx.cpu()
    if ctx.device_type != 'cpu':
        raise ValueError('quantize_int8 uses oneDNN and runs on CPU only')
    if calib_mode not in ('naive', 'entropy'):
        raise ValueError(f"calib_mode must be 'naive' or 'entropy', got {calib_mode!r}")
    if calib_mode == 'entropy':
        try:
            import scipy.stats  # noqa: F401  (MXNet's entropy calibration uses it)
        except ImportError as err:
            raise ValueError("calib_mode='entropy' needs scipy (pip install scipy); "
                             "or use calib_mode='naive'") from err
    if granularity not in ('channel-wise', 'tensor-wise'):
        raise ValueError(f"granularity must be 'channel-wise' or 'tensor-wise', "
                         f"got {granularity!r}")
    calib_batches = [tuple(b) for b in calib_batches]
    if not calib_batches:
        raise ValueError('quantize_int8 needs at least one calibration batch')
    if any(len(b) != 3 for b in calib_batches):
        raise ValueError('calibration batches must be (words, segments, valid_length) tuples')
    names, sym, arg_params, aux_params = inference_graph(net, calib_batches[0])
    fused = sym.get_backend_symbol('MKLDNN_QUANTIZE')
    # Activation (tanh) has no int8 kernel: name its nodes, or MXNet logs that it skips them
    excluded = list(exclude_layers or []) + [
        node['name'] for node in json.loads(fused.tojson())['nodes']
        if node['op'] == 'Activation']
    for pattern in exclude_layers_match or []:
        for graph in (sym, fused):
            excluded += [node['name'] for node in json.loads(graph.tojson())['nodes']
                         if pattern in node['name'] and node['op'] != 'null']
    with quiet_native_stderr():
        qsym, qarg_params, aux_params, collector = quantization.quantize_graph(
            sym=fused, arg_params=arg_params, aux_params=aux_params, ctx=mx.cpu(),
            excluded_sym_names=excluded,
            excluded_op_names=list(exclude_operators or []), calib_mode=calib_mode,
            quantized_dtype='int8', quantize_mode='full', quantize_granularity=granularity)
        # run the float graph over the calibration data, recording every layer output
        record_layer_outputs(fused, names, arg_params, aux_params, calib_batches,
                             collector.collect)
        qsym, qarg_params, aux_params = quantization.calib_graph(
            qsym=qsym, arg_params=arg_params, aux_params=aux_params, collector=collector,
            calib_mode=calib_mode, quantized_dtype='int8', logger=None)
        qsym = qsym.get_backend_symbol('MKLDNN_QUANTIZE')
    block = _load_block(qsym, names, qarg_params, aux_params, net, 'int8', ctx)
    block.hybridize(static_alloc=True, static_shape=static_shape)
    return block


def prepare(net, dtype='float32', *, calib_batches=None, ctx=None, static_shape=False,
            portable=False):
    """``net`` ready for fast inference in ``dtype`` ('float32', 'bfloat16' or 'int8').

    Returns a new :class:`InferenceClassifier` (float32: :func:`to_float32`, which on a
    GPU folds the graph without partitioning it); ``net`` is left as it was. bfloat16 and
    int8 are CPU paths. int8 needs ``calib_batches``. ``portable``: MXNet's operators only, none of
    :mod:`gluonbert.ops` (for a file that plain MXNet loads; int8 graphs always are).
    """
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
    if ctx is None:  # where the model is
        ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    if dtype == 'float32':
        return to_float32(net, ctx=ctx, static_shape=static_shape, portable=portable)
    if dtype == 'bfloat16':
        return to_bfloat16(net, ctx=ctx, static_shape=static_shape, portable=portable)
    if not calib_batches:
        raise ValueError('int8 quantization needs calibration batches (calib_batches)')
    return quantize_int8(net, calib_batches, ctx=ctx, static_shape=static_shape)
