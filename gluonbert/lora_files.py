"""A LoRA adapter directory's files, checked: ``adapter.json`` read by one schema (every
field by type and range, the files record), and the fingerprint of the base weights an
adapter was trained on, so that an adapter is never applied to another base.

:mod:`gluonbert.lora` writes and loads adapters with these; nothing here builds a model.
"""
import hashlib
import os
import re

from ._io import check_format_version
from .config import PRESETS
from .model import TASK_MODELS
from .model_files import PretrainedError, read_files_record
from .pretrained import MINILM_NAME, ZOO_MODELS, manifest_config
from .schema import Fields, load_json

__all__ = ['ADAPTER_MANIFEST', 'ADAPTER_PARAMS', 'ADAPTER_FORMAT', 'ADAPTER_VERSION',
           'TARGETS', 'base_fingerprint', 'base_reference', 'read_adapter_manifest',
           'check_base_fingerprint', 'ADAPTER_REDO']

# Projections LoRA can adapt (gluonbert.lora maps each to the block type that owns it).
TARGETS = ('query', 'key', 'value', 'out_proj', 'ffn_1', 'ffn_2')

ADAPTER_MANIFEST = 'adapter.json'
ADAPTER_PARAMS = 'adapter.params'
ADAPTER_FORMAT = 'gluonbert-lora'
ADAPTER_VERSION = 2  # 2: the base's fingerprint, and a files record instead of params_sha1
ADAPTER_REDO = 'save the adapter again'
_SHA256 = re.compile(r'[0-9a-f]{64}')
_ADAPTER_FIELDS = ('format', 'version', 'base_model', 'base_fingerprint', 'config',
                   'model_class', 'rank', 'alpha', 'dropout', 'targets', 'num_classes',
                   'label_names', 'classifier', 'classifier_dropout', 'max_len', 'extra',
                   'files')


def base_fingerprint(params):
    """The sha256 (hex) of base weights ``params`` (``{name: Parameter}``, named as
    without LoRA): each parameter's name, dtype, shape and bytes, in name order.

    Computed from the parameters in memory, so it is the same whatever the base was
    loaded from ('minilm', a Hugging Face or a gluonbert directory).
    """
    digest = hashlib.sha256()
    for name in sorted(params):
        values = params[name].data().asnumpy()
        digest.update(f'{name}\0{values.dtype.str}\0{values.shape}\0'.encode('utf-8'))
        digest.update(values.tobytes())
    return digest.hexdigest()


def check_base_fingerprint(manifest, fingerprint, directory):
    """Refuse (one line) a base whose weights' ``fingerprint`` is not the one the adapter
    in ``directory`` records."""
    recorded = manifest['base_fingerprint']
    if recorded != fingerprint:
        raise PretrainedError(f'{directory}: made for another base model (fingerprint '
                              f'{recorded[:16]}, this base {fingerprint[:16]}); load it with '
                              f'the base it was trained on')


def base_reference(base_model, directory):
    """How the manifest names the base: a known name, or a path relative to the adapter."""
    if not isinstance(base_model, (str, os.PathLike)):
        raise TypeError(f'base_model must be a model name or directory, got '
                        f'{type(base_model).__name__}')
    base_model = os.fspath(base_model)
    if base_model in (MINILM_NAME,) + ZOO_MODELS:
        return base_model
    if os.path.isdir(base_model):
        # relative, so an output directory holding both can be moved as a whole
        return os.path.relpath(os.path.abspath(base_model), directory)
    if base_model in PRESETS:
        raise ValueError(f'base_model {base_model!r} is a preset with random weights that '
                         f'load_lora cannot rebuild; save the base with save_pretrained and '
                         f'pass its directory')
    raise ValueError(f'base_model must be {MINILM_NAME!r}, one of {", ".join(ZOO_MODELS)}, '
                     f'or a model directory; got {base_model!r}')


def _fraction(fields, key):
    """A number in [0, 1)."""
    value = fields.get(key, float, low=0.0, high=1.0)
    if value == 1.0:
        fields.fail(key, 'in [0, 1)', value)
    return value


def read_adapter_manifest(directory):
    """``(manifest, config)`` of an adapter directory: every field checked (type, range,
    the config by BERTConfig's checks, the files record); a one-line PretrainedError naming
    the file and the field otherwise."""
    path = os.path.join(directory, ADAPTER_MANIFEST)
    if not os.path.exists(path):
        raise PretrainedError(f'{directory} is not a LoRA adapter directory (no '
                              f'{ADAPTER_MANIFEST})')
    manifest = load_json(path, 'adapter manifest', PretrainedError)
    if manifest.get('format') != ADAPTER_FORMAT:
        raise PretrainedError(f'{path} is not a gluonbert LoRA adapter manifest (format '
                              f'{manifest.get("format")!r}, expected {ADAPTER_FORMAT!r})')
    check_format_version(manifest, path, ADAPTER_VERSION, 'adapter', ADAPTER_REDO,
                         PretrainedError)
    fields = Fields(manifest, path, 'adapter manifest', PretrainedError, ADAPTER_REDO)
    fields.only(_ADAPTER_FIELDS)
    fields.get('base_model', str, low=1)
    fingerprint = fields.get('base_fingerprint', str)
    if not _SHA256.fullmatch(fingerprint):
        fields.fail('base_fingerprint', 'a sha256 (64 lower-case hex digits)', fingerprint)
    config = manifest_config(fields)
    fields.get('model_class', str, choices=tuple(sorted(TASK_MODELS)))
    fields.get('rank', int, low=1, high=65536)
    if not fields.get('alpha', float) > 0:
        fields.fail('alpha', 'a number > 0', manifest['alpha'])
    _fraction(fields, 'dropout')
    targets = fields.get('targets', list, low=1)
    if not all(isinstance(t, str) and t in TARGETS for t in targets) or \
            len(set(targets)) != len(targets):
        fields.fail('targets', 'a list of distinct names from ' + ', '.join(TARGETS), targets)
    fields.get('num_classes', int, low=2)
    names = fields.get('label_names', list)
    if not all(isinstance(n, str) for n in names):
        fields.fail('label_names', 'a list of names', names)
    classifier = fields.object('classifier')
    _fraction(fields, 'classifier_dropout')
    max_len = fields.get('max_len', int, low=3)
    recorded = classifier.obj.get('max_len', max_len)  # checked with the info (task_info)
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded != max_len:
        fields.fail('max_len', f'classifier.max_len ({recorded})', max_len)
    fields.get('extra', dict)
    read_files_record(fields, (ADAPTER_PARAMS,))
    return manifest, config
