"""LoRA: low-rank adaptation of the encoder's Dense projections (Hu et al. 2021).

``apply_lora`` wraps chosen projections in :class:`LoRADense`, which keeps the frozen
layer ``W x + b`` and adds a trainable update ``(alpha / r) * B A x`` of rank ``r``.
Only ``A``, ``B`` and the task head are trained, so an adapter is a small fraction of
the model: :func:`save_lora` writes just those, :func:`load_lora` rebuilds the model
from its base and the adapter, and :func:`merge_lora` folds the update into ``W`` for
inference at the original speed.

Typical use::

    bert, vocab, tokenizer = load_pretrained('minilm')
    net = BERTClassifier(bert, num_classes=2)
    net.classifier.initialize()
    print(apply_lora(net, rank=8, alpha=16))    # trainable 0.x% of the parameters
    train_loop(net, ...)                        # only LoRA and the head are updated
    save_lora(net, 'runs/adapter', base_model='minilm')
    merge_lora(net)                             # plain Dense layers again
"""
import dataclasses
import math
import os

import mxnet as mx
from mxnet import init
from mxnet.gluon import HybridBlock, nn

from .layers import MultiHeadAttention, PositionWiseFFN, parameter_input
from .lora_files import (ADAPTER_FORMAT, ADAPTER_MANIFEST, ADAPTER_PARAMS, ADAPTER_REDO,
                         ADAPTER_VERSION, TARGETS, base_fingerprint, base_reference,
                         check_base_fingerprint, read_adapter_manifest)
from .model import TASK_MODELS, TaskModel
from .params import count_parameters, named_parameters, walk_blocks

__all__ = ['LoRADense', 'LoRACounts', 'apply_lora', 'merge_lora', 'lora_parameter_counts',
           'lora_settings', 'normalise_targets', 'base_parameters', 'save_lora',
           'save_lora_base', 'load_lora', 'TARGETS', 'ADAPTER_MANIFEST']

# The block type that owns each projection LoRA can adapt (TARGETS).
_OWNERS = {'query': MultiHeadAttention, 'key': MultiHeadAttention,
           'value': MultiHeadAttention, 'out_proj': MultiHeadAttention,
           'ffn_1': PositionWiseFFN, 'ffn_2': PositionWiseFFN}
_ALIASES = {'output': 'out_proj'}



class LoRADense(HybridBlock):
    """A Dense layer plus a trainable low-rank update of its weight.

    ``y = act(W x + b + (alpha / rank) * B (A dropout(x)))`` where ``W x + b`` (and the
    activation, if any) is the wrapped layer, ``A`` is ``(rank, in_units)`` with a
    Kaiming-uniform initialisation and ``B`` is ``(units, rank)`` of zeros, so a new
    LoRADense computes exactly what the wrapped layer does.

    Parameters
    ----------
    base : nn.Dense
        The layer to adapt, with known ``in_units``. It stays the child ``base``, so its
        parameters keep their names; LoRA does not change it (see :func:`merge_lora`).
    rank : int, default 8
        Rank r of the update; ``1 <= rank < min(in_units, units)``.
    alpha : float, default 16
        The update is scaled by ``alpha / rank``.
    dropout : float, default 0.0
        Dropout on the input of the low-rank branch only.

    Inputs:
        - **x**: ``(B, in_units)``; ``(..., in_units)`` such as ``(B, L, U)`` when the base
          has ``flatten=False``; with ``flatten=True`` any ``(B, ...)`` is flattened to
          ``(B, in_units)``.

    Outputs:
        - **y**: ``(B, units)``, or ``(..., units)`` for ``flatten=False``.
    """

    def __init__(self, base, *, rank=8, alpha=16, dropout=0.0, prefix=None, params=None):
        if not isinstance(base, nn.Dense):
            raise TypeError(f'LoRADense wraps an mxnet.gluon.nn.Dense, got {type(base).__name__}')
        units, in_units = base.weight.shape
        if not in_units:
            raise ValueError(f'{base.name} has unknown in_units; give in_units or run a '
                             f'forward pass before wrapping it')
        _check_rank(rank, in_units, units, where=base.name)
        _check_alpha_dropout(alpha, dropout)
        # Default names extend the base's ('..._query_' -> '..._query_lora_a'), so they
        # do not depend on how many LoRADense blocks were created before.
        super().__init__(prefix=base.prefix + 'lora_' if prefix is None else prefix,
                         params=params)
        self._units, self._in_units = units, in_units
        self._flatten = base._flatten  # noqa: SLF001  Dense has no public flatten setting
        self.rank, self.alpha, self.dropout = rank, float(alpha), float(dropout)
        self.scale = self.alpha / rank
        self.base = base
        with self.name_scope():
            self.lora_dropout = nn.Dropout(dropout) if dropout else None
            # Kaiming-uniform with a = sqrt(5), as for a default linear layer: U(+-1/sqrt(fan_in)).
            self.lora_a = self.params.get('a', shape=(rank, in_units), dtype=base.weight.dtype,
                                          init=init.Uniform(1.0 / math.sqrt(in_units)))
            self.lora_b = self.params.get('b', shape=(units, rank), dtype=base.weight.dtype,
                                          init=init.Zero())

    @property
    def units(self):
        return self._units

    @property
    def in_units(self):
        return self._in_units

    def hybrid_forward(self, F, x, lora_a, lora_b):  # pylint: disable=arguments-differ
        base = self.base
        bias = None if base.bias is None else parameter_input(F, base.bias, x)
        # The frozen layer before its activation: the update is added to W x + b.
        y = F.FullyConnected(x, parameter_input(F, base.weight, x), bias, no_bias=bias is None,
                             num_hidden=self._units, flatten=self._flatten)   # (..., units)
        h = x if self.lora_dropout is None else self.lora_dropout(x)
        h = F.FullyConnected(h, lora_a, no_bias=True, num_hidden=self.rank,
                             flatten=self._flatten)                            # (..., rank)
        h = F.FullyConnected(h, lora_b, no_bias=True, num_hidden=self._units,
                             flatten=False)                                    # (..., units)
        y = y + self.scale * h
        return y if base.act is None else base.act(y)

    def delta_weight(self):
        """The update ``(alpha / rank) * B @ A`` as a ``(units, in_units)`` NDArray."""
        ctx = self.base.weight.list_ctx()[0]
        return self.scale * mx.nd.dot(self.lora_b.data(ctx), self.lora_a.data(ctx))

    def __repr__(self):
        return (f'{self.__class__.__name__}({self._in_units} -> {self._units}, '
                f'rank={self.rank}, alpha={self.alpha:g}, dropout={self.dropout:g})')


def _check_rank(rank, in_units, units, where):
    limit = min(in_units, units)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank < limit:
        raise ValueError(f'LoRA rank must be an integer in [1, {limit}) for {where} '
                         f'({in_units} -> {units}), got {rank!r}')


def _check_alpha_dropout(alpha, dropout):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f'LoRA alpha must be a number > 0, got {alpha!r}')
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0 <= dropout < 1:
        raise ValueError(f'LoRA dropout must be in [0, 1), got {dropout!r}')


# ------------------------------------------------------------------------ tree helpers
def _lora_sites(model):
    """``[(path, parent, child name, LoRADense)]`` for every LoRA layer in model."""
    blocks = dict(walk_blocks(model))
    return [(path, blocks[path.rpartition('.')[0]], path.rpartition('.')[2], block)
            for path, block in walk_blocks(model) if isinstance(block, LoRADense) and path]


def _replace_child(parent, name, new):
    """Swap the child ``name`` of ``parent`` for ``new`` (same attribute, same slot)."""
    parent.register_child(new, name)
    # Block.__setattr__ refuses to change a child's type, so set the attribute directly.
    object.__setattr__(parent, name, new)
    # match the parent's hybridization so an imperative call of the parent behaves alike
    # SLF001, why: a block's hybridize settings have no public getter
    new.hybridize(parent._active, **dict(parent._flags))  # noqa: SLF001


def _clear_cached_graphs(model):
    """Forget every traced graph: the next hybridized call traces the new structure."""
    for _, block in walk_blocks(model):
        if isinstance(block, HybridBlock):
            block._clear_cached_op()  # noqa: SLF001  gluon has no public way to drop it


def normalise_targets(targets):
    """LoRA target names in canonical order (:data:`TARGETS`), duplicates dropped and
    ``output`` read as ``out_proj``.

    Parameters
    ----------
    targets : sequence of str, or comma-separated str

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        An unknown name, or no name at all.
    """
    if isinstance(targets, str):
        targets = targets.split(',')
    try:
        names = [str(t).strip() for t in targets]
    except TypeError as err:
        raise ValueError(f'LoRA targets must be a list of names from {", ".join(TARGETS)}, '
                         f'got {targets!r}') from err
    names = [_ALIASES.get(n, n) for n in names if n]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f'unknown LoRA target(s) {", ".join(map(repr, unknown))}; choose from '
                         f'{", ".join(TARGETS)} (or output for out_proj)')
    if not names:
        raise ValueError(f'no LoRA targets given; choose from {", ".join(TARGETS)}')
    return [t for t in TARGETS if t in names]  # canonical order, duplicates dropped


def _head(model):
    """The task head trained alongside LoRA (BERTClassifier's ``classifier``), or None."""
    head = getattr(model, 'classifier', None)
    return head if isinstance(head, HybridBlock) else None


# -------------------------------------------------------------------- counting
@dataclasses.dataclass(frozen=True)
class LoRACounts:
    """Parameter counts of a model with LoRA: what is trained versus what it has."""
    lora: int          # scalars in all A and B matrices
    head: int          # scalars in the task head (trained too)
    trainable: int     # parameters with grad_req != 'null'
    total: int         # every parameter, LoRA's included
    fraction: float    # trainable / total

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        return (f'trainable {self.trainable:,} of {self.total:,} parameters '
                f'({self.fraction:.2%}): LoRA {self.lora:,}, head {self.head:,}')


def lora_parameter_counts(model):
    """Count LoRA, head, trainable and total parameters of ``model``; a :class:`LoRACounts`."""
    lora = sum(site[3].rank * (site[3].in_units + site[3].units) for site in _lora_sites(model))
    head = _head(model)
    total = count_parameters(model)
    trainable = count_parameters(model, trainable_only=True)
    return LoRACounts(lora=lora, head=count_parameters(head) if head is not None else 0,
                      trainable=trainable, total=total, fraction=trainable / total)


def base_parameters(model):
    """``{name: Parameter}`` of everything but LoRA's matrices, named as without LoRA.

    ``encoder.layers.0.attention.query.base.weight`` is listed as
    ``encoder.layers.0.attention.query.weight``, so the result lines up with
    ``named_parameters`` of the model before :func:`apply_lora`.
    """
    lora = _lora_param_ids(model)
    return {name.replace('.base.', '.'): param
            for name, param in named_parameters(model).items() if id(param) not in lora}


def _adapter_parameters(model):
    """``{structural name: Parameter}`` that an adapter holds: LoRA matrices and the head."""
    head = _head(model)
    keep = _lora_param_ids(model) | ({id(p) for p in named_parameters(head).values()}
                                     if head is not None else set())
    return {name: param for name, param in named_parameters(model).items() if id(param) in keep}


def _lora_param_ids(model):
    """ids of every LoRA A and B parameter in ``model``."""
    return {id(p) for site in _lora_sites(model) for p in (site[3].lora_a, site[3].lora_b)}


# -------------------------------------------------------------------- apply / merge
def apply_lora(model, rank=8, alpha=16, dropout=0.0, targets=('query', 'value')):
    """Wrap projections of every encoder layer in :class:`LoRADense`, in place, and freeze
    everything except the LoRA matrices and the task head.

    Parameters
    ----------
    model : BERTClassifier, BERTModel or any block containing encoder layers
        Must be initialized. Apply LoRA to the outermost block you call: hybridized
        graphs of ``model`` and its descendants are rebuilt, those of its parents are not.
    rank : int, default 8
        ``1 <= rank < min(in_units, units)`` of every targeted layer.
    alpha : float, default 16
        The update is scaled by ``alpha / rank``.
    dropout : float, default 0.0
        Dropout on the input of each low-rank branch.
    targets : sequence of str or comma-separated str, default ('query', 'value')
        From ``query``, ``key``, ``value``, ``out_proj`` (alias ``output``) of the
        attention, and ``ffn_1``, ``ffn_2`` of the feed-forward network.

    Returns
    -------
    LoRACounts
        Trainable and total parameter counts afterwards (``print`` it for a summary).

    Raises
    ------
    ValueError
        Bad rank, alpha, dropout or target names; a target that matches no layer; a model
        that already has LoRA layers; an uninitialized model.
    """
    names = normalise_targets(targets)
    _check_alpha_dropout(alpha, dropout)
    if _lora_sites(model):
        raise ValueError('LoRA is already applied to this model; merge_lora(model) first, '
                         'or start again from the base model')
    sites = [(f'{path}.{name}' if path else name, parent, name)
             for path, parent in walk_blocks(model) for name in names
             if isinstance(parent, _OWNERS[name])]
    unmatched = [n for n in names if not any(site[2] == n for site in sites)]
    if unmatched:
        raise ValueError(f'LoRA target(s) {", ".join(unmatched)} match no layer of '
                         f'{type(model).__name__} (it has no MultiHeadAttention or '
                         f'PositionWiseFFN blocks with them)')
    # Build (and so validate) every wrapper before changing the model: all or nothing.
    wrappers = []
    for path, parent, name in sites:
        dense = getattr(parent, name)
        if type(dense) is not nn.Dense:  # pylint: disable=unidiomatic-typecheck
            raise ValueError(f'{path} is a {type(dense).__name__}, not a plain Dense; '
                             f'LoRA cannot wrap it')
        try:
            contexts = dense.weight.list_ctx()
        except RuntimeError as err:
            raise ValueError('initialize the model (or load its weights) before '
                             'apply_lora') from err
        _check_rank(rank, dense.weight.shape[1], dense.weight.shape[0], where=path)
        wrappers.append((parent, name, LoRADense(dense, rank=rank, alpha=alpha,
                                                 dropout=dropout), contexts))

    for param in model.collect_params().values():
        param.grad_req = 'null'
    for parent, name, wrapper, contexts in wrappers:
        # on the base's contexts, so data-parallel models keep one copy per device
        wrapper.lora_a.initialize(ctx=contexts)
        wrapper.lora_b.initialize(ctx=contexts)
        _replace_child(parent, name, wrapper)
    head = _head(model)
    if head is not None:
        for param in head.collect_params().values():
            param.grad_req = 'write'
    _clear_cached_graphs(model)
    return lora_parameter_counts(model)


def merge_lora(model):
    """Fold each LoRA update into its base weight (``W += (alpha / r) B A``) and put the
    original Dense layers back, in place. Returns ``model``.

    Outputs stay the same up to float rounding (about 1e-6). Base parameters keep the
    ``grad_req`` LoRA gave them ('null'); set ``grad_req = 'write'`` to train them again.
    """
    sites = _lora_sites(model)
    if not sites:
        raise ValueError('the model has no LoRA layers to merge (apply_lora first)')
    for _, parent, name, wrapper in sites:
        weight = wrapper.base.weight
        ctx = weight.list_ctx()[0]
        weight.set_data(weight.data(ctx) + wrapper.delta_weight())  # copies to every ctx
        _replace_child(parent, name, wrapper.base)
    _clear_cached_graphs(model)
    return model


def lora_settings(model):
    """``(rank, alpha, dropout, targets)`` shared by every LoRA layer of ``model``.

    Raises ValueError when the model has no LoRA layers or they differ.
    """
    sites = _lora_sites(model)
    if not sites:
        raise ValueError('the model has no LoRA layers (apply_lora first)')
    settings = {(w.rank, w.alpha, w.dropout) for _, _, _, w in sites}
    if len(settings) > 1:
        raise ValueError(f'LoRA layers have different settings {sorted(settings)}; an adapter '
                         f'records one rank, alpha and dropout')
    rank, alpha, dropout = settings.pop()
    targets = [t for t in TARGETS if any(name == t for _, _, name, _ in sites)]
    return rank, alpha, dropout, targets


# -------------------------------------------------------------------- adapters on disk
def save_lora(model, path, *, base_model='minilm', label_names=None, max_len=None,
              extra=None):
    """Write an adapter directory: only the LoRA matrices and the classifier head.

    Contents: ``adapter.json`` (base model, the fingerprint of its weights, its config,
    rank, alpha, dropout, targets, classes, label names, max_len, the size and sha1 of
    ``adapter.params``) and ``adapter.params``. The directory is
    assembled next to ``path`` and renamed into place, so a crash leaves any previous
    adapter intact.

    Parameters
    ----------
    model : a labelled TaskModel with LoRA applied (BERTClassifier,
        BERTForTokenClassification, ...)
    path : str
        The adapter directory.
    base_model : str, default 'minilm'
        What :func:`load_lora` passes to ``load_pretrained``: ``'minilm'``, a GluonNLP zoo
        name, or a model directory (stored relative to ``path``). Must be the weights LoRA
        was applied to.
    label_names : list of str, optional
        Replace the label names of ``model.info``.
    max_len : int, optional
        Replace the max_len of ``model.info``.
    extra : dict, optional
        JSON-serialisable metadata (provenance) stored under ``"extra"``.

    Returns
    -------
    str
        The absolute adapter directory.
    """
    from .pretrained import write_model_directory
    if not isinstance(model, TaskModel) or model.info is None:
        raise TypeError(f'save_lora saves a labelled task model (a TaskModel with a head, '
                        f'e.g. BERTClassifier) with LoRA, got {type(model).__name__}')
    rank, alpha, dropout, targets = lora_settings(model)
    directory = os.path.abspath(os.fspath(path))
    info = model.info_with(label_names=label_names, max_len=max_len)
    manifest = {
        'format': ADAPTER_FORMAT, 'version': ADAPTER_VERSION,
        'base_model': base_reference(base_model, directory),
        'base_fingerprint': base_fingerprint(base_parameters(model.bert)),
        'config': model.config.to_dict(),
        'rank': rank, 'alpha': alpha, 'dropout': dropout, 'targets': targets,
        **model.manifest_fields(info.label_names),  # model_class, num_classes, labels
        'classifier': info.to_dict(),  # with this call's max_len
        'classifier_dropout': float(model.head_dropout),
        'max_len': info.max_len, 'extra': dict(extra or {}),
    }
    arrays = {name: p.data().as_in_context(mx.cpu())
              for name, p in _adapter_parameters(model).items()}
    return write_model_directory(directory, manifest, {ADAPTER_PARAMS: arrays},
                                 ADAPTER_MANIFEST)


def save_lora_base(model, vocab, tokenizer, directory, *, extra=None):
    """Write the frozen base encoder of a LoRA model as a plain model directory.

    An adapter names its base; a base with random weights (a config preset trained with
    LoRA from scratch) cannot be rebuilt from a name, so save it with this and pass the
    directory as :func:`save_lora`'s ``base_model``. LoRA's matrices and the head are left
    out: the directory loads with ``load_pretrained`` as a :class:`~gluonbert.BERTModel`.

    Parameters
    ----------
    model : BERTClassifier or BERTModel, with LoRA applied or not
    vocab, tokenizer : its vocabulary and tokenizer
    directory : str
    extra : dict, optional
        JSON-serialisable metadata for the manifest.

    Returns
    -------
    str
        The absolute model directory.
    """
    from .convert import assign_parameters
    from .model import BERTModel
    from .pretrained import save_pretrained
    bert = getattr(model, 'bert', model)
    base = BERTModel(bert.config)
    base.initialize(ctx=mx.cpu())
    assign_parameters(base, {name: p.data() for name, p in base_parameters(bert).items()},
                      source='the frozen base')
    return save_pretrained(base, vocab, tokenizer, directory, extra=extra)


def load_lora(path, ctx=None):
    """Rebuild a classifier from its base model and an adapter written by :func:`save_lora`.

    Checks the manifest and the adapter's files, loads the base with ``load_pretrained``
    and refuses it unless its weights' fingerprint is the one recorded, adds a classifier
    head, applies LoRA with the recorded settings and loads the adapter; every adapter
    tensor must match a LoRA or head parameter by name and shape.

    Returns
    -------
    (net, vocab, tokenizer)
        ``net`` is the adapter's task model (the class its manifest names, e.g. a
        :class:`~gluonbert.BERTClassifier`) with LoRA layers (unmerged) and its
        :class:`~gluonbert.model.ClassifierInfo`.
    """
    from .convert import assign_parameters
    from .errors import ModelError
    from .model_files import check_float_header, verify_files
    from .pretrained import (MINILM_NAME, ZOO_MODELS, PretrainedError, load_pretrained,
                             task_info, task_model_from_manifest)
    from .schema import ndarray_file_header
    directory = os.path.abspath(os.fspath(path))
    manifest, config = read_adapter_manifest(directory)
    manifest_path = os.path.join(directory, ADAPTER_MANIFEST)
    params_path = os.path.join(directory, ADAPTER_PARAMS)
    verify_files(directory, manifest['files'], ADAPTER_REDO)
    check_float_header(ndarray_file_header(params_path, PretrainedError), params_path)
    info = task_info(manifest, manifest_path)
    base = manifest['base_model']
    if base not in (MINILM_NAME,) + ZOO_MODELS:
        base = os.path.normpath(os.path.join(directory, base))
    loaded, vocab, tokenizer = load_pretrained(base, ctx=ctx)
    bert = getattr(loaded, 'bert', loaded)  # a fine-tuned or pre-training directory
    if bert.config.architecture() != config.architecture():
        raise PretrainedError(f'the adapter in {directory} was trained on a model with a '
                              f'different config than {base}')
    check_base_fingerprint(manifest, base_fingerprint(named_parameters(bert)), directory)
    net = task_model_from_manifest(TASK_MODELS[manifest['model_class']], bert, manifest,
                                   manifest_path, dropout=manifest['classifier_dropout'],
                                   info=info)
    net.classifier.initialize(ctx=mx.cpu() if ctx is None else ctx)
    try:  # a rank too large for the base's layers, tensors that do not fit
        apply_lora(net, rank=manifest['rank'], alpha=manifest['alpha'],
                   dropout=manifest['dropout'], targets=manifest['targets'])
        adapter = _adapter_parameters(net)
        assign_parameters(net, mx.nd.load(params_path), source=params_path,
                          allow_missing=[n for n in named_parameters(net) if n not in adapter])
    except ModelError:
        raise  # names the file and the tensors itself
    except ValueError as err:
        raise PretrainedError(f'{manifest_path}: the adapter does not fit its base ({err})') \
            from err
    return net, vocab, tokenizer
