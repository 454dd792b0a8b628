"""Pre-training heads: masked-language-model decoder and next-sentence classifier."""
from mxnet.gluon import HybridBlock, nn

from .layers import WEIGHT_INIT, Activation, LayerNorm

__all__ = ['MLMDecoder', 'NSClassifier', 'gather_positions']


def gather_positions(F, sequence, positions):
    """Pick ``sequence[b, positions[b, m]]`` for every b, m.

    sequence: ``(B, L, U)``; positions: ``(B, M)`` integer-valued, each in ``[0, L)``.
    Returns ``(B, M, U)``.
    """
    positions = F.cast(positions, dtype='int32')
    batch_index = F.contrib.arange_like(positions, axis=0).reshape((-1, 1))      # (B, 1)
    batch_index = F.cast(F.broadcast_like(batch_index, positions), dtype='int32')  # (B, M)
    return F.gather_nd(sequence, F.stack(batch_index, positions, axis=0))


class MLMDecoder(HybridBlock):
    """Masked-language-model head: gather, transform, project onto the vocabulary.

    ``logits = LayerNorm(act(Dense(h))) @ W_out^T + b_out`` where ``h`` are the encodings
    at the masked positions. ``W_out`` can be tied to the word embedding (as in BERT).

    Parameters
    ----------
    vocab_size : int
    units : int
    activation : str, default 'gelu'
    layer_norm_eps : float, default 1e-12
    embedding_weight : mxnet.gluon.Parameter or None
        The ``(V, U)`` word-embedding parameter to tie the output projection to.
        None gives the decoder its own ``output_weight``.

    Inputs:
        - **sequence**: ``(B, L, U)`` encoder output.
        - **masked_positions**: ``(B, M)`` positions to predict, each in ``[0, L)``.
          Pad unused slots with any valid position (e.g. 0) and give them weight 0 in the loss.

    Outputs:
        - **logits**: ``(B, M, V)``.
    """

    def __init__(self, *, vocab_size, units, activation='gelu', layer_norm_eps=1e-12,
                 embedding_weight=None, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self._vocab_size = vocab_size
        with self.name_scope():
            self.transform = nn.Dense(units, in_units=units, flatten=False,
                                      weight_initializer=WEIGHT_INIT, prefix='transform_')
            self.activation = Activation(activation)
            self.norm = LayerNorm(units=units, epsilon=layer_norm_eps)
            if embedding_weight is None:
                self.output_weight = self.params.get('output_weight', shape=(vocab_size, units),
                                                     init=WEIGHT_INIT)
            else:
                if embedding_weight.shape != (vocab_size, units):
                    raise ValueError(f'tied embedding weight has shape {embedding_weight.shape}, '
                                     f'expected {(vocab_size, units)}')
                # Registering the same Parameter object ties the weights.
                self.output_weight = embedding_weight
            self.output_bias = self.params.get('output_bias', shape=(vocab_size,), init='zeros')

    @property
    def tied(self):
        return not self.output_weight.name.startswith(self.prefix)

    def hybrid_forward(self, F, sequence, masked_positions, output_weight, output_bias):
        # pylint: disable=arguments-differ
        encoded = gather_positions(F, sequence, masked_positions)              # (B, M, U)
        hidden = self.norm(self.activation(self.transform(encoded)))
        return F.FullyConnected(hidden, output_weight, output_bias,
                                num_hidden=self._vocab_size, flatten=False)     # (B, M, V)


class NSClassifier(HybridBlock):
    """Next-sentence-prediction head: 2-way logits from the pooled [CLS] vector.

    Label 0 means "sentence B follows sentence A" (IsNext) and 1 means "B is a random
    sentence" (NotNext), the convention of Google's checkpoints, GluonNLP and Hugging Face,
    so that converted NSP weights keep their meaning.

    Parameters
    ----------
    units : int

    Inputs:
        - **pooled**: ``(B, U)`` pooler output.

    Outputs:
        - **logits**: ``(B, 2)``.
    """

    def __init__(self, *, units, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        with self.name_scope():
            self.dense = nn.Dense(2, in_units=units, weight_initializer=WEIGHT_INIT,
                                  prefix='dense_')

    def hybrid_forward(self, F, pooled):  # pylint: disable=arguments-differ
        return self.dense(pooled)
