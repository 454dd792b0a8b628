"""Mixed precision with MXNet's AMP, made aware of gluonbert's operators.

MXNet 1.9.1's AMP decides per operator name whether it computes in the low precision or in
float32, from global lists. Those lists do not know the fused self-attention kernels or
gluonbert's own operators (:mod:`gluonbert.ops`), none of which has a bfloat16 version:
they are declared float32 here, so that AMP casts their inputs back to float32.

- :func:`bf16_fp32_ops`: a context manager for graph conversions (``amp.convert_model``),
  which leaves AMP's list as it found it;
- :func:`init_amp_bfloat16`: process-wide bfloat16 AMP for training on CPU (which MXNet
  cannot turn off again);
- :func:`setup_amp`: what a training loop's ``dtype`` asks for.
"""
import contextlib

from . import ops
from .hardware import require_bf16

__all__ = ['DTYPES', 'FP32_OPS', 'registered_fp32_ops', 'bf16_fp32_ops', 'init_amp_bfloat16',
           'setup_amp']

DTYPES = ('float32', 'float16', 'bfloat16')

# The fused self-attention kernels (gluonbert.fast calls them INTERLEAVED_ATTENTION_OPS) and
# gluonbert's LayerNorm, dropout and attention products: no bfloat16 implementation, so
# float32 under AMP.
FP32_OPS = ('_contrib_interleaved_matmul_selfatt_qk',
            '_contrib_interleaved_matmul_selfatt_valatt', 'gluonbert_layer_norm',
            'gluonbert_dropout', 'gluonbert_selfatt_qk', 'gluonbert_selfatt_valatt')


def registered_fp32_ops():
    """The names of :data:`FP32_OPS` that MXNet knows in this process.

    gluonbert's own operators exist only once :func:`gluonbert.ops.load` registered them
    (not with ``GLUONBERT_FUSED_OPS=0``, nor when the library is not built), and AMP wraps
    the Python function of every name in its lists: an absent one fails there.
    """
    import mxnet as mx
    registered = set(mx.operator.get_all_registered_operators())
    return [op for op in FP32_OPS if op in registered]


def _bf16_fp32_list():
    """AMP's bfloat16 float32 list: the module-level list AMP reads every operator from."""
    from mxnet.contrib.amp.lists import symbol_bf16
    return symbol_bf16.FP32_FUNCS


@contextlib.contextmanager
def bf16_fp32_ops():
    """Within the block, AMP's bfloat16 float32 list also names :data:`FP32_OPS` (those
    registered, :func:`registered_fp32_ops`);
    afterwards the list is as it was (nested blocks add nothing twice)."""
    fp32 = _bf16_fp32_list()
    added = [op for op in registered_fp32_ops() if op not in fp32]
    fp32.extend(added)
    try:
        yield
    finally:
        for op in added:
            fp32.remove(op)


def init_amp_bfloat16():
    """Turn on process-wide AMP with bfloat16 (for training on CPU); returns ``amp``.

    Dense layers then compute in bfloat16 while parameters, gradients and the other
    operators stay float32. This changes MXNet for the whole process, by MXNet's design:
    AMP's float32 list gains the registered :data:`FP32_OPS` and AMP cannot be turned off
    again (a second call changes nothing).

    Raises
    ------
    gluonbert.hardware.UnsupportedHardwareError
        The CPU has no native bfloat16 (checked first).
    """
    from mxnet.contrib import amp
    require_bf16('bfloat16 training', 'use float32 (--dtype float32)')
    ops.load()  # before amp.init, which wraps the operators it finds (LayerNorm: float32)
    fp32 = _bf16_fp32_list()
    # added to the list rather than passed as fp32_ops=, which would replace the whole list
    # (Dropout, Embedding, LayerNorm, softmax... would then get bf16 inputs they cannot take)
    fp32.extend(op for op in registered_fp32_ops() if op not in fp32)
    amp.init(target_dtype='bfloat16')  # a no-op once AMP is on
    return amp


def setup_amp(dtype, contexts):
    """Turn on the AMP that ``dtype`` asks for on ``contexts``; returns MXNet's ``amp``
    module, or None for float32.

    float16 is AMP on GPUs (with loss scaling, see ``amp.init_trainer``), bfloat16 AMP on
    CPUs (checked to have native bfloat16).

    Raises
    ------
    ValueError
        An unknown dtype, or one that does not fit the contexts.
    """
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
    if dtype == 'float32':
        return None
    if dtype == 'float16':
        if any(c.device_type != 'gpu' for c in contexts):
            raise ValueError('dtype float16 (AMP) needs GPU contexts; use bfloat16 on CPU')
        from mxnet.contrib import amp
        amp.init(target_dtype='float16')
        return amp
    if any(c.device_type != 'cpu' for c in contexts):
        raise ValueError('dtype bfloat16 is for CPU contexts; use float16 on GPU')
    return init_amp_bfloat16()
