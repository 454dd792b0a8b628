"""The operators blocks compute with, changed after they are built.

:func:`set_kernels` switches, in a block and every block inside it, the kernels of
LayerNorm, dropout and the attention products (``'fused'``: gluonbert's operators,
:mod:`gluonbert.ops`; ``'mxnet'``) and the attention mask (``'select'``/``'additive'``).
:func:`kernels_for_tracing` does it for the time of a ``with`` block, to trace a graph
that plain MXNet (or its oneDNN passes) knows.
"""
import contextlib

from mxnet.gluon import HybridBlock

from .layers import ATTENTION_MASKS, Dropout, LayerNorm, MultiHeadAttention
from .ops import resolve_kernels

__all__ = ['set_kernels', 'kernels_for_tracing']


def _blocks(block):
    yield block
    for child in block._children.values():  # noqa: SLF001  Gluon 1.x: no public iterator
        yield from _blocks(child)


def _change_kernels(block, layer_norm, dropout, attention_mask, attention=None):
    """Set the settings on every block inside ``block``; returns how to undo it."""
    if attention_mask is not None and attention_mask not in ATTENTION_MASKS:
        raise ValueError(f'attention_mask must be one of {ATTENTION_MASKS}, '
                         f'got {attention_mask!r}')
    wanted = {LayerNorm: [('kernels', layer_norm and resolve_kernels(layer_norm))],
              Dropout: [('kernels', dropout and resolve_kernels(dropout))],
              MultiHeadAttention: [('attention_mask', attention_mask),
                                   ('kernels', attention and resolve_kernels(attention))]}
    undo = []
    for child in _blocks(block):
        for name, value in wanted.get(type(child), []):
            if value is not None:
                undo.append((child, name, getattr(child, name)))
                setattr(child, name, value)
    return undo


def _hybrid_blocks(block):
    return [b for b in _blocks(block) if isinstance(b, HybridBlock)]


def set_kernels(block, *, layer_norm=None, dropout=None, attention_mask=None,
                attention=None):
    """Set, in ``block`` and every block inside it, the operators LayerNorm, dropout and
    the attention products compute with (``'fused'``/``'mxnet'``/``'auto'``) and the
    attention mask (``'select'``/``'additive'``); None leaves a setting as it is. Cached
    graphs of hybridized blocks are dropped, so the next call traces with the new choice.
    """
    _change_kernels(block, layer_norm, dropout, attention_mask, attention)
    for child in _hybrid_blocks(block):
        child._clear_cached_op()  # noqa: SLF001  re-trace next call; no public API


@contextlib.contextmanager
def kernels_for_tracing(block, *, layer_norm=None, dropout=None, attention_mask=None,
                        attention=None):
    """Within the block, graphs of ``block`` are traced with the given kernels (settings
    as :func:`set_kernels`); afterwards every setting is restored. For tracing a graph to
    convert or export, e.g. with MXNet's operators only::

        with kernels_for_tracing(net, layer_norm='mxnet', dropout='mxnet',
                                 attention='mxnet'):
            sym = net(*[mx.sym.var(n) for n in ('data0', 'data1', 'data2')])

    A symbolic call like this one leaves a hybridized block's cached graph alone. A cached
    graph built inside (``net.hybridize()`` then a call, e.g. to export it) is dropped on
    the way out, so that the block traces with its own settings again.
    """
    hybrid = _hybrid_blocks(block)
    cached = [b._cached_graph for b in hybrid]  # noqa: SLF001  no public getter
    undo = _change_kernels(block, layer_norm, dropout, attention_mask, attention)
    try:
        yield block
    finally:
        for child, name, value in undo:
            setattr(child, name, value)
        for child, graph in zip(hybrid, cached):
            if child._cached_graph is not graph:  # noqa: SLF001  no public getter
                child._clear_cached_op()  # noqa: SLF001  re-trace next call; no public API
