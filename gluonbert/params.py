"""Parameter helpers: names, counts (overall and per component), initialising what a
checkpoint did not provide, and the one walker of a block tree (:func:`walk_blocks`)."""
import collections

import numpy as np

__all__ = ['count_parameters', 'parameter_counts', 'named_parameters', 'initialize_missing',
           'walk_blocks']


def walk_blocks(block, path=''):
    """Yield ``(structural path, block)`` for ``block`` and every block under it.

    Depth first, pre-order: a block comes before its children, children in the order they
    were registered (the order of ``print(block)``). Paths are attribute paths relative to
    ``block`` (``''`` for itself, then ``'encoder'``, ``'encoder.layers'``,
    ``'encoder.layers.0'``...), as :func:`named_parameters` names parameters; a block
    registered under two parents is yielded once per path.
    """
    yield path, block
    # SLF001, why: Gluon 1.x has no public iterator over a block's children
    for name, child in block._children.items():  # noqa: SLF001  (see above)
        yield from walk_blocks(child, f'{path}.{name}' if path else name)


def named_parameters(block):
    """``{structural_name: Parameter}`` with each shared Parameter listed once (first name wins).

    Structural names follow the attribute path, e.g. ``encoder.layers.0.attention.query.weight``.
    """
    seen, named = set(), collections.OrderedDict()
    # SLF001, why: collect_params names by prefix; this is save_parameters' structural naming
    for name, param in block._collect_params_with_prefix().items():  # noqa: SLF001
        if id(param) not in seen:
            seen.add(id(param))
            named[name] = param
    return named


def _size(param):
    if param.shape is None or any(dim == 0 for dim in param.shape):
        raise ValueError(f'parameter {param.name} has an unknown shape {param.shape}; '
                         f'run one forward pass first')
    return int(np.prod(param.shape))


def count_parameters(block, trainable_only=False):
    """Number of scalar parameters in ``block`` (shared parameters counted once).

    ``trainable_only`` skips parameters with ``grad_req='null'`` (constants, frozen weights).
    """
    return sum(_size(p) for p in named_parameters(block).values()
               if not (trainable_only and p.grad_req == 'null'))


def _component(name):
    parts = name.split('.')
    if parts[0] == 'bert':           # wrappers: BERTClassifier, BERTForPretraining
        parts = parts[1:]
    if parts[0] == 'encoder':
        if parts[1] == 'layers':
            return f'encoder.layers.{parts[2]}'
        return 'embeddings'
    return parts[0]


def parameter_counts(block):
    """Trainable and frozen parameter counts per component, in model order.

    Components: ``embeddings`` (word, segment, position, their LayerNorm),
    ``encoder.layers.<i>``, ``pooler``, and any heads (``classifier``, ``mlm_decoder``,
    ``ns_classifier``). A tied MLM output weight is counted once, with the embeddings.
    """
    counts = collections.OrderedDict()
    for name, param in named_parameters(block).items():
        if param.grad_req == 'null' and param.name.endswith('table'):
            continue  # the sinusoidal table is a constant, not a parameter
        counts[_component(name)] = counts.get(_component(name), 0) + _size(param)
    return counts


def initialize_missing(block, ctx=None, init=None):
    """Initialise the parameters of ``block`` that have no value yet; leave the others.

    For a model assembled from loaded weights and new parts, e.g. pre-training heads on an
    encoder whose checkpoint has none: ``block.initialize()`` would warn about (and skip)
    the loaded parameters, this initialises only the rest. Parameters waiting for a
    deferred initialisation (their shape is known at the first forward pass) count as
    initialised.

    Parameters
    ----------
    block : mxnet.gluon.Block
    ctx : Context or list of Context, optional
        Where the new values live (default: the current context).
    init : Initializer, optional
        Default: each parameter's own initializer, else MXNet's default.

    Returns
    -------
    list of str
        The structural names of the parameters initialised.
    """
    fresh = []
    for name, param in named_parameters(block).items():
        # a Parameter has neither data nor a pending deferred init until initialize()
        if param._data is None and not param._deferred_init:  # noqa: SLF001  no public test
            param.initialize(init=init, ctx=ctx)
            fresh.append(name)
    return fresh
