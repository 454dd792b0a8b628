"""BERT: the encoder, the model with pooler, and task wrappers.

Inputs everywhere (legend in :mod:`gluonbert.config`):

- ``words``: ``(B, L)`` WordPiece ids, padded with the vocabulary's pad id.
- ``segments``: ``(B, L)`` segment (token type) ids, 0 for sentence A and padding, 1 for B.
- ``valid_length``: ``(B,)`` number of real tokens per example, or None for no padding.
"""
import dataclasses

import numpy as np
import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from .config import KERNEL_FIELDS, BERTConfig
from .errors import ModelError
from .kernels import KernelChoice, building
from .heads import MLMDecoder, NSClassifier
from .layers import (WEIGHT_INIT, Dropout, EncoderBlock, LayerNorm, LearnedPositionalEncoding,
                     PositionalEncoding)

__all__ = ['BERTEncoder', 'BERTModel', 'TaskModel', 'with_kernels', 'TASK_MODELS', 'BERTClassifier',
           'BERTForPretraining', 'ClassifierInfo', 'CheckedInputs', 'TRUNCATIONS',
           'MAX_CALIBRATION_TEXTS']


TRUNCATIONS = ('head', 'head+tail')
MAX_CALIBRATION_TEXTS = 64


@dataclasses.dataclass
class ClassifierInfo:
    """What a classifier needs besides its weights to predict as it was trained.

    Saved in the model directory's manifest and read back typed (:meth:`from_dict`).

    Parameters
    ----------
    label_names : list of str
        Class names in id order (the dataset's; ``'0'``, ``'1'``, ... when unknown).
    max_len : int, default 128
        Tokens per sequence in training, [CLS] and [SEP] included.
    truncate : {'head', 'head+tail'}, default 'head'
        How longer texts were cut (see :class:`gluonbert.data.BERTTransform`).
    text_pair : bool, default False
        Trained on sentence pairs (segment 0 then 1).
    kernels : {'fused', 'mxnet'} or None
        The LayerNorm/dropout kernels that trained it; None when unknown.
    calibration_texts : list, default []
        Up to 64 training inputs (texts, or ``[text, pair]`` lists for pair tasks) kept for
        int8 calibration and export checks on the model's own task.
    """
    label_names: list
    max_len: int = 128
    truncate: str = 'head'
    text_pair: bool = False
    kernels: str = None
    calibration_texts: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        names = self.label_names
        if not isinstance(names, (list, tuple)) or len(names) < 2 or \
                not all(isinstance(n, str) and n for n in names):
            raise ModelError(f'ClassifierInfo.label_names must be a list of at least 2 '
                             f'non-empty strings, got {names!r}')
        if len(set(names)) != len(names):
            raise ModelError(f'ClassifierInfo.label_names repeat a name: {names!r}')
        self.label_names = list(names)
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or \
                self.max_len < 3:
            raise ModelError(f'ClassifierInfo.max_len must be an integer >= 3, '
                             f'got {self.max_len!r}')
        if self.truncate not in TRUNCATIONS:
            raise ModelError(f'ClassifierInfo.truncate must be one of {TRUNCATIONS}, '
                             f'got {self.truncate!r}')
        if not isinstance(self.text_pair, bool):
            raise ModelError(f'ClassifierInfo.text_pair must be true or false, '
                             f'got {self.text_pair!r}')
        if self.kernels not in (None, 'fused', 'mxnet'):
            raise ModelError(f"ClassifierInfo.kernels must be 'fused', 'mxnet' or null, "
                             f"got {self.kernels!r}")
        texts = self.calibration_texts
        if not isinstance(texts, (list, tuple)) or not all(
                isinstance(t, str) or isinstance(t, (list, tuple)) and len(t) == 2 and
                all(isinstance(x, str) for x in t) for t in texts):
            raise ModelError('ClassifierInfo.calibration_texts must be a list of texts (or '
                             '[text, pair] lists)')
        self.calibration_texts = [t if isinstance(t, str) else list(t)
                                  for t in texts][:MAX_CALIBRATION_TEXTS]

    @classmethod
    def default(cls, num_classes):
        """Info for a classifier nobody described: classes named by their ids."""
        return cls([str(i) for i in range(num_classes)])

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Build from a manifest's dict; unknown keys and wrong types are a ModelError."""
        if not isinstance(values, dict):
            raise ModelError(f'classifier info must be an object, got {type(values).__name__}')
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f'unknown classifier info field(s): {", ".join(unknown)}')
        if 'label_names' not in values:
            raise ModelError('classifier info has no label_names')
        return cls(**values)


def check_inputs(words, segments, valid_length, *, max_length, vocab_size=None,
                 type_vocab_size=None, masked_positions=None):
    """Raise a clear TypeError/ValueError for malformed model inputs (imperative calls only).

    The value checks read small index arrays back to the host; mistakes here would otherwise
    be silent (MXNet's Embedding clips out-of-range ids) or crash deep inside a kernel.
    """
    for name, value in (('words', words), ('segments', segments)):
        if not isinstance(value, mx.nd.NDArray):
            raise TypeError(f'{name} must be an mxnet NDArray of shape (batch, seq_len), '
                            f'got {type(value).__name__}')
    if words.ndim != 2:
        raise ValueError(f'words must have shape (batch, seq_len), got {words.shape}')
    if segments.shape != words.shape:
        raise ValueError(f'words and segments must have the same shape, '
                         f'got {words.shape} and {segments.shape}')
    batch, seq_len = words.shape
    if seq_len > max_length:
        raise ValueError(f'sequence length {seq_len} exceeds the model max_length {max_length}; '
                         f'truncate the input (e.g. max_len={max_length})')
    if vocab_size is not None:
        ids = words.asnumpy()
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f'word ids must be in [0, {vocab_size}), got range '
                             f'[{ids.min():g}, {ids.max():g}]')
    if type_vocab_size is not None:
        seg = segments.asnumpy()
        if seg.size and (seg.min() < 0 or seg.max() >= type_vocab_size):
            raise ValueError(f'segment ids must be in [0, {type_vocab_size}), got range '
                             f'[{seg.min():g}, {seg.max():g}] (pad segments with 0, '
                             f'not the pad id)')
    if valid_length is not None:
        if not isinstance(valid_length, mx.nd.NDArray):
            raise TypeError(f'valid_length must be an mxnet NDArray of shape (batch,) or None, '
                            f'got {type(valid_length).__name__}')
        if valid_length.shape != (batch,):
            raise ValueError(f'valid_length must have shape ({batch},), got {valid_length.shape}')
        lengths = valid_length.asnumpy()
        if (lengths < 1).any() or (lengths > seq_len).any():
            raise ValueError(f'valid_length values must be in [1, {seq_len}] (the sequence '
                             f'length), got {np.unique(lengths).tolist()[:8]}')
    if masked_positions is not None:
        if not isinstance(masked_positions, mx.nd.NDArray) or masked_positions.ndim != 2 \
                or masked_positions.shape[0] != batch:
            raise ValueError(f'masked_positions must be an NDArray of shape ({batch}, '
                             f'num_masked), got {getattr(masked_positions, "shape", None)}')
        positions = masked_positions.asnumpy()
        if positions.size and (positions.min() < 0 or positions.max() >= seq_len):
            raise ValueError(f'masked_positions must be in [0, {seq_len}), got range '
                             f'[{positions.min():g}, {positions.max():g}]')


class CheckedInputs:
    """Checks a call's inputs with :func:`check_inputs` before the forward pass (a traced
    call, with Symbols, is not checked). Mixed into every block a user calls with
    ``(words, segments, valid_length)``: the encoder, the model and the task models."""

    def check_inputs(self, words, segments, valid_length, *rest):
        """Raise for malformed inputs; ``rest``: what a task model takes besides."""
        cfg = self.config
        check_inputs(words, segments, valid_length, max_length=cfg.max_length,
                     vocab_size=cfg.vocab_size, type_vocab_size=cfg.type_vocab_size)

    def forward(self, words, segments, valid_length=None, *rest):
        # pylint: disable=arguments-differ
        if not isinstance(words, mx.sym.Symbol):  # a NumPy array is told what to pass
            self.check_inputs(words, segments, valid_length, *rest)
        return super().forward(words, segments, valid_length, *rest)


class BERTEncoder(CheckedInputs, HybridBlock):
    """Embeddings plus a stack of post-LayerNorm Transformer encoder blocks.

    ``x = LayerNorm(word_embed(words) + segment_embed(segments) + position(L))``, dropout,
    then ``num_layers`` :class:`EncoderBlock` s. Outputs at padded positions are zero.

    Parameters
    ----------
    vocab_size, units, hidden_size, num_heads, num_layers : int
    dropout : float
    max_length : int, default 512
    type_vocab_size : int, default 2
    attention_dropout : float or None (defaults to ``dropout``)
    layer_norm_eps : float, default 1e-12
    activation : str, default 'gelu'
    position_embedding : {'learned', 'sinusoidal'}, default 'learned'
    kernels, layer_norm_kernels, dropout_kernels, attention_kernels, attention_mask
        The implementations its blocks use (:mod:`gluonbert.kernels`; the
        :class:`BERTConfig` fields), 'auto' resolved here: ``self.config`` holds the answer.

    Inputs:
        - **words**: ``(B, L)``
        - **segments**: ``(B, L)``
        - **valid_length**: ``(B,)`` or None

    Outputs:
        - **sequence_output**: ``(B, L, U)``
    """

    def __init__(self, *, vocab_size, units, hidden_size, num_heads, num_layers, dropout,
                 max_length=512, type_vocab_size=2, attention_dropout=None,
                 layer_norm_eps=1e-12, activation='gelu', position_embedding='learned',
                 kernels='auto', layer_norm_kernels=None, dropout_kernels=None,
                 attention_kernels=None, attention_mask='select', prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        choice = KernelChoice.from_fields(  # resolves 'auto'
            kernels=kernels, layer_norm_kernels=layer_norm_kernels,
            dropout_kernels=dropout_kernels, attention_kernels=attention_kernels,
            attention_mask=attention_mask)
        resolved = KernelChoice.from_fields(kernels=kernels)
        # Validates every argument with a clear message.
        self.config = BERTConfig(
            kernels=resolved.layer_norm, attention_mask=attention_mask,
            layer_norm_kernels=None if layer_norm_kernels is None else choice.layer_norm,
            dropout_kernels=None if dropout_kernels is None else choice.dropout,
            attention_kernels=None if attention_kernels is None else choice.attention,
            vocab_size=vocab_size, units=units, hidden_size=hidden_size, num_heads=num_heads,
            num_layers=num_layers, max_length=max_length, type_vocab_size=type_vocab_size,
            dropout=dropout, attention_dropout=dropout if attention_dropout is None
            else attention_dropout, layer_norm_eps=layer_norm_eps, activation=activation,
            position_embedding=position_embedding)
        cfg = self.config
        with self.name_scope(), building(cfg):
            self.word_embed = nn.Embedding(vocab_size, units, weight_initializer=WEIGHT_INIT,
                                           prefix='word_embed_')
            self.segment_embed = nn.Embedding(type_vocab_size, units,
                                              weight_initializer=WEIGHT_INIT,
                                              prefix='segment_embed_')
            position_cls = (LearnedPositionalEncoding if position_embedding == 'learned'
                            else PositionalEncoding)
            # Dropout comes after the LayerNorm (BERT's order), not inside the position block.
            self.position_embed = position_cls(units=units, max_length=max_length, dropout=0.0,
                                               layout='TNC', prefix='position_embed_')
            self.embed_norm = LayerNorm(units=units, epsilon=layer_norm_eps)
            self.embed_dropout = Dropout(rate=dropout)
            self.layers = nn.HybridSequential(prefix='layers_')
            for _ in range(num_layers):
                self.layers.add(EncoderBlock(
                    units=units, hidden_size=hidden_size, num_heads=num_heads, dropout=dropout,
                    attention_dropout=cfg.attention_dropout, layer_norm_eps=layer_norm_eps,
                    activation=activation, layout='TNC'))

    def hybrid_forward(self, F, words, segments, valid_length=None):
        # pylint: disable=arguments-differ
        # Work time-major inside: the fused attention kernels want (L, B, U).
        x = self.word_embed(F.transpose(words)) + self.segment_embed(F.transpose(segments))
        x = self.position_embed(x)                                  # (L, B, U)
        x = self.embed_dropout(self.embed_norm(x))
        for layer in self.layers:
            x = layer(x, valid_length)
        if valid_length is not None:
            x = F.SequenceMask(x, sequence_length=valid_length, use_sequence_length=True,
                               axis=0)
        return F.transpose(x, axes=(1, 0, 2))                       # (B, L, U)


class BERTModel(CheckedInputs, HybridBlock):
    """BERT encoder plus pooler (tanh Dense on the [CLS] encoding).

    Parameters
    ----------
    config : BERTConfig
        ``config.kernels`` 'auto' is resolved here: ``self.config`` holds the answer.

    Inputs:
        - **words**: ``(B, L)``
        - **segments**: ``(B, L)``
        - **valid_length**: ``(B,)`` or None

    Outputs:
        - **sequence_output**: ``(B, L, U)``
        - **pooled_output**: ``(B, U)``
    """

    def __init__(self, config, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if not isinstance(config, BERTConfig):
            raise TypeError(f'BERTModel takes a BERTConfig (e.g. BERTConfig.from_preset('
                            f'"bert_12_768_12")), got {type(config).__name__}')
        fields = config.to_dict()
        with self.name_scope():
            self.encoder = BERTEncoder(prefix='encoder_', **fields)
            self.pooler = nn.Dense(config.units, in_units=config.units, flatten=False,
                                   activation='tanh', weight_initializer=WEIGHT_INIT,
                                   prefix='pooler_')
        self.config = self.encoder.config  # with the kernels resolved

    def hybrid_forward(self, F, words, segments, valid_length=None):
        # pylint: disable=arguments-differ
        sequence = self.encoder(words, segments, valid_length)          # (B, L, U)
        cls = F.slice_axis(sequence, axis=1, begin=0, end=1).reshape((-1, self.config.units))
        return sequence, self.pooler(cls)                               # (B, U)


# ------------------------------------------------------------------------- task models
TASK_MODELS = {}  # a manifest's 'model_class' -> the class that loads it


class TaskModel(CheckedInputs, HybridBlock):
    """A task head on a :class:`BERTModel`: the base class of every task model.

    It holds what they share: the model (``bert``) and its ``config``, the input check, the
    labelled tasks' :class:`ClassifierInfo` (label names, max_len, truncation, ...) and the
    manifest round trip of a model directory (:meth:`manifest_fields`,
    :meth:`from_manifest`). Every subclass is registered by its name in
    :data:`TASK_MODELS`, which loading, export, LoRA and the fast paths ask instead of
    checking concrete types.

    A labelled task (``num_classes`` given) has a head named ``classifier``: dropout, then
    one Dense layer to ``num_classes`` logits, as :class:`BERTClassifier` does on the pooled
    output and :class:`~gluonbert.token_classification.BERTForTokenClassification` on
    every token's encoding.

    Class attributes
    ----------------
    task : str
        What the outputs are: ``'sequence_classification'`` (``(B, num_classes)`` logits),
        ``'token_classification'`` (``(B, L, num_classes)``) or ``'pretraining'``.
    """
    task = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        TASK_MODELS[cls.__name__] = cls

    def __init__(self, bert, num_classes=None, dropout=0.1, *, info=None, token_level=False,
                 prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if not isinstance(bert, BERTModel):
            raise TypeError(f'{type(self).__name__} wraps a gluonbert BERTModel, got '
                            f'{type(bert).__name__}; convert GluonNLP models with '
                            f'gluonbert.from_gluonnlp')
        self.bert = bert
        self.num_classes = num_classes
        self._info = None
        if num_classes is None:
            return
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f'num_classes must be an integer >= 2, got {num_classes!r}')
        self.info = info if info is not None else ClassifierInfo.default(num_classes)
        with self.name_scope(), building(bert.config):
            self.classifier = nn.HybridSequential(prefix='classifier_')
            with self.classifier.name_scope():
                self.classifier.add(Dropout(rate=dropout))
                self.classifier.add(nn.Dense(num_classes, in_units=bert.config.units,
                                             flatten=not token_level,
                                             weight_initializer=WEIGHT_INIT))

    @property
    def config(self):
        return self.bert.config

    @property
    def info(self):
        """The :class:`ClassifierInfo` of a labelled task (None for pre-training)."""
        return self._info

    @info.setter
    def info(self, info):
        if not isinstance(info, ClassifierInfo):
            raise TypeError(f'info must be a ClassifierInfo, got {type(info).__name__}')
        if len(info.label_names) != self.num_classes:
            raise ModelError(f'{len(info.label_names)} label names for {self.num_classes} '
                             f'classes')
        self._info = info

    def info_with(self, **changes):
        """This model's info with ``changes`` (fields; None leaves one as it is), checked
        against ``num_classes``; the model itself is not changed."""
        if self._info is None:
            raise ModelError(f'{type(self).__name__} has no labels')
        info = dataclasses.replace(self._info, **{k: (list(v) if k == 'label_names' else v)
                                                  for k, v in changes.items() if v is not None})
        if len(info.label_names) != self.num_classes:
            raise ModelError(f'{len(info.label_names)} label names for {self.num_classes} '
                             f'classes')
        return info

    @property
    def label_names(self):
        return None if self._info is None else list(self._info.label_names)

    @label_names.setter
    def label_names(self, names):
        self.info = self.info_with(label_names=names)

    @property
    def head_dropout(self):
        """The dropout rate before the labelled head's Dense layer (None without one)."""
        return None if self._info is None else self.classifier[0].rate

    def manifest_fields(self, label_names=None):
        """What a model directory's manifest records of this task besides the config and
        the weights (``label_names`` replaces the info's)."""
        fields = {'model_class': type(self).__name__}
        if self._info is not None:
            info = self.info_with(label_names=label_names)
            fields.update(num_classes=self.num_classes, label_names=info.label_names,
                          classifier=info.to_dict())
        return fields

    @classmethod
    def from_manifest(cls, bert, manifest, info=None, dropout=0.1):
        """A new (uninitialised head) task model on ``bert`` from the fields
        :meth:`manifest_fields` wrote; ``info`` is their :class:`ClassifierInfo`, read and
        checked by the caller."""
        if info is None:
            return cls(bert)
        if len(info.label_names) < 2:
            raise ModelError(f'{len(info.label_names)} label names')
        return cls(bert, num_classes=len(info.label_names), dropout=dropout, info=info)

    def on_bert(self, bert, *, prefix, params):
        """A new model of this class and task (info, classes, head dropout) on ``bert``,
        with ``prefix`` and ``params`` (for sharing this one's, see :func:`with_kernels`)."""
        if self._info is None:
            return type(self)(bert, prefix=prefix, params=params)
        return type(self)(bert, num_classes=self.num_classes, dropout=self.head_dropout,
                          info=self._info, prefix=prefix, params=params)


class BERTClassifier(TaskModel):
    """Sentence (pair) classifier: dropout and a Dense layer on BERT's pooled output.

    Parameters
    ----------
    bert : BERTModel
    num_classes : int, default 2
    dropout : float, default 0.1
    info : ClassifierInfo, optional
        Label names, training max_len and truncation, ...; default
        :meth:`ClassifierInfo.default` (classes named '0', '1', ...). Its label count must
        be ``num_classes``. Readable as ``net.info`` (and ``net.label_names``).

    Inputs:
        - **words**: ``(B, L)``
        - **segments**: ``(B, L)``
        - **valid_length**: ``(B,)`` or None

    Outputs:
        - **logits**: ``(B, num_classes)``
    """
    task = 'sequence_classification'

    def __init__(self, bert, num_classes=2, dropout=0.1, prefix=None, params=None, *,
                 info=None):
        super().__init__(bert, num_classes, dropout, info=info, prefix=prefix, params=params)

    def hybrid_forward(self, F, words, segments, valid_length=None):
        # pylint: disable=arguments-differ
        _, pooled = self.bert(words, segments, valid_length)                   # (B, U)
        return self.classifier(pooled)                                         # (B, C)


class BERTForPretraining(TaskModel):
    """BERT with its masked-LM and next-sentence heads (MLM output tied to the word embedding).

    Parameters
    ----------
    config : BERTConfig
    bert : BERTModel or None
        An existing model to add heads to (e.g. a pretrained one); None builds a new one.

    Inputs:
        - **words**, **segments**: ``(B, L)``
        - **valid_length**: ``(B,)`` or None
        - **masked_positions**: ``(B, M)``

    Outputs:
        - **sequence_output**: ``(B, L, U)``
        - **pooled_output**: ``(B, U)``
        - **mlm_logits**: ``(B, M, V)``
        - **nsp_logits**: ``(B, 2)``
    """
    task = 'pretraining'

    def __init__(self, config=None, bert=None, prefix=None, params=None):
        if bert is None:
            if config is None:
                raise TypeError('BERTForPretraining needs a config or a bert model')
            bert = BERTModel(config)
        elif config is not None and config.architecture() != bert.config.architecture():
            raise ValueError('config does not match the given bert model')
        super().__init__(bert, prefix=prefix, params=params)
        cfg = self.config
        with self.name_scope(), building(cfg):
            self.mlm_decoder = MLMDecoder(vocab_size=cfg.vocab_size, units=cfg.units,
                                          activation=cfg.activation,
                                          layer_norm_eps=cfg.layer_norm_eps,
                                          embedding_weight=bert.encoder.word_embed.weight,
                                          prefix='mlm_decoder_')
            self.ns_classifier = NSClassifier(units=cfg.units, prefix='ns_classifier_')

    @classmethod
    def from_manifest(cls, bert, manifest, info=None, dropout=0.1):
        return cls(bert=bert)

    def on_bert(self, bert, *, prefix, params):
        return type(self)(bert=bert, prefix=prefix, params=params)

    def check_inputs(self, words, segments, valid_length, *rest):
        cfg = self.config
        check_inputs(words, segments, valid_length, max_length=cfg.max_length,
                     vocab_size=cfg.vocab_size, type_vocab_size=cfg.type_vocab_size,
                     masked_positions=rest[0] if rest else None)

    def hybrid_forward(self, F, words, segments, valid_length, masked_positions):
        # pylint: disable=arguments-differ
        sequence, pooled = self.bert(words, segments, valid_length)
        return (sequence, pooled, self.mlm_decoder(sequence, masked_positions),
                self.ns_classifier(pooled))


# ------------------------------------------------------------------ switching kernels
def with_kernels(model, **choices):
    """A new model of ``model``'s class built with other kernel implementations
    (``choices``: :data:`~gluonbert.config.KERNEL_FIELDS`, e.g. ``kernels='mxnet'`` or
    ``attention_mask='additive'``), on the same parameters (shared, not copied): for
    tracing a graph to convert or export. ``model`` itself is not changed. A task model
    keeps its info and classes. A model with LoRA adapters is refused: merge them first
    (:func:`gluonbert.lora.merge_lora`).
    """
    unknown = sorted(set(choices) - set(KERNEL_FIELDS))
    if unknown:
        raise ValueError(f'unknown kernel choice(s) {", ".join(unknown)}; '
                         f'known: {", ".join(KERNEL_FIELDS)}')
    bert = model.bert if isinstance(model, TaskModel) else model
    if not isinstance(bert, BERTModel):
        raise TypeError(f'with_kernels takes a BERTModel or a task model, got '
                        f'{type(model).__name__}')
    plain = (type(b) is nn.Dense for layer in bert.encoder.layers  # pylint: disable=unidiomatic-typecheck
             for b in (layer.attention.query, layer.attention.key, layer.attention.value,
                       layer.attention.out_proj, layer.ffn.ffn_1, layer.ffn.ffn_2))
    if not all(plain):
        raise ModelError('with_kernels cannot rebuild a model with LoRA adapters (or other '
                         'wrapped layers); merge them first (gluonbert.lora.merge_lora)')
    config = dataclasses.replace(bert.config, **choices)
    new_bert = BERTModel(config, prefix=bert.prefix, params=bert.collect_params())
    if model is bert:
        return new_bert
    return model.on_bert(new_bert, prefix=model.prefix, params=model.collect_params())
