"""Weight interchange with GluonNLP 0.x BERT models."""
import re

import numpy as np
import mxnet as mx

from .config import BERTConfig
from .errors import ModelError
from .model import BERTForPretraining, BERTModel
from .params import named_parameters
from .schema import FLOAT_DTYPES

__all__ = ['from_gluonnlp', 'gluonnlp_model', 'assign_parameters']

# GluonNLP structural name -> gluonbert structural name (relative to the BERTModel).
_GLUONNLP_RULES = [
    (r'word_embed\.0\.weight', 'encoder.word_embed.weight'),
    (r'token_type_embed\.0\.weight', 'encoder.segment_embed.weight'),
    (r'encoder\.position_weight', 'encoder.position_embed.weight'),
    (r'encoder\.layer_norm\.(gamma|beta)', r'encoder.embed_norm.\1'),
    (r'encoder\.transformer_cells\.(\d+)\.attention_cell\.proj_(query|key|value)\.(weight|bias)',
     r'encoder.layers.\1.attention.\2.\3'),
    (r'encoder\.transformer_cells\.(\d+)\.proj\.(weight|bias)',
     r'encoder.layers.\1.attention.out_proj.\2'),
    (r'encoder\.transformer_cells\.(\d+)\.layer_norm\.(gamma|beta)',
     r'encoder.layers.\1.attention_norm.norm.\2'),
    (r'encoder\.transformer_cells\.(\d+)\.ffn\.(ffn_1|ffn_2)\.(weight|bias)',
     r'encoder.layers.\1.ffn.\2.\3'),
    (r'encoder\.transformer_cells\.(\d+)\.ffn\.layer_norm\.(gamma|beta)',
     r'encoder.layers.\1.ffn_norm.norm.\2'),
    (r'pooler\.(weight|bias)', r'pooler.\1'),
    # heads (destination relative to BERTForPretraining, marked with '^')
    (r'classifier\.(weight|bias)', r'^ns_classifier.dense.\1'),
    (r'decoder\.0\.(weight|bias)', r'^mlm_decoder.transform.\1'),
    (r'decoder\.2\.(gamma|beta)', r'^mlm_decoder.norm.\1'),
    (r'decoder\.3\.bias', r'^mlm_decoder.output_bias'),
]


def _map_name(name):
    for pattern, replacement in _GLUONNLP_RULES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def _dtype_name(value):
    """The dtype of a numpy array or NDArray as numpy names it ('bfloat16' for MXNet's)."""
    dtype = np.dtype(value.dtype)
    return 'bfloat16' if dtype.names == ('bfloat16',) else dtype.name


def _first_unusable(arrays):
    """``(name, why)`` of the first array (in name order) that is not floating point or
    holds NaN or an infinity; None when every one is usable."""
    for name in sorted(arrays):
        value = arrays[name]
        dtype = _dtype_name(value)
        if dtype not in FLOAT_DTYPES:
            return name, f'is {dtype}, not floating point'
        host = value.astype('float32').asnumpy() if dtype == 'bfloat16' else \
            value.asnumpy() if isinstance(value, mx.nd.NDArray) else value
        if not np.isfinite(host).all():
            return name, 'holds NaN or infinite values'
    return None


def assign_parameters(target, arrays, *, source='checkpoint', allow_missing=(), ctx=None,
                      source_names=None):
    """Copy ``{structural_name: array}`` into ``target``'s parameters, checking every key.

    Every target parameter must be given (unless listed in ``allow_missing``), every given
    array must be used, every shape must match, and every array must be floating point
    and finite (the one place every loader passes: Hugging Face and GluonNLP weights,
    model directories, adapters); otherwise a one-line ModelError (a ValueError) names
    ``source`` and the offending tensors. Without ``ctx`` the target's parameters must
    already be initialized. With ``ctx``, uninitialized ones take their arrays on ``ctx``
    directly, and those not given are initialized as their blocks ask: no random
    initialization of weights that are overwritten at once (MiniLM's 22.7M weights: 0.43 s).
    ``source_names`` (``{structural name: name in the source}``) names a refused tensor as
    its file does.
    """
    params = named_parameters(target)
    missing = [n for n in params if n not in arrays and n not in allow_missing]
    unused = [n for n in arrays if n not in params]
    mismatched = [f'{n}: {tuple(arrays[n].shape)} vs {params[n].shape}'
                  for n in arrays if n in params and tuple(arrays[n].shape) != params[n].shape]
    problems = []
    if missing:
        problems.append(f'missing from {source}: {", ".join(missing)}')
    if unused:
        problems.append(f'not used from {source}: {", ".join(unused)}')
    if mismatched:
        problems.append(f'shape mismatch ({source} vs model): {"; ".join(mismatched)}')
    if problems:
        raise ModelError('cannot load weights: ' + ' | '.join(problems))
    unusable = _first_unusable(arrays)
    if unusable:
        name = (source_names or {}).get(unusable[0], unusable[0])
        raise ModelError(f'{source}: tensor {name} {unusable[1]}; the weights are '
                         f'damaged (or not a model\'s), load them from a good copy')
    for name, value in arrays.items():
        param = params[name]
        if not isinstance(value, mx.nd.NDArray):
            value = mx.nd.array(value, dtype=param.dtype)
        # SLF001, why: Parameter has no public "is it initialised" and no public way to
        # initialise it with a given value (initialize() would draw random weights first)
        if ctx is not None and param._data is None:  # noqa: SLF001  (see above)
            param._load_init(value, ctx, cast_dtype=True)  # noqa: SLF001  (see above)
        else:
            param.set_data(value)
    if ctx is not None:
        for name, param in params.items():
            if name not in arrays and param._data is None:  # noqa: SLF001  (as above)
                param.initialize(ctx=ctx)


def _activation_name(ffn):
    act = ffn.activation
    kind = type(act).__name__
    if kind == 'GELU':
        # private: GluonNLP's GELU keeps its `approximate` setting in a private attribute only
        return 'gelu_tanh' if getattr(act, '_approximate', False) else 'gelu'
    if kind == 'Activation':
        return act._act_type  # noqa: SLF001  nn.Activation has no public getter
    raise ValueError(f'unsupported GluonNLP FFN activation {act!r}')


def gluonnlp_model(config, *, use_decoder=False, use_classifier=False):
    """An uninitialised ``gluonnlp.model.BERTModel`` of ``config``'s shape: the reference
    gluonbert is tested and benchmarked against (:func:`from_gluonnlp` converts it back).

    ``config.attention_dropout`` is not used: GluonNLP has one dropout rate.
    """
    import gluonnlp
    activation = {'gelu': 'gelu', 'gelu_tanh': 'approx_gelu'}.get(config.activation,
                                                                  config.activation)
    encoder = gluonnlp.model.BERTEncoder(
        num_layers=config.num_layers, units=config.units, hidden_size=config.hidden_size,
        max_length=config.max_length, num_heads=config.num_heads, dropout=config.dropout,
        output_attention=False, output_all_encodings=False,
        layer_norm_eps=config.layer_norm_eps, activation=activation)
    return gluonnlp.model.BERTModel(
        encoder, vocab_size=config.vocab_size, token_type_vocab_size=config.type_vocab_size,
        units=config.units, embed_size=config.units, use_pooler=True, use_decoder=use_decoder,
        use_classifier=use_classifier)


def _config_from_gluonnlp(nlp_model, arrays):
    encoder = nlp_model.encoder
    cells = list(encoder.transformer_cells)
    if not cells:
        raise ValueError('the GluonNLP model has no transformer cells')
    cell = cells[0]
    # the shapes come from the weights; SLF001, why: GluonNLP keeps the other settings its
    # BERTEncoder was built with in private attributes only
    max_length, units = arrays['encoder.position_weight'].shape
    return BERTConfig(
        vocab_size=arrays['word_embed.0.weight'].shape[0],
        units=units,
        hidden_size=arrays['encoder.transformer_cells.0.ffn.ffn_1.weight'].shape[0],
        num_heads=cell.attention_cell._num_heads,  # noqa: SLF001  (see above)
        num_layers=len(cells),
        max_length=max_length,
        type_vocab_size=arrays['token_type_embed.0.weight'].shape[0],
        dropout=encoder._dropout,  # noqa: SLF001  (see above)
        attention_dropout=encoder._dropout,  # noqa: SLF001  (see above)
        layer_norm_eps=encoder._layer_norm_eps,  # noqa: SLF001  (see above)
        activation=_activation_name(cell.ffn))


def _finish_deferred_init(nlp_model):
    """Run one tiny forward so deferred parameter shapes become known."""
    ctx = list(nlp_model.collect_params().values())[0].list_ctx()[0]
    words = mx.nd.zeros((1, 2), ctx=ctx)
    args = [words, words, mx.nd.array([2], ctx=ctx)]
    if hasattr(nlp_model, 'decoder'):  # built exactly when use_decoder=True
        args.append(mx.nd.zeros((1, 1), ctx=ctx))
    nlp_model(*args)


def from_gluonnlp(nlp_model, *, ctx=None, with_heads=None):
    """Convert a ``gluonnlp.model.BERTModel`` into a gluonbert model with the same weights.

    Parameters
    ----------
    nlp_model : gluonnlp.model.BERTModel
        Initialized (e.g. from ``gluonnlp.model.get_model('bert_12_768_12', ...)``).
        It must have token-type embeddings and a pooler.
    ctx : Context or list of Context, optional
        Where the new model lives; defaults to the source model's context.
    with_heads : bool or None
        True returns a :class:`BERTForPretraining` with the source's MLM decoder and NSP
        classifier weights (fresh initialisation for a head the source lacks); False returns
        a :class:`BERTModel` and ignores the heads; None (default) means True exactly when
        the source has both heads.

    Returns
    -------
    BERTModel or BERTForPretraining
        Every source parameter is used and every target parameter is set, shapes checked.
    """
    try:
        import gluonnlp
    except ImportError as err:
        raise ImportError('from_gluonnlp needs gluonnlp==0.10.0') from err
    if not isinstance(nlp_model, gluonnlp.model.BERTModel) or \
            type(nlp_model).__name__ != 'BERTModel':
        raise TypeError(f'expected a gluonnlp.model.BERTModel, got {type(nlp_model).__name__}')
    # GluonNLP's BERTModel has these two blocks exactly when built with use_token_type_embed
    # and use_pooler
    if not hasattr(nlp_model, 'token_type_embed') or not hasattr(nlp_model, 'pooler'):
        raise ValueError('the GluonNLP model must have token type embeddings and a pooler '
                         '(use_token_type_embed=True, use_pooler=True)')
    if nlp_model.encoder._output_all_encodings:  # noqa: SLF001  private only, as above
        raise ValueError('convert a model built with output_all_encodings=False')
    # SLF001, why: the structural names save_parameters writes, every shared parameter under
    # each of its names (named_parameters keeps one name: the tied decoder weight is needed)
    source = nlp_model._collect_params_with_prefix()  # noqa: SLF001  (see above)
    if any(p.shape is None or 0 in p.shape for p in source.values()):
        _finish_deferred_init(nlp_model)
    arrays = {name: p.data().copyto(mx.cpu()) for name, p in source.items()}
    src_ctx = list(source.values())[0].list_ctx()
    ctx = src_ctx if ctx is None else ctx

    has_decoder = any(n.startswith('decoder.') for n in arrays)
    has_classifier = any(n.startswith('classifier.') for n in arrays)
    if with_heads is None:
        with_heads = has_decoder and has_classifier
    if has_decoder:
        tied = source['decoder.3.weight'] is source['word_embed.0.weight']
        if not tied:
            raise ValueError('the GluonNLP MLM decoder output weight is not tied to the word '
                             'embedding; only tied decoders are supported')
        del arrays['decoder.3.weight']

    config = _config_from_gluonnlp(nlp_model, arrays)
    mapped, ignored = {}, []
    for name, value in arrays.items():
        target = _map_name(name)
        if target is None:
            raise ValueError(f'unexpected GluonNLP parameter {name!r}: no mapping')
        if target.startswith('^'):
            if with_heads:
                mapped[target[1:]] = value
            else:
                ignored.append(name)
        else:
            mapped[('bert.' if with_heads else '') + target] = value

    bert = BERTModel(config)
    model = BERTForPretraining(bert=bert) if with_heads else bert
    model.initialize(ctx=ctx)
    allow_missing = ()
    if with_heads:
        head_names = [n for n in named_parameters(model)
                      if n.startswith(('mlm_decoder.', 'ns_classifier.'))]
        allow_missing = [n for n in head_names if n not in mapped]
    assign_parameters(model, mapped, source='the GluonNLP model', allow_missing=allow_missing)
    return model
