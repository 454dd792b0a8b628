"""Transformer building blocks as Gluon HybridBlocks.

Every block takes keyword-only constructor arguments and works in imperative and
hybridized mode. Shapes use the legend of :mod:`gluonbert.config` (B batch,
L sequence length, U units, H FFN hidden size, N heads, D = U // N).

Blocks that see sequences take a ``layout``: ``'NTC'`` means ``(B, L, U)``,
the friendly default; ``'TNC'`` means ``(L, B, U)``, which the fused attention
kernels want, so :class:`gluonbert.BERTEncoder` runs its layers in ``'TNC'`` and
transposes once at each end instead of once per layer.

Where an operation has several implementations (layer norm, dropout, the attention
products and mask), a block looks its one up in :mod:`gluonbert.kernels` when it is
built (``kernels.current()``) and calls it in ``hybrid_forward``.
"""
import math

import numpy as np
from mxnet import init, symbol
from mxnet.gluon import HybridBlock, nn

from . import kernels

__all__ = ['PositionalEncoding', 'LearnedPositionalEncoding', 'MultiHeadAttention', 'Dropout',
           'LayerNorm', 'AddNorm', 'PositionWiseFFN', 'EncoderBlock', 'Activation',
           'sinusoidal_table', 'ATTENTION_MASKS', 'parameter_input']

LAYOUTS = ('NTC', 'TNC')
ATTENTION_MASKS = tuple(kernels.ATTENTION_MASKS)  # how padded keys are masked
# BERT's initialisation: N(0, 0.02) weights, zero biases.
WEIGHT_INIT = init.Normal(0.02)


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
    return layout


def sinusoidal_table(max_length, units):
    """The closed-form encoding of Vaswani et al. 2017 as a ``(max_length, units)`` array.

    ``P[pos, 2i] = sin(pos / 10000^(2i/units))`` and ``P[pos, 2i+1] = cos(...)``.
    """
    positions = np.arange(max_length, dtype=np.float64)[:, None]
    frequencies = np.power(10000.0, -np.arange(0, units, 2, dtype=np.float64) / units)
    angles = positions * frequencies                       # (max_length, ceil(units/2))
    table = np.zeros((max_length, units), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, :units // 2])
    return table.astype(np.float32)


class _PositionBase(HybridBlock):
    """Adds ``table[position]`` to each step of the input, then applies dropout."""

    def __init__(self, *, units, max_length, dropout, layout, prefix, params):
        super().__init__(prefix=prefix, params=params)
        self._units = units
        self._max_length = max_length
        self._layout = _check_layout(layout)
        with self.name_scope():
            self.dropout_layer = Dropout(rate=dropout)

    def _add_positions(self, F, x, table):
        seq_axis = 1 if self._layout == 'NTC' else 0
        steps = F.contrib.arange_like(x, axis=seq_axis)                       # (L,)
        positions = F.Embedding(steps, table, input_dim=self._max_length,
                                output_dim=self._units)                        # (L, U)
        # broadcast over the batch axis
        x = F.broadcast_add(x, F.expand_dims(positions, axis=1 - seq_axis))
        return self.dropout_layer(x)


class PositionalEncoding(_PositionBase):
    """Sinusoidal positional encoding (closed form), added to the input, then dropout.

    Parameters
    ----------
    units : int
        Feature width U (any positive integer).
    max_length : int, default 512
        Longest sequence supported.
    dropout : float, default 0.0
    layout : {'NTC', 'TNC'}, default 'NTC'

    Inputs:
        - **x**: ``(B, L, U)`` for 'NTC', ``(L, B, U)`` for 'TNC'; ``L <= max_length``.

    Outputs:
        - **y**: same shape as ``x``; ``x + P[:L]`` then dropout.
    """

    def __init__(self, *, units, max_length=512, dropout=0.0, layout='NTC', prefix=None,
                 params=None):
        super().__init__(units=units, max_length=max_length, dropout=dropout, layout=layout,
                         prefix=prefix, params=params)
        with self.name_scope():
            # A constant: saved with the parameters, never trained.
            self.table = self.params.get_constant('table', sinusoidal_table(max_length, units))

    def hybrid_forward(self, F, x, table):  # pylint: disable=arguments-differ
        return self._add_positions(F, x, table)


class LearnedPositionalEncoding(_PositionBase):
    """Learned absolute position embedding (as in BERT), added to the input, then dropout.

    Same inputs and outputs as :class:`PositionalEncoding`; the table is a trainable
    ``(max_length, units)`` parameter named ``weight``.
    """

    def __init__(self, *, units, max_length=512, dropout=0.0, layout='NTC',
                 weight_initializer=WEIGHT_INIT, prefix=None, params=None):
        super().__init__(units=units, max_length=max_length, dropout=dropout, layout=layout,
                         prefix=prefix, params=params)
        with self.name_scope():
            self.weight = self.params.get('weight', shape=(max_length, units),
                                          init=weight_initializer)

    def hybrid_forward(self, F, x, weight):  # pylint: disable=arguments-differ
        return self._add_positions(F, x, weight)


class Activation(HybridBlock):
    """Element-wise activation by name.

    ``'gelu'`` is the exact erf form BERT uses (MXNet's fused ``LeakyReLU(act_type='gelu')``);
    ``'gelu_tanh'`` is the tanh approximation. Also ``relu``, ``tanh``, ``sigmoid``, ``softrelu``.
    """

    def __init__(self, name='gelu', prefix=None, params=None):
        from .config import ACTIVATIONS
        super().__init__(prefix=prefix, params=params)
        if name not in ACTIVATIONS:
            raise ValueError(f'unknown activation {name!r}; choose one of {ACTIVATIONS}')
        self._name = name

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        if self._name == 'gelu':
            return F.LeakyReLU(x, act_type='gelu')
        if self._name == 'gelu_tanh':
            inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x ** 3))
            return 0.5 * x * (1.0 + F.tanh(inner))
        return F.Activation(x, act_type=self._name)

    def __repr__(self):
        return f'{self.__class__.__name__}({self._name})'


def parameter_input(F, parameter, like):
    """``parameter`` as an input of a graph that ``F`` builds: its Symbol variable when
    tracing (``F`` is ``mx.sym``), else its NDArray on the context of ``like`` (an input).

    For a block that computes with another block's parameters (a child's, as
    :class:`MultiHeadAttention` fuses its projections, or a wrapped layer's, as
    :class:`gluonbert.lora.LoRADense`), which ``hybrid_forward`` is not handed.
    """
    if F is symbol:
        return parameter.var()
    return parameter.data(like.context)


class MultiHeadAttention(HybridBlock):
    """Multi-head scaled dot-product self-attention, masked by valid length.

    All heads run in batched kernels (no Python loop over heads). The scores, the mask and
    the context are the implementations :mod:`gluonbert.kernels` names (chosen when the
    block is built); they all give the same weights.

    Parameters
    ----------
    units : int
        Model width U; must be divisible by ``num_heads``.
    num_heads : int
    dropout : float, default 0.0
        Dropout on the attention weights.
    use_bias : bool, default True
    causal : bool, default False
        If True, position i attends only to positions <= i.
    layout : {'NTC', 'TNC'}, default 'NTC'

    Inputs:
        - **x**: ``(B, L, U)`` ('NTC') or ``(L, B, U)`` ('TNC').
        - **valid_length**: ``(B,)`` or None. Keys at positions ``>= valid_length``
          get exactly zero weight.

    Outputs:
        - **output**: same shape as ``x``.
        - **attention_weights**: ``(B, N, L, L)``, rows sum to 1 (before dropout).
    """

    def __init__(self, *, units, num_heads, dropout=0.0, use_bias=True, causal=False,
                 layout='NTC', weight_initializer=WEIGHT_INIT, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if units % num_heads:
            raise ValueError(f'units ({units}) must be divisible by num_heads ({num_heads})')
        self._units = units
        self._num_heads = num_heads
        self._causal = causal
        self._layout = _check_layout(layout)
        choice = kernels.current()
        self.kernels = choice.attention
        self.attention_mask = choice.attention_mask
        self._scores = kernels.ATTENTION_SCORES[choice.attention]
        self._context = kernels.ATTENTION_CONTEXTS[choice.attention]
        self._mask = kernels.ATTENTION_MASKS[choice.attention_mask]
        with self.name_scope():
            dense = dict(units=units, in_units=units, flatten=False, use_bias=use_bias,
                         weight_initializer=weight_initializer)
            self.query = nn.Dense(prefix='query_', **dense)
            self.key = nn.Dense(prefix='key_', **dense)
            self.value = nn.Dense(prefix='value_', **dense)
            self.out_proj = nn.Dense(prefix='out_proj_', **dense)
            self.dropout_layer = Dropout(rate=dropout)

    @property
    def units(self):
        return self._units

    @property
    def num_heads(self):
        return self._num_heads

    def _a_parameter(self):
        # tells the kernels dtype and device (a projection may be wrapped, e.g. by LoRA)
        return next(iter(self.collect_params().values()))

    def _fusable(self):
        projections = (self.query, self.key, self.value)
        return (all(type(p) is nn.Dense for p in projections)  # pylint: disable=unidiomatic-typecheck
                and len({p.bias is None for p in projections}) == 1)

    def _interleaved_projection(self, F, x):
        """x (L, B, U) -> (L, B, 3U), per head [q_h, k_h, v_h]: the layout the batched
        attention kernels read. Plain Dense projections become one GEMM of their
        interleaved weights; wrapped ones (e.g. LoRA) are applied and interleaved."""
        heads = self._num_heads
        if self._fusable():
            # (U, U) weights -> (N, D, U) -> concat per head -> (3U, U)
            weights = [parameter_input(F, p.weight, x).reshape((heads, -1, self._units))
                       for p in (self.query, self.key, self.value)]
            weight = F.concat(*weights, dim=1).reshape((-1, self._units))
            if self.query.bias is None:
                return F.FullyConnected(x, weight, num_hidden=3 * self._units, no_bias=True,
                                        flatten=False)
            biases = [parameter_input(F, p.bias, x).reshape((heads, -1))
                      for p in (self.query, self.key, self.value)]
            bias = F.stack(*biases, axis=1).reshape((-1,))
            return F.FullyConnected(x, weight, bias, num_hidden=3 * self._units, flatten=False)
        # (L, B, U) each -> (L, B, N, 1, D) -> (L, B, N, 3, D) -> (L, B, 3U)
        parts = [p(x).reshape((0, 0, heads, 1, -1)) for p in (self.query, self.key, self.value)]
        return F.concat(*parts, dim=3).reshape((0, 0, -1))

    def _causal_mask(self, F, x, scores):
        steps = F.contrib.arange_like(x, axis=0)                                  # (L,)
        allowed = F.broadcast_lesser_equal(steps.reshape((1, -1)),
                                           steps.reshape((-1, 1)))                 # key <= query
        allowed = F.broadcast_like(allowed.expand_dims(axis=0), scores)
        return F.where(allowed, scores, F.ones_like(scores) * -1e4)

    def _valid_keys(self, F, scores, valid_length):
        positions = F.cast(F.contrib.arange_like(scores, axis=-1), 'float32')     # (L,)
        return F.broadcast_lesser(positions.reshape((1, -1)),
                                  F.cast(valid_length, 'float32').reshape((-1, 1)))  # (B, L)

    def hybrid_forward(self, F, x, valid_length=None):  # pylint: disable=arguments-differ
        heads, like = self._num_heads, self._a_parameter()
        if self._layout == 'NTC':
            x = F.transpose(x, axes=(1, 0, 2))                                    # (L, B, U)
        qkv = self._interleaved_projection(F, x)                                  # (L, B, 3U)
        scores = self._scores(F, qkv, heads, like)           # QK^T / sqrt(D): (B*N, L, L)
        if self._causal:
            scores = self._causal_mask(F, x, scores)
        scores = scores.reshape((-1, heads, 0, 0), reverse=True)                 # (B, N, L, L)
        if valid_length is not None:
            scores = self._mask(F, scores, self._valid_keys(F, scores, valid_length))
        weights = F.softmax(scores, axis=-1)                                      # (B, N, L, L)
        dropped = self.dropout_layer(weights.reshape((-3, -2)))                  # (B*N, L, L)
        context = self._context(F, qkv, dropped, heads, like)                    # (L, B, U)
        output = self.out_proj(context)                                           # (L, B, U)
        if self._layout == 'NTC':
            output = F.transpose(output, axes=(1, 0, 2))                          # (B, L, U)
        return output, weights


class Dropout(HybridBlock):
    """Dropout (Srivastava et al. 2014), as ``nn.Dropout``: while training (autograd's train
    mode) each element is zeroed with probability ``rate`` and the others are scaled by
    ``1 / (1 - rate)``; otherwise the identity. The implementation is the one
    :mod:`gluonbert.kernels` names when the block is built (``kernels.DROPOUTS``).

    Parameters
    ----------
    rate : float
        Probability of dropping an element, in [0, 1).

    Inputs:
        - **x**: any shape.

    Outputs:
        - **out**: same shape as ``x``.
    """

    def __init__(self, *, rate, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if not 0 <= rate < 1:
            raise ValueError(f'dropout rate must be in [0, 1), got {rate}')
        self._rate = rate
        self.kernels = kernels.current().dropout
        self._dropout = kernels.DROPOUTS[self.kernels]

    @property
    def rate(self):
        """Probability of dropping an element."""
        return self._rate

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        if self._rate == 0:
            return F.identity(x)
        return self._dropout(F, x, self._rate)

    def __repr__(self):
        return f'{self.__class__.__name__}(rate={self._rate}, kernels={self.kernels!r})'


class LayerNorm(HybridBlock):
    """Layer normalisation over the last axis: ``gamma * (x - mean) / sqrt(var + eps) + beta``.

    The parameters are named like ``nn.LayerNorm``'s (``gamma``, ``beta``), so checkpoints
    are interchangeable. The implementation is the one :mod:`gluonbert.kernels` names when
    the block is built (``kernels.LAYER_NORMS``); they agree to float32 rounding.

    Parameters
    ----------
    units : int
        Width U of the normalised (last) axis.
    epsilon : float, default 1e-12

    Inputs:
        - **x**: ``(..., U)``.

    Outputs:
        - **out**: same shape as ``x``.
    """

    def __init__(self, *, units, epsilon=1e-12, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self._epsilon = epsilon
        self.kernels = kernels.current().layer_norm
        self._layer_norm = kernels.LAYER_NORMS[self.kernels]
        with self.name_scope():
            self.gamma = self.params.get('gamma', shape=(units,), init='ones',
                                         allow_deferred_init=True)
            self.beta = self.params.get('beta', shape=(units,), init='zeros',
                                        allow_deferred_init=True)

    def hybrid_forward(self, F, x, gamma, beta):  # pylint: disable=arguments-differ
        return self._layer_norm(F, x, gamma, beta, self._epsilon, self.gamma)

    def __repr__(self):
        return (f'{self.__class__.__name__}(units={self.gamma.shape[0]}, eps={self._epsilon}, '
                f'kernels={self.kernels!r})')


class AddNorm(HybridBlock):
    """Residual connection followed by LayerNorm: ``LayerNorm(x + dropout(y))``.

    Parameters
    ----------
    units : int
    dropout : float, default 0.0
    epsilon : float, default 1e-12

    Inputs:
        - **x**: residual input, ``(..., U)``.
        - **y**: sub-layer output, same shape as ``x``.

    Outputs:
        - **out**: same shape as ``x``.
    """

    def __init__(self, *, units, dropout=0.0, epsilon=1e-12, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        with self.name_scope():
            self.dropout_layer = Dropout(rate=dropout)
            self.norm = LayerNorm(units=units, epsilon=epsilon)

    def hybrid_forward(self, F, x, y):  # pylint: disable=arguments-differ
        return self.norm(x + self.dropout_layer(y))


class PositionWiseFFN(HybridBlock):
    """Position-wise feed-forward network: ``ffn_2(activation(ffn_1(x)))``.

    Parameters
    ----------
    units : int
        Input and output width U.
    hidden_size : int
        Inner width H.
    activation : str, default 'gelu'
        Exact erf-GELU by default; see :class:`Activation`.

    Inputs:
        - **x**: ``(..., U)``.

    Outputs:
        - **y**: ``(..., U)``.
    """

    def __init__(self, *, units, hidden_size, activation='gelu', weight_initializer=WEIGHT_INIT,
                 prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        with self.name_scope():
            self.ffn_1 = nn.Dense(hidden_size, in_units=units, flatten=False,
                                  weight_initializer=weight_initializer, prefix='ffn_1_')
            self.activation = Activation(activation)
            self.ffn_2 = nn.Dense(units, in_units=hidden_size, flatten=False,
                                  weight_initializer=weight_initializer, prefix='ffn_2_')

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        return self.ffn_2(self.activation(self.ffn_1(x)))


class EncoderBlock(HybridBlock):
    """Post-LayerNorm Transformer encoder block, as in BERT.

    ``h = AddNorm(x, attention(x))`` then ``out = AddNorm(h, ffn(h))``.

    Parameters
    ----------
    units, hidden_size, num_heads : int
    dropout : float, default 0.0
        Dropout on each sub-layer output.
    attention_dropout : float or None
        Dropout on attention weights; defaults to ``dropout``.
    layer_norm_eps : float, default 1e-12
    activation : str, default 'gelu'
    causal : bool, default False
    layout : {'NTC', 'TNC'}, default 'NTC'

    Inputs:
        - **x**: ``(B, L, U)`` ('NTC') or ``(L, B, U)`` ('TNC').
        - **valid_length**: ``(B,)`` or None.

    Outputs:
        - **out**: same shape as ``x``.
    """

    def __init__(self, *, units, hidden_size, num_heads, dropout=0.0, attention_dropout=None,
                 layer_norm_eps=1e-12, activation='gelu', causal=False, layout='NTC',
                 prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if attention_dropout is None:
            attention_dropout = dropout
        with self.name_scope():
            self.attention = MultiHeadAttention(units=units, num_heads=num_heads,
                                                dropout=attention_dropout, causal=causal,
                                                layout=layout,
                                                prefix='attention_')
            self.attention_norm = AddNorm(units=units, dropout=dropout, epsilon=layer_norm_eps,
                                          prefix='attention_norm_')
            self.ffn = PositionWiseFFN(units=units, hidden_size=hidden_size,
                                       activation=activation, prefix='ffn_')
            self.ffn_norm = AddNorm(units=units, dropout=dropout, epsilon=layer_norm_eps,
                                    prefix='ffn_norm_')

    def hybrid_forward(self, F, x, valid_length=None):  # pylint: disable=arguments-differ
        attended, _ = self.attention(x, valid_length)
        x = self.attention_norm(x, attended)
        return self.ffn_norm(x, self.ffn(x))
