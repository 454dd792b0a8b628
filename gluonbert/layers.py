"""Transformer building blocks as Gluon HybridBlocks.

Every block takes keyword-only constructor arguments and works in imperative and
hybridized mode. Shapes use the legend of :mod:`gluonbert.config` (B batch,
L sequence length, U units, H FFN hidden size, N heads, D = U // N).

Blocks that see sequences take a ``layout``: ``'NTC'`` means ``(B, L, U)``,
the friendly default; ``'TNC'`` means ``(L, B, U)``, which the fused attention
kernels want, so :class:`gluonbert.BERTEncoder` runs its layers in ``'TNC'`` and
transposes once at each end instead of once per layer.
"""
import math

import mxnet as mx
import numpy as np
from mxnet import init, symbol
from mxnet.gluon import HybridBlock, nn

from .ops import resolve_kernels

__all__ = ['PositionalEncoding', 'LearnedPositionalEncoding', 'MultiHeadAttention', 'Dropout',
           'LayerNorm', 'AddNorm', 'PositionWiseFFN', 'EncoderBlock', 'Activation',
           'sinusoidal_table', 'ATTENTION_MASKS', 'parameter_input']

LAYOUTS = ('NTC', 'TNC')
# How attention masks padded keys; both give exactly the same weights (see
# MultiHeadAttention): 'select' trains fastest, 'additive' infers fastest.
ATTENTION_MASKS = ('select', 'additive')
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

    def __init__(self, *, units, max_length, dropout, layout, kernels, prefix, params):
        super().__init__(prefix=prefix, params=params)
        self._units = units
        self._max_length = max_length
        self._layout = _check_layout(layout)
        with self.name_scope():
            self.dropout_layer = Dropout(rate=dropout, kernels=kernels)

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
    kernels : {'auto', 'fused', 'mxnet'}, default 'auto'
        Operators of the dropout (see :class:`Dropout`).

    Inputs:
        - **x**: ``(B, L, U)`` for 'NTC', ``(L, B, U)`` for 'TNC'; ``L <= max_length``.

    Outputs:
        - **y**: same shape as ``x``; ``x + P[:L]`` then dropout.
    """

    def __init__(self, *, units, max_length=512, dropout=0.0, layout='NTC', kernels='auto',
                 prefix=None, params=None):
        super().__init__(units=units, max_length=max_length, dropout=dropout, layout=layout,
                         kernels=kernels, prefix=prefix, params=params)
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
                 weight_initializer=WEIGHT_INIT, kernels='auto', prefix=None, params=None):
        super().__init__(units=units, max_length=max_length, dropout=dropout, layout=layout,
                         kernels=kernels, prefix=prefix, params=params)
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

    All heads run in batched kernels (no Python loop over heads). When the query,
    key and value projections are plain ``Dense`` layers their weights are
    interleaved per head into one projection and the fused
    ``interleaved_matmul_selfatt_*`` kernels compute scores and context; a wrapped
    projection (e.g. LoRA) falls back to three projections whose outputs are
    interleaved, with identical results.

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
    attention_mask : {'select', 'additive'}, default 'select'
        How keys past ``valid_length`` are masked; the weights are exactly the same, the
        speed is not (see ``hybrid_forward``).
    kernels : {'auto', 'fused', 'mxnet'}, default 'auto'
        Operators of the attention dropout (see :class:`Dropout`) and of the two batched
        products: gluonbert's (float32 on CPU, about 4x MXNet's speed) or MXNet's.

    Inputs:
        - **x**: ``(B, L, U)`` ('NTC') or ``(L, B, U)`` ('TNC').
        - **valid_length**: ``(B,)`` or None. Keys at positions ``>= valid_length``
          get exactly zero weight.

    Outputs:
        - **output**: same shape as ``x``.
        - **attention_weights**: ``(B, N, L, L)``, rows sum to 1 (before dropout).
    """

    def __init__(self, *, units, num_heads, dropout=0.0, use_bias=True, causal=False,
                 layout='NTC', attention_mask='select', weight_initializer=WEIGHT_INIT,
                 kernels='auto', prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if units % num_heads:
            raise ValueError(f'units ({units}) must be divisible by num_heads ({num_heads})')
        if attention_mask not in ATTENTION_MASKS:
            raise ValueError(f'attention_mask must be one of {ATTENTION_MASKS}, '
                             f'got {attention_mask!r}')
        self._units = units
        self._num_heads = num_heads
        self._causal = causal
        self._layout = _check_layout(layout)
        self.attention_mask = attention_mask
        with self.name_scope():
            dense = dict(units=units, in_units=units, flatten=False, use_bias=use_bias,
                         weight_initializer=weight_initializer)
            self.query = nn.Dense(prefix='query_', **dense)
            self.key = nn.Dense(prefix='key_', **dense)
            self.value = nn.Dense(prefix='value_', **dense)
            self.out_proj = nn.Dense(prefix='out_proj_', **dense)
            self.dropout_layer = Dropout(rate=dropout, kernels=kernels)
        self.kernels = resolve_kernels(kernels)

    @property
    def units(self):
        return self._units

    @property
    def num_heads(self):
        return self._num_heads

    def _fusable(self):
        projections = (self.query, self.key, self.value)
        return (all(type(p) is nn.Dense for p in projections)  # pylint: disable=unidiomatic-typecheck
                and len({p.bias is None for p in projections}) == 1)

    def _interleaved_projection(self, F, x):
        """Project x (L, B, U) to (L, B, 3U) laid out per head as [q_h, k_h, v_h]."""
        heads = self._num_heads
        if self._fusable():
            # (U, U) weights -> (N, D, U) -> concat per head -> (3U, U): one GEMM.
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

    def _products(self, F):
        """The operators of the two batched products (``qk``, ``valatt``)."""
        # (a projection may be wrapped, e.g. by LoRA: any of the block's parameters tells)
        if self.kernels == 'fused' and _float32_on_cpu(
                next(iter(self.collect_params().values()))):
            # extension operators overwrite their input gradients (see LayerNorm): each
            # use of qkv gets its own identity copy, whose gradients MXNet sums
            return (lambda qkv, **k: F.gluonbert_selfatt_qk(F.identity(qkv), **k),
                    lambda qkv, w, **k: F.gluonbert_selfatt_valatt(F.identity(qkv), w, **k))
        return (F.contrib.interleaved_matmul_selfatt_qk,
                F.contrib.interleaved_matmul_selfatt_valatt)

    def hybrid_forward(self, F, x, valid_length=None):  # pylint: disable=arguments-differ
        heads = self._num_heads
        if self._layout == 'NTC':
            x = F.transpose(x, axes=(1, 0, 2))                              # (L, B, U)
        qkv = self._interleaved_projection(F, x)                            # (L, B, 3U)
        qk, valatt = self._products(F)
        # scores are already scaled by 1/sqrt(D) inside the kernel
        scores = qk(qkv, heads=heads)                                       # (B*N, L, L)
        if self._causal:
            steps = F.contrib.arange_like(x, axis=0)                         # (L,)
            allowed = F.broadcast_lesser_equal(steps.reshape((1, -1)),
                                               steps.reshape((-1, 1)))        # (L, L) key<=query
            allowed = F.broadcast_like(allowed.expand_dims(axis=0), scores)
            scores = F.where(allowed, scores, F.ones_like(scores) * -1e4)
        if valid_length is None:
            weights = F.softmax(scores, axis=-1)                              # (B*N, L, L)
        else:
            # Masked keys get -1e30 and a plain softmax follows: on CPU that softmax runs in
            # oneDNN, while softmax(length=...) takes a generic kernel about 8x slower (a
            # fifth of BERT-base's inference time). exp(-1e30 - max) is exactly 0, so keys at
            # positions >= valid_length still get exactly zero weight.
            positions = F.cast(F.contrib.arange_like(scores, axis=-1), 'float32')  # (L,)
            valid = F.broadcast_lesser(positions.reshape((1, -1)),
                                       F.cast(valid_length, 'float32').reshape((-1, 1)))  # (B, L)
            scores = scores.reshape((-1, heads, 0, 0), reverse=True)         # (B, N, L, L)
            # 'select' picks scores with where over a mask broadcast to the scores' shape:
            # its backward is cheap, so it trains fastest. 'additive' adds a (B, 1, 1, L)
            # bias of 0 / -1e30: no full-size mask, so inference is faster (BERT-base bf16,
            # 32x128 on 2 cores: about 15%), but the broadcast's backward is slow.
            if self.attention_mask == 'additive':
                # where, not (valid - 1) * 1e30: 0 * inf is NaN should this run in float16
                bias = F.where(valid, F.zeros_like(valid), F.ones_like(valid) * -1e30)
                scores = F.broadcast_add(scores, bias.reshape((0, 1, 1, -1)))
            else:
                keep = F.broadcast_like(valid.reshape((0, 1, 1, -1)), scores)
                scores = F.where(keep, scores, F.ones_like(scores) * -1e30)
            weights = F.softmax(scores, axis=-1).reshape((-3, -2))           # (B*N, L, L)
        context = valatt(qkv, self.dropout_layer(weights), heads=heads)    # (L, B, U)
        output = self.out_proj(context)
        if self._layout == 'NTC':
            output = F.transpose(output, axes=(1, 0, 2))
        return output, F.reshape(weights, shape=(-1, heads, 0, 0), reverse=True)


class Dropout(HybridBlock):
    """Dropout (Srivastava et al. 2014), as ``nn.Dropout``: while training (autograd's train
    mode) each element is zeroed with probability ``rate`` and the others are scaled by
    ``1 / (1 - rate)``; otherwise the identity.

    With ``kernels='fused'`` it computes on CPU with gluonbert's fused operator
    (:mod:`gluonbert.ops`; 1.57M elements: 4.2 -> 1.2 ms, and no stored mask: the backward
    recomputes it from the call's random seed, so ``mx.random.seed`` repeats it). An
    extension operator is not told whether MXNet runs it for training, so the graph tells
    it: MXNet's own Dropout of the constant 1 is 1 in inference and 0 or 2 in training.
    With ``kernels='mxnet'``, and on GPUs, it is MXNet's Dropout. The two draw their masks
    from different random streams.

    Parameters
    ----------
    rate : float
        Probability of dropping an element, in [0, 1).
    kernels : {'auto', 'fused', 'mxnet'}, default 'auto'
        Resolved when the block is built (:func:`gluonbert.ops.resolve_kernels`).

    Inputs:
        - **x**: any shape.

    Outputs:
        - **out**: same shape as ``x``.
    """

    def __init__(self, *, rate, kernels='auto', prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if not 0 <= rate < 1:
            raise ValueError(f'dropout rate must be in [0, 1), got {rate}')
        self._rate = rate
        self.kernels = resolve_kernels(kernels)

    @property
    def rate(self):
        """Probability of dropping an element."""
        return self._rate

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        if self._rate == 0:
            return F.identity(x)
        # MXNet makes the input's context current while it runs or traces a block
        if self.kernels == 'fused' and mx.context.current_context().device_type == 'cpu':
            # a constant 1 of shape (1,), made from x (AMP cannot wrap F.ones) without a
            # gradient path back into x
            one = F.ones_like(F.BlockGrad(F.slice_axis(F.reshape(x, shape=(-1,)), axis=0,
                                                       begin=0, end=1)))
            training = F.Dropout(one, p=0.5) != 1                               # (1,)
            return F.gluonbert_dropout(x, training, p=self._rate)[0]
        return F.Dropout(x, p=self._rate)

    def __repr__(self):
        return f'{self.__class__.__name__}(rate={self._rate}, kernels={self.kernels!r})'


class LayerNorm(HybridBlock):
    """Layer normalisation over the last axis: ``gamma * (x - mean) / sqrt(var + eps) + beta``.

    The parameters are named like ``nn.LayerNorm``'s (``gamma``, ``beta``), so checkpoints
    are interchangeable. With ``kernels='fused'`` it computes in float32 on CPU with
    gluonbert's fused operator (:mod:`gluonbert.ops`; its backward is about 25x faster than
    MXNet's generic one), and with MXNet's ``LayerNorm`` otherwise (``kernels='mxnet'``,
    other dtypes, GPUs); the two agree to float32 rounding.

    Parameters
    ----------
    units : int
        Width U of the normalised (last) axis.
    epsilon : float, default 1e-12
    kernels : {'auto', 'fused', 'mxnet'}, default 'auto'
        Resolved when the block is built (:func:`gluonbert.ops.resolve_kernels`).

    Inputs:
        - **x**: ``(..., U)``.

    Outputs:
        - **out**: same shape as ``x``.
    """

    def __init__(self, *, units, epsilon=1e-12, kernels='auto', prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self._epsilon = epsilon
        self.kernels = resolve_kernels(kernels)
        with self.name_scope():
            self.gamma = self.params.get('gamma', shape=(units,), init='ones',
                                         allow_deferred_init=True)
            self.beta = self.params.get('beta', shape=(units,), init='zeros',
                                        allow_deferred_init=True)

    def hybrid_forward(self, F, x, gamma, beta):  # pylint: disable=arguments-differ
        if self.kernels == 'fused' and _float32_on_cpu(self.gamma):
            # An extension operator's backward always overwrites its input gradients (MXNet
            # does not pass it the write/add request): behind identity copies MXNet itself
            # applies grad_req='add' (gradient accumulation) and sums over several uses.
            x, gamma, beta = F.identity(x), F.identity(gamma), F.identity(beta)
            return F.gluonbert_layer_norm(x, gamma, beta, eps=self._epsilon)
        return F.LayerNorm(x, gamma, beta, axis=-1, eps=self._epsilon)

    def __repr__(self):
        return (f'{self.__class__.__name__}(units={self.gamma.shape[0]}, eps={self._epsilon}, '
                f'kernels={self.kernels!r})')


def _float32_on_cpu(parameter):
    """Whether ``parameter`` is float32 and lives on CPU contexts only (where the fused
    operators exist)."""
    if np.dtype(parameter.dtype) != np.float32:
        return False
    try:
        contexts = parameter.list_ctx()
    except RuntimeError:  # not initialized: no context yet
        return False
    return bool(contexts) and all(ctx.device_type == 'cpu' for ctx in contexts)


class AddNorm(HybridBlock):
    """Residual connection followed by LayerNorm: ``LayerNorm(x + dropout(y))``.

    Parameters
    ----------
    units : int
    dropout : float, default 0.0
    epsilon : float, default 1e-12
    kernels : {'auto', 'fused', 'mxnet'}, default 'auto'
        Operators of the dropout and the LayerNorm.

    Inputs:
        - **x**: residual input, ``(..., U)``.
        - **y**: sub-layer output, same shape as ``x``.

    Outputs:
        - **out**: same shape as ``x``.
    """

    def __init__(self, *, units, dropout=0.0, epsilon=1e-12, kernels='auto', prefix=None,
                 params=None):
        super().__init__(prefix=prefix, params=params)
        with self.name_scope():
            self.dropout_layer = Dropout(rate=dropout, kernels=kernels)
            self.norm = LayerNorm(units=units, epsilon=epsilon, kernels=kernels)

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
    kernels : {'auto', 'fused', 'mxnet'}, default 'auto'
        Operators of the dropouts and LayerNorms.

    Inputs:
        - **x**: ``(B, L, U)`` ('NTC') or ``(L, B, U)`` ('TNC').
        - **valid_length**: ``(B,)`` or None.

    Outputs:
        - **out**: same shape as ``x``.
    """

    def __init__(self, *, units, hidden_size, num_heads, dropout=0.0, attention_dropout=None,
                 layer_norm_eps=1e-12, activation='gelu', causal=False, layout='NTC',
                 kernels='auto', prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if attention_dropout is None:
            attention_dropout = dropout
        with self.name_scope():
            self.attention = MultiHeadAttention(units=units, num_heads=num_heads,
                                                dropout=attention_dropout, causal=causal,
                                                layout=layout, kernels=kernels,
                                                prefix='attention_')
            self.attention_norm = AddNorm(units=units, dropout=dropout, epsilon=layer_norm_eps,
                                          kernels=kernels, prefix='attention_norm_')
            self.ffn = PositionWiseFFN(units=units, hidden_size=hidden_size,
                                       activation=activation, prefix='ffn_')
            self.ffn_norm = AddNorm(units=units, dropout=dropout, epsilon=layer_norm_eps,
                                    kernels=kernels, prefix='ffn_norm_')

    def hybrid_forward(self, F, x, valid_length=None):  # pylint: disable=arguments-differ
        attended, _ = self.attention(x, valid_length)
        x = self.attention_norm(x, attended)
        return self.ffn_norm(x, self.ffn(x))
