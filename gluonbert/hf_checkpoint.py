"""Hugging Face BERT directories (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, ``vocab.txt``, optionally ``tokenizer_config.json``), read with
every file checked before a model is built: the config's fields by type and range, its
sizes against the tensors' shapes in the safetensors header (read without loading a
tensor), the tensors' dtypes, the vocabulary against the embedding.

:func:`load_hf_checkpoint` reads the encoder (the embedded MiniLM is such a directory);
config.json's ``architectures`` (:func:`hf_architecture`) says which task head the
tensors hold besides (:func:`head_tensors`): :func:`gluonbert.load_pretrained` reads a
``BertForSequenceClassification`` as a classifier (:mod:`gluonbert.hf_classifier`), and
the encoder of the others, their heads left out.
"""
import os
import re

import numpy as np
import mxnet as mx

from .config import BERTConfig, LIMITS
from .convert import assign_parameters
from .model import BERTForPretraining, BERTModel
from .model_files import (PretrainedError, check_config_against_tensors,
                          check_float_header)
from .params import named_parameters
from .schema import Fields, load_json, safetensors_header
from .tokenizer import BERTTokenizer, Vocab

__all__ = ['load_hf_checkpoint', 'read_hf_config', 'read_hf_vocabulary', 'HF_FIELDS',
           'hf_architecture', 'head_tensors', 'check_hf_header', 'read_hf_weights',
           'SEQUENCE_CLASSIFIER']

_HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
                   'gelu_fast': 'gelu_tanh', 'relu': 'relu', 'tanh': 'tanh'}

# BERTConfig field -> the config.json field that holds it
HF_FIELDS = {'vocab_size': 'vocab_size', 'units': 'hidden_size',
             'hidden_size': 'intermediate_size', 'num_heads': 'num_attention_heads',
             'num_layers': 'num_hidden_layers', 'max_length': 'max_position_embeddings',
             'type_vocab_size': 'type_vocab_size'}
_OPTIONAL_SIZES = {'type_vocab_size': 2}
_HINT = 'fix config.json, or use the one the checkpoint came with'

_HF_RULES = [
    (r'embeddings\.word_embeddings\.weight', 'encoder.word_embed.weight'),
    (r'embeddings\.position_embeddings\.weight', 'encoder.position_embed.weight'),
    (r'embeddings\.token_type_embeddings\.weight', 'encoder.segment_embed.weight'),
    (r'embeddings\.LayerNorm\.(gamma|beta)', r'encoder.embed_norm.\1'),
    (r'encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)',
     r'encoder.layers.\1.attention.\2.\3'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)',
     r'encoder.layers.\1.attention.out_proj.\2'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(gamma|beta)',
     r'encoder.layers.\1.attention_norm.norm.\2'),
    (r'encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)',
     r'encoder.layers.\1.ffn.ffn_1.\2'),
    (r'encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)', r'encoder.layers.\1.ffn.ffn_2.\2'),
    (r'encoder\.layer\.(\d+)\.output\.LayerNorm\.(gamma|beta)',
     r'encoder.layers.\1.ffn_norm.norm.\2'),
    (r'pooler\.dense\.(weight|bias)', r'pooler.\1'),
    # pre-training heads, relative to BERTForPretraining (marked '^')
    (r'cls\.predictions\.transform\.dense\.(weight|bias)', r'^mlm_decoder.transform.\1'),
    (r'cls\.predictions\.transform\.LayerNorm\.(gamma|beta)', r'^mlm_decoder.norm.\1'),
    (r'cls\.predictions\.bias', '^mlm_decoder.output_bias'),
    (r'cls\.seq_relationship\.(weight|bias)', r'^ns_classifier.dense.\1'),
]
# tensors that carry no parameter of their own (checked or dropped when loading)
_BUFFERS = ('embeddings.position_ids', 'cls.predictions.decoder.weight',
            'cls.predictions.decoder.bias')


def _normalise_hf_name(name):
    """Strip a 'bert.' prefix and map LayerNorm weight/bias to gamma/beta."""
    if name.startswith('bert.'):
        name = name[len('bert.'):]
    name = re.sub(r'LayerNorm\.weight$', 'LayerNorm.gamma', name)
    return re.sub(r'LayerNorm\.bias$', 'LayerNorm.beta', name)


def _target_name(name):
    """The gluonbert structural name of a normalised HF tensor name (heads marked '^'),
    or None."""
    for pattern, replacement in _HF_RULES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


# --------------------------------------------------------------------------- config.json
def read_hf_config(path):
    """The BERTConfig of a Hugging Face ``config.json``, every field it uses checked (type,
    range, ``hidden_size`` divisible by ``num_attention_heads``); fields it does not use
    are ignored. A one-line PretrainedError naming the file and the field otherwise."""
    fields = Fields(load_json(path, 'config', PretrainedError), path, 'config',
                    PretrainedError, _HINT)
    for key, supported in (('model_type', ('bert',)),
                           ('position_embedding_type', ('absolute',)),
                           ('hidden_act', tuple(_HF_ACTIVATIONS))):
        value = fields.get(key, str, default=supported[0])
        if value not in supported:
            raise PretrainedError(f'{path}: {key} {value!r} is not supported; supported: '
                                  f'{", ".join(supported)} (gluonbert loads BERT checkpoints '
                                  f'with absolute position embeddings)')
    sizes = {}
    for field, key in HF_FIELDS.items():
        sizes[field] = fields.get(key, int, low=1, high=LIMITS[field],
                                  default=_OPTIONAL_SIZES.get(field, ...))
    if sizes['units'] % sizes['num_heads']:
        fields.fail('hidden_size', f'divisible by num_attention_heads '
                    f'({sizes["num_heads"]})', sizes['units'])
    rates = {}
    for field, key in (('dropout', 'hidden_dropout_prob'),
                       ('attention_dropout', 'attention_probs_dropout_prob')):
        rates[field] = fields.get(key, float, default=0.1, low=0.0, high=1.0)
        if rates[field] == 1.0:
            fields.fail(key, 'in [0, 1)', rates[field])
    eps = fields.get('layer_norm_eps', float, default=1e-12, high=1.0)
    if not eps > 0:
        fields.fail('layer_norm_eps', 'a number > 0', eps)
    return BERTConfig(**sizes, **rates, layer_norm_eps=eps,
                      activation=_HF_ACTIVATIONS[fields.get('hidden_act', str,
                                                            default='gelu')])


def read_hf_vocabulary(directory, config):
    """``(vocab, tokenizer)`` of a Hugging Face directory whose config is ``config``:
    vocab.txt (one line per embedding row) and tokenizer_config.json, both checked."""
    vocab_path = os.path.join(directory, 'vocab.txt')
    vocab = Vocab.from_file(vocab_path)
    if len(vocab) != config.vocab_size:
        raise PretrainedError(f'{vocab_path}: {len(vocab):,} tokens, but '
                              f'{os.path.join(directory, "config.json")} has vocab_size '
                              f'{config.vocab_size:,}; the vocabulary is not the model\'s')
    return vocab, BERTTokenizer(vocab, **_hf_tokenizer_options(directory, vocab))


def _hf_tokenizer_options(directory, vocab):
    """Lower-casing (and accent stripping) from tokenizer_config.json, else from the vocab;
    the file's other fields are not used and not checked."""
    path = os.path.join(directory, 'tokenizer_config.json')
    fields = Fields({}, path, 'tokenizer settings', PretrainedError)
    if os.path.exists(path):
        fields = Fields(load_json(path, 'tokenizer settings', PretrainedError), path,
                        'tokenizer settings', PretrainedError)
    # an uncased vocabulary has no capitalised whole words
    cased = any(t[:1].isupper() for t in vocab.idx_to_token[1000:3000])
    options = {'lower': fields.get('do_lower_case', bool, default=not cased)}
    strip_accents = fields.get('strip_accents', bool, default=None, nullable=True)
    if strip_accents is not None:
        options['strip_accents'] = strip_accents
    return options


# ------------------------------------------------------------------------ architectures
SEQUENCE_CLASSIFIER = 'BertForSequenceClassification'
# Hugging Face's head tensor -> its name in a gluonbert BERTClassifier (dropout, then Dense)
_CLASSIFIER_HEAD = {'classifier.weight': 'classifier.1.weight',
                    'classifier.bias': 'classifier.1.bias'}
# the heads of the BERT architectures gluonbert does not build: their encoder is read
_OTHER_HEADS = {'BertForTokenClassification': tuple(_CLASSIFIER_HEAD),
                'BertForMultipleChoice': tuple(_CLASSIFIER_HEAD),
                'BertForQuestionAnswering': ('qa_outputs.weight', 'qa_outputs.bias')}


def hf_architecture(config_path):
    """The architecture config.json names (the first of ``architectures``; None where it
    names none), checked: a list of non-empty strings."""
    fields = Fields(load_json(config_path, 'config', PretrainedError), config_path,
                    'config', PretrainedError, _HINT)
    names = fields.get('architectures', list, default=None, nullable=True)
    if names and not all(isinstance(n, str) and n for n in names):
        fields.fail('architectures', 'a list of architecture names', names)
    return names[0] if names else None


def head_tensors(architecture):
    """``{HF head tensor name: its name in gluonbert's task model}`` of ``architecture``:
    a sentence classifier's ``classifier.*``; the tensor names alone (the values None)
    for the heads gluonbert leaves out; {} for others (an encoder, pre-training heads)."""
    if architecture == SEQUENCE_CLASSIFIER:
        return dict(_CLASSIFIER_HEAD)
    return dict.fromkeys(_OTHER_HEADS.get(architecture, ()))


# ------------------------------------------------------------------------------ tensors
def _tensor_header(directory):
    """``(path, {HF name: shape})`` of the checkpoint's tensors, for the checks before
    anything is loaded: dtypes from the safetensors header (a PyTorch pickle has no header:
    its tensors are checked when they are assigned)."""
    path = os.path.join(directory, 'model.safetensors')
    if os.path.exists(path):
        header = safetensors_header(path, PretrainedError)
        check_float_header(header, path, allowed=('embeddings.position_ids',
                                                  'bert.embeddings.position_ids'))
        return path, {name: shape for name, (_, shape) in header.items()}
    torch_path = os.path.join(directory, 'pytorch_model.bin')
    if os.path.exists(torch_path):
        return torch_path, None
    raise PretrainedError(f'{directory} has neither model.safetensors nor pytorch_model.bin')


def _read_hf_tensors(path):
    """``{HF name: numpy array}`` of a checkpoint (floats as float32, other dtypes kept,
    for :func:`~gluonbert.convert.assign_parameters` to refuse)."""
    if path.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            tensors = load_file(path)
        except SafetensorError as err:
            raise PretrainedError(f'cannot read {path}: {err}') from err
    else:
        try:
            import torch
        except ImportError as err:
            raise PretrainedError(f'{path} is a PyTorch pickle and torch is not installed; '
                                  f'convert it to model.safetensors or install torch') from err
        state = torch.load(path, map_location='cpu', weights_only=True)
        tensors = {k: (v.float() if v.is_floating_point() else v).numpy()
                   for k, v in state.items()}
    return {name: np.asarray(t, dtype=np.float32) if t.dtype.kind == 'f' else t
            for name, t in tensors.items()}


def _mapped_names(names, tensors_path, with_heads, heads=None):
    """``{normalised HF name: gluonbert name or None (dropped)}`` of ``names``; unknown
    names are a one-line error. ``heads`` (:func:`head_tensors`) maps the architecture's
    head tensors to their names in the task model (the encoder's then under ``bert.``), or
    to None where the head is left out."""
    heads = heads or {}
    nested = with_heads or any(heads.values())
    mapping, unknown = {}, []
    for name in names:
        normalised = _normalise_hf_name(name)
        if normalised in _BUFFERS:
            continue
        if normalised in heads:
            mapping[normalised] = heads[normalised]
            continue
        target = _target_name(normalised)
        if target is None:
            unknown.append(name)
        elif target.startswith('^'):
            mapping[normalised] = target[1:] if with_heads else None
        else:
            mapping[normalised] = ('bert.' if nested else '') + target
    if unknown:
        head = ('; a classifier head, which config.json\'s architectures must name '
                '(BertForSequenceClassification)'
                if any(_normalise_hf_name(n) in _CLASSIFIER_HEAD for n in unknown) else '')
        raise PretrainedError(f'{tensors_path}: unexpected tensors (no BERT parameter has '
                              f'their names): {", ".join(unknown)}{head}')
    return mapping


def _buffers_checked(tensors, tensors_path):
    """Check and drop the tensors that carry no parameters (position ids, the tied MLM
    decoder weight); the decoder bias becomes the MLM output bias if that is missing."""
    position_ids = tensors.pop('embeddings.position_ids', None)
    if position_ids is not None and not np.array_equal(
            position_ids.reshape(-1), np.arange(position_ids.size)):
        raise PretrainedError(f'{tensors_path}: embeddings.position_ids is not 0..n-1; '
                              f'unsupported checkpoint')
    decoder_weight = tensors.pop('cls.predictions.decoder.weight', None)
    if decoder_weight is not None and not np.array_equal(
            decoder_weight, tensors.get('embeddings.word_embeddings.weight'), equal_nan=True):
        raise PretrainedError(f'{tensors_path}: the MLM decoder weight is not tied to the '
                              f'word embedding; untied decoders are not supported')
    decoder_bias = tensors.pop('cls.predictions.decoder.bias', None)
    if decoder_bias is not None and 'cls.predictions.bias' not in tensors:
        tensors['cls.predictions.bias'] = decoder_bias
    return tensors


def check_hf_header(directory, config, heads=None):
    """``(tensors path, {HF name: shape} or None)`` of a Hugging Face directory whose
    config.json gave ``config``: the tensors' dtypes, and the config's sizes against their
    shapes, checked from the safetensors header before anything is loaded (a PyTorch
    pickle, without a header, is checked by :func:`read_hf_weights`). ``heads``: as for
    :func:`read_hf_weights`."""
    tensors_path, shapes = _tensor_header(directory)
    if shapes is not None:
        mapping = _mapped_names(shapes, tensors_path, with_heads=False, heads=heads)
        targets = {n: mapping.get(_normalise_hf_name(n)) for n in shapes}
        check_config_against_tensors(
            config, {t: shapes[n] for n, t in targets.items() if t}, _config_path(directory),
            tensors_path, HF_FIELDS, {t: n for n, t in targets.items() if t})
    return tensors_path, shapes


def read_hf_weights(tensors_path, config, *, with_heads=False, heads=None, checked=True):
    """``(arrays, hf_names)``: the tensors of ``tensors_path`` as ``{gluonbert name:
    numpy array}`` (buffers checked and dropped; pre-training heads kept only
    ``with_heads``; an architecture's ``heads`` (:func:`head_tensors`) named as it says,
    or left out), and ``{gluonbert name: HF name}`` for messages. ``checked``: the config
    was checked against the header already (else, for a PyTorch pickle, now)."""
    tensors = _buffers_checked({_normalise_hf_name(k): v
                                for k, v in _read_hf_tensors(tensors_path).items()},
                               tensors_path)
    mapping = _mapped_names(tensors, tensors_path, with_heads, heads=heads)
    mapped = {mapping[name]: value for name, value in tensors.items() if mapping[name]}
    hf_names = {target: name for name, target in mapping.items() if target}
    if not checked:  # a PyTorch pickle: the same checks, now that its shapes are known
        check_config_against_tensors(config, {n: v.shape for n, v in mapped.items()},
                                     _config_path(os.path.dirname(tensors_path)),
                                     tensors_path, HF_FIELDS, hf_names)
    return mapped, hf_names


def _config_path(directory):
    return os.path.join(directory, 'config.json')


def load_hf_checkpoint(directory, *, ctx=None, with_heads=False):
    """Load the encoder of a Hugging Face BERT directory (config.json, model.safetensors,
    vocab.txt): a :class:`BERTModel`, or with ``with_heads`` a :class:`BERTForPretraining`.

    Before anything is built: config.json is checked field by field, its sizes against the
    tensors' shapes (from the safetensors header), the tensors' dtypes, and vocab.txt
    against the vocabulary size. Then every tensor is mapped and used (or, for
    pre-training heads with ``with_heads=False`` and the task heads of the architectures
    in :func:`head_tensors`, deliberately dropped), every model parameter is set, shapes
    are checked, and non-finite weights are refused. (A ``BertForSequenceClassification``
    directory as a classifier: :func:`gluonbert.hf_classifier.load_hf_classifier`.)
    """
    config_path = _config_path(directory)
    config = read_hf_config(config_path)
    heads = dict.fromkeys(head_tensors(hf_architecture(config_path)))  # left out
    tensors_path, shapes = check_hf_header(directory, config, heads)
    vocab, tokenizer = read_hf_vocabulary(directory, config)
    mapped, hf_names = read_hf_weights(tensors_path, config, with_heads=with_heads,
                                       heads=heads, checked=shapes is not None)
    bert = BERTModel(config)
    model = BERTForPretraining(bert=bert) if with_heads else bert
    allow_missing = [n for n in named_parameters(model)
                     if n.startswith(('mlm_decoder.', 'ns_classifier.')) and n not in mapped]
    assign_parameters(model, mapped, source=tensors_path, allow_missing=allow_missing,
                      ctx=mx.cpu() if ctx is None else ctx, source_names=hf_names)
    return model, vocab, tokenizer
