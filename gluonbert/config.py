"""BERT model configuration: one dataclass, JSON round trip, named presets.

Shape legend used throughout gluonbert::

    B  batch size            L  sequence length (tokens, [CLS] and [SEP] included)
    U  units (hidden width)  H  hidden_size of the position-wise FFN
    N  num_heads             D  U // N, width of one attention head
    V  vocab_size            M  number of masked positions per sequence
"""
import dataclasses
import json
import math

from ._io import write_text

__all__ = ['BERTConfig', 'PRESETS', 'ACTIVATIONS', 'KERNELS', 'ATTENTION_MASKS',
           'KERNEL_FIELDS', 'LIMITS']

# Activations the FFN understands. 'gelu' is the exact erf form used by BERT;
# 'gelu_tanh' is the tanh approximation (Hugging Face's gelu_new / gelu_pytorch_tanh).
ACTIVATIONS = ('gelu', 'gelu_tanh', 'relu', 'tanh', 'sigmoid', 'softrelu')
# Which operators compute LayerNorm and dropout on CPU in float32: gluonbert's fused ones
# (gluonbert.ops) or MXNet's. 'auto' is resolved when a model is built: fused if the
# library is built and loaded. Both compute the same function to float32 rounding, but
# the dropout masks come from different random streams.
KERNELS = ('auto', 'fused', 'mxnet')
# How attention masks padded keys (gluonbert.kernels): the same weights either way.
ATTENTION_MASKS = ('select', 'additive')
# The config fields that name implementations (gluonbert.kernels), not the function.
KERNEL_FIELDS = ('kernels', 'layer_norm_kernels', 'dropout_kernels', 'attention_kernels',
                 'attention_mask')
POSITION_EMBEDDINGS = ('learned', 'sinusoidal')
# The largest value of each size a config may hold: far above any published BERT, low
# enough that a damaged file (num_layers 30000) is refused before it is built.
LIMITS = {'vocab_size': 10_000_000, 'units': 65536, 'hidden_size': 262144, 'num_heads': 1024,
          'num_layers': 256, 'max_length': 1_000_000, 'type_vocab_size': 1024}


@dataclasses.dataclass
class BERTConfig:
    """Hyper-parameters of a BERT encoder.

    Parameters
    ----------
    vocab_size : int
        Number of WordPiece ids (V).
    units : int
        Hidden width of every layer (U).
    hidden_size : int
        Inner width of the position-wise feed-forward network (H).
    num_heads : int
        Attention heads (N); ``units`` must be divisible by it.
    num_layers : int
        Number of encoder blocks.
    max_length : int
        Longest sequence the position embedding covers.
    type_vocab_size : int
        Number of segment (token type) ids, 2 for sentence pairs.
    dropout : float
        Dropout on embeddings and on each sub-layer output.
    attention_dropout : float
        Dropout on the attention weights.
    layer_norm_eps : float
        Epsilon of every LayerNorm.
    activation : str
        FFN activation, one of ``ACTIVATIONS``.
    position_embedding : str
        ``'learned'`` (BERT) or ``'sinusoidal'`` (the original Transformer).
    kernels : str
        ``'fused'``, ``'mxnet'`` or ``'auto'`` (see ``KERNELS``); a built model's config
        holds the resolved choice, which saved models record.
    layer_norm_kernels, dropout_kernels, attention_kernels : str or None
        The same choice for one operation (:mod:`gluonbert.kernels`); None takes ``kernels``.
    attention_mask : str
        How attention masks padded keys: ``'select'`` or ``'additive'`` (``ATTENTION_MASKS``).
    """
    vocab_size: int = 30522
    units: int = 768
    hidden_size: int = 3072
    num_heads: int = 12
    num_layers: int = 12
    max_length: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    activation: str = 'gelu'
    position_embedding: str = 'learned'
    kernels: str = 'auto'
    layer_norm_kernels: str = None
    dropout_kernels: str = None
    attention_kernels: str = None
    attention_mask: str = 'select'

    def __post_init__(self):
        for name in ('vocab_size', 'units', 'hidden_size', 'num_heads', 'num_layers',
                     'max_length', 'type_vocab_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'BERTConfig.{name} must be a positive integer, got {value!r}')
            if value > LIMITS[name]:
                raise ValueError(f'BERTConfig.{name} must be at most {LIMITS[name]:,}, '
                                 f'got {value!r}')
        if self.units % self.num_heads:
            raise ValueError(f'BERTConfig.units ({self.units}) must be divisible by '
                             f'num_heads ({self.num_heads})')
        for name in ('dropout', 'attention_dropout', 'layer_norm_eps'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'BERTConfig.{name} must be a number, got {value!r}')
        for name in ('dropout', 'attention_dropout'):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f'BERTConfig.{name} must be in [0, 1), got {value!r}')
        if not (self.layer_norm_eps > 0 and math.isfinite(self.layer_norm_eps)):
            raise ValueError(f'BERTConfig.layer_norm_eps must be a finite number > 0, '
                             f'got {self.layer_norm_eps!r}')
        for name in ('activation', 'position_embedding', 'kernels', 'attention_mask'):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f'BERTConfig.{name} must be a string, '
                                 f'got {getattr(self, name)!r}')
        if self.activation not in ACTIVATIONS:
            raise ValueError(f'BERTConfig.activation must be one of {ACTIVATIONS}, '
                             f'got {self.activation!r}')
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f'BERTConfig.position_embedding must be one of '
                             f'{POSITION_EMBEDDINGS}, got {self.position_embedding!r}')
        if self.kernels not in KERNELS:
            raise ValueError(f'BERTConfig.kernels must be one of {KERNELS}, '
                             f'got {self.kernels!r}')
        for name in ('layer_norm_kernels', 'dropout_kernels', 'attention_kernels'):
            value = getattr(self, name)
            if value is not None and value not in KERNELS:
                raise ValueError(f'BERTConfig.{name} must be None or one of {KERNELS}, '
                                 f'got {value!r}')
        if self.attention_mask not in ATTENTION_MASKS:
            raise ValueError(f'BERTConfig.attention_mask must be one of {ATTENTION_MASKS}, '
                             f'got {self.attention_mask!r}')

    # ----------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, name, **overrides):
        """Config of a named preset (see ``PRESETS``), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f'unknown BERT preset {name!r}; known presets: '
                             f'{", ".join(sorted(PRESETS))}')
        return cls(**{**PRESETS[name], **overrides})

    # -------------------------------------------------------------------- JSON
    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Build from a dict; unknown keys are an error, missing keys take defaults."""
        if not isinstance(values, dict):
            raise ValueError(f'a BERTConfig must be an object, got {values!r}')
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown BERTConfig field(s): {", ".join(unknown)}')
        return cls(**values)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    def save(self, path):
        """Write the config as JSON, atomically (temporary file, then rename)."""
        write_text(path, self.to_json() + '\n')

    @classmethod
    def load(cls, path):
        with open(path, encoding='utf-8') as f:
            return cls.from_json(f.read())

    def architecture(self):
        """The config without the kernel choices (``KERNEL_FIELDS``): what decides the
        parameters and the function."""
        values = self.to_dict()
        for name in KERNEL_FIELDS:
            del values[name]
        return values

    def kernel_choices(self):
        """``{field: value}`` of the kernel choices (``KERNEL_FIELDS``)."""
        return {name: getattr(self, name) for name in KERNEL_FIELDS}

    @property
    def head_units(self):
        """Width of one attention head (D = U // N)."""
        return self.units // self.num_heads


PRESETS = {
    # BERT-base (Devlin et al. 2019): 109,482,240 parameters with the pooler.
    'bert_12_768_12': dict(vocab_size=30522, units=768, hidden_size=3072, num_heads=12,
                           num_layers=12, max_length=512, type_vocab_size=2,
                           layer_norm_eps=1e-12),
    # BERT-large.
    'bert_24_1024_16': dict(vocab_size=30522, units=1024, hidden_size=4096, num_heads=16,
                            num_layers=24, max_length=512, type_vocab_size=2,
                            layer_norm_eps=1e-12),
    # all-MiniLM-L6-v2 shape (the embedded default checkpoint).
    'minilm_6_384_12': dict(vocab_size=30522, units=384, hidden_size=1536, num_heads=12,
                            num_layers=6, max_length=512, type_vocab_size=2,
                            layer_norm_eps=1e-12),
    # For tests and smoke runs: seconds on a laptop CPU.
    'tiny': dict(vocab_size=99, units=32, hidden_size=64, num_heads=4, num_layers=2,
                 max_length=64, type_vocab_size=2, layer_norm_eps=1e-12),
}
