"""Checks of a model directory's files before anything is built from them: the ``files``
record of a manifest (size and sha1 of every file a model depends on), the dtypes of a
tensor header, and a config's sizes against the tensors it is meant to describe.

Shared by :mod:`gluonbert.pretrained` (model directories), :mod:`gluonbert.hf_checkpoint`
(Hugging Face directories) and :mod:`gluonbert.lora_files` (adapters). Nothing here
imports MXNet: the checks read headers and small JSON records only.
"""
import json
import os
import re

from ._io import file_sha1
from .errors import ModelError
from .schema import FLOAT_DTYPES

__all__ = ['PretrainedError', 'read_files_record', 'verify_files',
           'check_float_header', 'check_config_against_tensors', 'BERT_SIZE_FIELDS']

_SHA1 = re.compile(r'[0-9a-f]{40}')


class PretrainedError(ModelError):
    """A model could not be loaded or saved; the message says what to do."""


# ------------------------------------------------------------------------ files record
def read_files_record(fields, required):
    """The ``files`` record of a manifest (``fields``: a :class:`~gluonbert.schema.Fields`
    of it), checked: plain file names, ``bytes`` a non-negative integer, ``sha1`` 40 hex
    digits, and every name in ``required`` present."""
    files = fields.object('files')
    for name in files.obj:
        if not name or name in ('.', '..') or '/' in name or '\\' in name:
            files.fail(json.dumps(name), 'a plain file name of the directory', shown=False)
        entry = files.object(name)
        entry.only(('bytes', 'sha1'))
        entry.get('bytes', int, low=0)
        sha1 = entry.get('sha1', str)
        if not _SHA1.fullmatch(sha1):
            entry.fail('sha1', 'a sha1 (40 lower-case hex digits)', sha1)
    for name in required:
        if name not in files.obj:
            files.fail(name, 'present (the model needs that file)', shown=False)
    return files.obj


def verify_files(directory, record, redo, names=None):
    """Raise a one-line PretrainedError unless each file of ``record`` (those in ``names``,
    default all) exists in ``directory`` with its recorded size and sha1. Run before any
    reader sees the files: MXNet's can crash on a damaged one."""
    for name in sorted(record if names is None else names):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise PretrainedError(f'{path} is missing')
        size, expected = os.path.getsize(path), record[name]
        if size != expected['bytes'] or file_sha1(path) != expected['sha1']:
            raise PretrainedError(f'{path} is corrupt or truncated ({size} bytes, expected '
                                  f'{expected["bytes"]}; checksum mismatch); {redo}')


# ---------------------------------------------------------------------- tensor headers
def check_float_header(header, path, allowed=()):
    """Refuse a tensor of ``header`` (``{name: (dtype, shape)}``) whose dtype is not
    floating point, except the names in ``allowed`` (integer buffers such as position
    ids)."""
    for name, (dtype, _) in header.items():
        if dtype not in FLOAT_DTYPES and name not in allowed:
            raise PretrainedError(f'{path}: tensor {name} is {dtype}, not floating point '
                                  f'({", ".join(FLOAT_DTYPES)}); the file is not a model\'s '
                                  f'weights')


# BERTConfig field -> (tensor name under the encoder, axis) that shows its value
_SIZE_EVIDENCE = {
    'vocab_size': ('encoder.word_embed.weight', 0),
    'units': ('encoder.word_embed.weight', 1),
    'type_vocab_size': ('encoder.segment_embed.weight', 0),
    'max_length': ('encoder.position_embed.weight', 0),
    'hidden_size': ('encoder.layers.0.ffn.ffn_1.weight', 0),
}
BERT_SIZE_FIELDS = tuple(_SIZE_EVIDENCE) + ('num_layers',)
_LAYER = re.compile(r'encoder\.layers\.(\d+)\.')


def check_config_against_tensors(config, shapes, config_path, tensors_path, field_names,
                                 tensor_names=None):
    """Raise a one-line PretrainedError where ``config`` (a BERTConfig) disagrees with the
    tensor ``shapes`` (``{gluonbert structural name: shape}``, BERT's names possibly under
    a prefix such as ``bert.``): vocabulary, width, positions, segments, FFN width and the
    number of layers. ``field_names`` maps BERTConfig's field names to the names the file
    at ``config_path`` uses, ``tensor_names`` (optional) the structural names to the
    file's tensor names. Run before the model is built, so that a wrong config costs
    nothing."""
    anchor = next((n for n in shapes if n.endswith('encoder.word_embed.weight')), None)
    if anchor is None:
        raise PretrainedError(f'{tensors_path}: no word embedding (encoder.word_embed.weight, '
                              f'or embeddings.word_embeddings.weight in a Hugging Face file); '
                              f'not a BERT model\'s weights')
    prefix = anchor[:-len('encoder.word_embed.weight')]

    def disagree(field, tensors_value, evidence):
        raise PretrainedError(f'{config_path}: {field_names[field]} is '
                              f'{getattr(config, field)} but the tensors in {tensors_path} '
                              f'have {tensors_value} ({evidence}); the config does not '
                              f'describe these weights')
    for field, (name, axis) in _SIZE_EVIDENCE.items():
        shape = shapes.get(prefix + name)
        if shape is not None and len(shape) > axis and shape[axis] != getattr(config, field):
            shown = (tensor_names or {}).get(prefix + name, prefix + name)
            disagree(field, shape[axis], f'{shown} is {"x".join(map(str, shape))}')
    layers = {int(m.group(1)) for n in shapes
              for m in [_LAYER.match(n[len(prefix):])] if n.startswith(prefix) and m}
    if len(layers) != config.num_layers:
        seen = f'layers {min(layers)}..{max(layers)}' if layers else 'no encoder layer'
        disagree('num_layers', f'{len(layers)} layers', seen)
    if layers and max(layers) != len(layers) - 1:
        raise PretrainedError(f'{tensors_path}: the encoder layers are not numbered 0..'
                              f'{len(layers) - 1} (the highest is {max(layers)})')
