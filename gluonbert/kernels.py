"""Named implementations of the operations whose speed depends on the kernel.

The teaching blocks (:mod:`gluonbert.layers`, :mod:`gluonbert.heads`) say *what* they
compute; how fast is chosen here, by name, as Hugging Face looks up
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``:

- ``LAYER_NORMS``: ``'mxnet'``, ``'fused'``; layer normalisation over the last axis;
- ``DROPOUTS``: ``'mxnet'``, ``'fused'``;
- ``ATTENTION_SCORES``, ``ATTENTION_CONTEXTS``: ``'mxnet'``, ``'fused'``; ``QK^T/sqrt(D)``
  and weights times ``V``, both on the interleaved projection (chosen together, as
  ``attention``);
- ``ATTENTION_MASKS``: ``'select'``, ``'additive'``; zero weight past ``valid_length``.

Every implementation of an operation computes the same function (to float32 rounding;
the two dropouts draw from different random streams). The ``'fused'`` ones are
gluonbert's CPU operators (:mod:`gluonbert.ops`): they compute in float32 on CPU and
fall back to MXNet's otherwise, which each decides inside.

Design: the choice is made **when a block is built**, never while it runs. A model's
:class:`~gluonbert.config.BERTConfig` names the implementations (``kernels`` and the
per-operation ``*_kernels``/``attention_mask`` fields); the model builds its blocks
inside ``with building(config):``, and each block's constructor reads :func:`current`
once and keeps the implementations it needs. A block built outside any ``building``
gets the defaults (``'auto'``: fused where the library is loaded; the ``'select'``
mask). Changing the choice means building again: :func:`gluonbert.model.with_kernels`
returns a new model on the same parameters.
"""
import contextlib
import dataclasses
import threading

import mxnet as mx
import numpy as np

from .config import ATTENTION_MASKS as MASK_NAMES
from .config import KERNEL_FIELDS, BERTConfig
from .ops import resolve_kernels

__all__ = ['LAYER_NORMS', 'DROPOUTS', 'ATTENTION_SCORES', 'ATTENTION_CONTEXTS',
           'ATTENTION_MASKS', 'KernelChoice', 'building', 'current']


def float32_on_cpu(parameter):
    """Whether ``parameter`` is float32 and lives on CPU contexts only (where the fused
    operators exist)."""
    if np.dtype(parameter.dtype) != np.float32:
        return False
    try:
        contexts = parameter.list_ctx()
    except RuntimeError:  # not initialized: no context yet
        return False
    return bool(contexts) and all(ctx.device_type == 'cpu' for ctx in contexts)


# ------------------------------------------------------------------------- layer norm
# (F, x, gamma, beta, eps, like): like is a Parameter of the block, telling dtype and place

def _layer_norm_mxnet(F, x, gamma, beta, eps, like):
    return F.LayerNorm(x, gamma, beta, axis=-1, eps=eps)


def _layer_norm_fused(F, x, gamma, beta, eps, like):
    """gluonbert's LayerNorm, whose backward is much faster than MXNet's generic one."""
    if not float32_on_cpu(like):
        return _layer_norm_mxnet(F, x, gamma, beta, eps, like)
    # An extension operator's backward always overwrites its input gradients (MXNet does
    # not pass it the write/add request): behind identity copies MXNet itself applies
    # grad_req='add' (gradient accumulation) and sums over several uses.
    x, gamma, beta = F.identity(x), F.identity(gamma), F.identity(beta)
    return F.gluonbert_layer_norm(x, gamma, beta, eps=eps)


LAYER_NORMS = {'mxnet': _layer_norm_mxnet, 'fused': _layer_norm_fused}


# ---------------------------------------------------------------------------- dropout
# (F, x, rate); rate > 0

def _dropout_mxnet(F, x, rate):
    return F.Dropout(x, p=rate)


def _dropout_fused(F, x, rate):
    """gluonbert's dropout: no stored mask, the backward recomputes it from the call's
    random seed (so ``mx.random.seed`` repeats it)."""
    # MXNet makes the input's context current while it runs or traces a block
    if mx.context.current_context().device_type != 'cpu':
        return _dropout_mxnet(F, x, rate)
    # An extension operator is not told whether MXNet runs it for training, so the graph
    # tells it: MXNet's own Dropout of the constant 1 is 1 in inference and 0 or 2 in
    # training. The constant is made from x (AMP cannot wrap F.ones), without a gradient
    # path back into x.
    one = F.ones_like(F.BlockGrad(F.slice_axis(F.reshape(x, shape=(-1,)), axis=0,
                                               begin=0, end=1)))          # (1,)
    training = F.Dropout(one, p=0.5) != 1                                 # (1,)
    return F.gluonbert_dropout(x, training, p=rate)[0]


DROPOUTS = {'mxnet': _dropout_mxnet, 'fused': _dropout_fused}


# ----------------------------------------------------------------- attention products
# On the interleaved projection qkv (L, B, 3U), laid out per head as [q_h, k_h, v_h]:
# scores (F, qkv, heads, like) -> (B*N, L, L), already scaled by 1/sqrt(D);
# context (F, qkv, weights, heads, like) -> (L, B, U).

def _scores_mxnet(F, qkv, heads, like):
    return F.contrib.interleaved_matmul_selfatt_qk(qkv, heads=heads)


def _context_mxnet(F, qkv, weights, heads, like):
    return F.contrib.interleaved_matmul_selfatt_valatt(qkv, weights, heads=heads)


# Extension operators overwrite their input gradients (see _layer_norm_fused): each use
# of qkv gets its own identity copy, whose gradients MXNet sums.
def _scores_fused(F, qkv, heads, like):
    if not float32_on_cpu(like):
        return _scores_mxnet(F, qkv, heads, like)
    return F.gluonbert_selfatt_qk(F.identity(qkv), heads=heads)


def _context_fused(F, qkv, weights, heads, like):
    if not float32_on_cpu(like):
        return _context_mxnet(F, qkv, weights, heads, like)
    return F.gluonbert_selfatt_valatt(F.identity(qkv), weights, heads=heads)


ATTENTION_SCORES = {'mxnet': _scores_mxnet, 'fused': _scores_fused}
ATTENTION_CONTEXTS = {'mxnet': _context_mxnet, 'fused': _context_fused}


# --------------------------------------------------------------------- attention mask
# (F, scores (B, N, L, L), valid (B, L) 1 for real keys) -> masked scores, same shape.
# Masked keys get -1e30 and a plain softmax follows: on CPU that softmax runs in oneDNN,
# while softmax(length=...) takes a much slower generic kernel. exp(-1e30 - max) is
# exactly 0, so keys past valid_length get exactly zero weight either way.

def _mask_select(F, scores, valid):
    """where over a mask broadcast to the scores' shape: its backward is cheap, so it
    trains fastest."""
    keep = F.broadcast_like(valid.reshape((0, 1, 1, -1)), scores)
    return F.where(keep, scores, F.ones_like(scores) * -1e30)


def _mask_additive(F, scores, valid):
    """Adds a (B, 1, 1, L) bias of 0 / -1e30: no full-size mask, so inference is faster,
    but the broadcast's backward is slow."""
    # where, not (valid - 1) * 1e30: 0 * inf is NaN should this run in float16
    bias = F.where(valid, F.zeros_like(valid), F.ones_like(valid) * -1e30)
    return F.broadcast_add(scores, bias.reshape((0, 1, 1, -1)))


ATTENTION_MASKS = {'select': _mask_select, 'additive': _mask_additive}
assert tuple(ATTENTION_MASKS) == MASK_NAMES


# ------------------------------------------------------------------------- the choice
@dataclasses.dataclass(frozen=True)
class KernelChoice:
    """Resolved implementation names, one per operation (keys of the registries)."""
    layer_norm: str = 'mxnet'
    dropout: str = 'mxnet'
    attention: str = 'mxnet'
    attention_mask: str = 'select'

    @classmethod
    def from_fields(cls, **fields):
        """The choice a config's kernel fields (``KERNEL_FIELDS``; missing ones take the
        config's defaults) name, with 'auto' resolved (:func:`gluonbert.ops.resolve_kernels`)."""
        unknown = sorted(set(fields) - set(KERNEL_FIELDS))
        if unknown:
            raise ValueError(f'unknown kernel choice(s) {", ".join(unknown)}; '
                             f'known: {", ".join(KERNEL_FIELDS)}')
        config = BERTConfig(**fields)  # validates every value
        kernels = resolve_kernels(config.kernels)

        def pick(value):
            return kernels if value is None else resolve_kernels(value)

        return cls(layer_norm=pick(config.layer_norm_kernels),
                   dropout=pick(config.dropout_kernels),
                   attention=pick(config.attention_kernels),
                   attention_mask=config.attention_mask)


_BUILDING = threading.local()


def current():
    """The choice a block built now takes: the innermost :func:`building`'s, else the
    defaults."""
    choice = getattr(_BUILDING, 'choice', None)
    return choice if choice is not None else KernelChoice.from_fields()


@contextlib.contextmanager
def building(config=None, **fields):
    """Blocks built inside take the implementations ``config`` (a BERTConfig) names, with
    ``fields`` (kernel fields, e.g. ``layer_norm_kernels='mxnet'``) over them; what
    neither names takes the defaults. Yields the :class:`KernelChoice`."""
    named = config.kernel_choices() if config is not None else {}
    choice = KernelChoice.from_fields(**{**named, **fields})
    outer = getattr(_BUILDING, 'choice', None)
    _BUILDING.choice = choice
    try:
        yield choice
    finally:
        _BUILDING.choice = outer
