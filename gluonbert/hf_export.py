"""``gluonbert-export --format hf``: a classifier as a Hugging Face BERT directory.

The directory loads as it is with ``transformers``::

    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    model = AutoModelForSequenceClassification.from_pretrained(DIR)
    tokenizer = AutoTokenizer.from_pretrained(DIR)
    pipeline('text-classification', model=DIR)('a wonderful film')

It holds ``config.json`` (``BertForSequenceClassification``, the sizes, ``id2label`` and
``label2id`` from the label names), ``model.safetensors`` in Hugging Face's parameter
names, and the tokenizer files ``vocab.txt``, ``tokenizer_config.json`` and
``special_tokens_map.json``.

The parameter names come from the one table that reads Hugging Face checkpoints
(:data:`gluonbert.hf_checkpoint._HF_RULES`): :func:`hf_parameter_names` lists Hugging Face's
names for a config, and each is mapped to gluonbert's name by that table, so reading and
writing cannot drift apart (a name the table does not map is a bug, raised at once).

The export is checked before it is put in place: gluonbert's own Hugging Face reader
(:func:`gluonbert.load_pretrained`) must read the encoder back bit for bit, the head
tensors must be the classifier's, and where ``transformers`` is installed its model and
tokenizer must give gluonbert's ids and logits (:func:`check_with_transformers`).

This module also holds what the ONNX export (:mod:`gluonbert.onnx_export`) shares: the
check inputs in the Hugging Face input names, gluonbert's reference logits, and the
directory staging.
"""
import contextlib
import json
import os
import re
import shutil
import tempfile

import numpy as np
import mxnet as mx

from ._io import fsync_directory, fsync_file, make_public
from .errors import DataError, ModelError, UsageError
from .params import named_parameters

__all__ = ['export_hf', 'hf_parameter_names', 'hf_tensors', 'hf_config', 'tokenizer_files',
           'check_texts', 'encode_inputs', 'gluonbert_logits', 'softmax', 'staged_directory',
           'check_output_dir', 'check_with_transformers', 'HF_INPUT_NAMES']

HF_INPUT_NAMES = ('input_ids', 'attention_mask', 'token_type_ids')
HEAD_NAMES = {'classifier.weight': 'classifier.1.weight', 'classifier.bias': 'classifier.1.bias'}


# ------------------------------------------------------------------------------ names
def _hf_activation(activation):
    """The ``hidden_act`` that gluonbert's Hugging Face reader maps back to ``activation``
    (the first of :data:`gluonbert.hf_checkpoint._HF_ACTIVATIONS`), else a ModelError."""
    from .hf_checkpoint import _HF_ACTIVATIONS
    for hf_name, ours in _HF_ACTIVATIONS.items():
        if ours == activation:
            return hf_name
    raise ModelError(f'activation {activation!r} has no Hugging Face BERT name that '
                     f'gluonbert reads back (those are: {", ".join(_HF_ACTIVATIONS)}); '
                     f'export it with --format onnx or mxnet')


def hf_parameter_names(num_layers):
    """Hugging Face's ``BertForSequenceClassification`` parameter names, in its order."""
    names = ['bert.embeddings.word_embeddings.weight',
             'bert.embeddings.position_embeddings.weight',
             'bert.embeddings.token_type_embeddings.weight',
             'bert.embeddings.LayerNorm.weight', 'bert.embeddings.LayerNorm.bias']
    for i in range(num_layers):
        layer = f'bert.encoder.layer.{i}'
        for part in ('attention.self.query', 'attention.self.key', 'attention.self.value',
                     'attention.output.dense', 'attention.output.LayerNorm',
                     'intermediate.dense', 'output.dense', 'output.LayerNorm'):
            names += [f'{layer}.{part}.weight', f'{layer}.{part}.bias']
    return names + ['bert.pooler.dense.weight', 'bert.pooler.dense.bias', *HEAD_NAMES]


def gluonbert_name(hf_name):
    """gluonbert's structural parameter name (of a classifier) for a Hugging Face one, by
    the reading table; a name it does not map is a bug (RuntimeError)."""
    from .hf_checkpoint import _HF_RULES, _normalise_hf_name
    if hf_name in HEAD_NAMES:
        return HEAD_NAMES[hf_name]
    name = _normalise_hf_name(hf_name)
    for pattern, replacement in _HF_RULES:
        if re.fullmatch(pattern, name) and not replacement.startswith('^'):
            return 'bert.' + re.sub(pattern, replacement, name)
    raise RuntimeError(f'the Hugging Face reading table does not map {hf_name}')


def hf_tensors(net):
    """``{Hugging Face name: float32 numpy array}`` of a sentence classifier's weights.

    A sinusoidal position table becomes the (then fixed) position embedding, which is the
    same function. Every parameter of ``net`` must be named exactly once (else a bug)."""
    from .layers import sinusoidal_table
    config = net.config
    params = {name: p for name, p in named_parameters(net).items()}
    if config.position_embedding == 'sinusoidal':
        table = params.pop('bert.encoder.position_embed.table')
        params['bert.encoder.position_embed.weight'] = table
    tensors, used = {}, set()
    for hf_name in hf_parameter_names(config.num_layers):
        ours = gluonbert_name(hf_name)
        if ours not in params:
            raise RuntimeError(f'{hf_name} maps to {ours}, which the model does not have')
        if ours == 'bert.encoder.position_embed.weight' and \
                config.position_embedding == 'sinusoidal':
            value = sinusoidal_table(config.max_length, config.units)
        else:
            value = params[ours].data(params[ours].list_ctx()[0]).asnumpy()
        tensors[hf_name] = np.ascontiguousarray(value, dtype=np.float32)
        used.add(ours)
    left = sorted(set(params) - used)
    if left:
        raise RuntimeError(f'parameters without a Hugging Face name: {", ".join(left)}')
    return tensors


def _label_maps(names):
    return ({str(i): n for i, n in enumerate(names)}, {n: i for i, n in enumerate(names)})


def hf_config(net, vocab, tokenizer):
    """The ``config.json`` of a ``BertForSequenceClassification`` equal to ``net``."""
    from .predict import label_names_of
    config = net.config
    id2label, label2id = _label_maps(label_names_of(net))
    return {
        'architectures': ['BertForSequenceClassification'], 'model_type': 'bert',
        'vocab_size': config.vocab_size, 'hidden_size': config.units,
        'num_hidden_layers': config.num_layers, 'num_attention_heads': config.num_heads,
        'intermediate_size': config.hidden_size,
        'hidden_act': _hf_activation(config.activation),
        'hidden_dropout_prob': config.dropout,
        'attention_probs_dropout_prob': config.attention_dropout,
        'classifier_dropout': net.head_dropout,
        'max_position_embeddings': config.max_length,
        'type_vocab_size': config.type_vocab_size, 'layer_norm_eps': config.layer_norm_eps,
        'initializer_range': 0.02, 'position_embedding_type': 'absolute',
        'pad_token_id': vocab.pad_id,
        'id2label': id2label, 'label2id': label2id,
        'problem_type': 'single_label_classification',
        'do_lower_case': tokenizer.lower,
    }


def tokenizer_files(net, vocab, tokenizer, max_len=None):
    """``{file name: JSON object}``: ``tokenizer_config.json`` and
    ``special_tokens_map.json`` for Hugging Face's ``BertTokenizer`` (``vocab.txt`` is
    written apart); ``model_max_length`` is ``max_len``, else the classifier's training
    max_len. A tokenizer option BertTokenizer cannot express is a ModelError."""
    from .predict import max_len_for
    if tokenizer.max_input_chars_per_word != 100:
        raise ModelError(f'the tokenizer splits words of up to '
                         f'{tokenizer.max_input_chars_per_word} characters; Hugging Face\'s '
                         f'BertTokenizer uses 100: use --format onnx or mxnet')
    special = {'unk_token': vocab.unknown_token, 'sep_token': vocab.sep_token,
               'pad_token': vocab.padding_token, 'cls_token': vocab.cls_token,
               'mask_token': vocab.mask_token}
    config = {'tokenizer_class': 'BertTokenizer', 'do_lower_case': tokenizer.lower,
              'strip_accents': tokenizer.strip_accents,
              'tokenize_chinese_chars': tokenizer.tokenize_chinese_chars,
              'do_basic_tokenize': True, 'model_max_length': max_len_for(net, max_len),
              'clean_up_tokenization_spaces': False, **special}
    return {'tokenizer_config.json': config, 'special_tokens_map.json': special}


def write_json(path, value):
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write('\n')


def write_shared_files(directory, net, vocab, tokenizer, max_len=None):
    """``config.json``, ``vocab.txt`` and the tokenizer files into ``directory``."""
    write_json(os.path.join(directory, 'config.json'), hf_config(net, vocab, tokenizer))
    for name, value in tokenizer_files(net, vocab, tokenizer, max_len).items():
        write_json(os.path.join(directory, name), value)
    vocab.save(os.path.join(directory, 'vocab.txt'))


# ----------------------------------------------------------------------- check inputs
def check_texts(net, path=None, limit=32):
    """Texts of the model's own task for the export checks: from ``path`` (one per line),
    else those kept with the classifier (``[text, pair]`` lists for pair tasks)."""
    from .fast.calibrate import calibration_texts
    from .predict import info_of
    info = info_of(net)
    if path is not None:
        if info.text_pair:
            raise DataError('--calib-file holds single texts; this sentence-pair model is '
                            'checked on the pairs kept with it (leave --calib-file out)')
        return calibration_texts(path, limit)
    if not info.calibration_texts:
        raise DataError('no check texts: this model keeps none of its task (saved before '
                        'gluonbert kept them, or built in Python); give a file of texts of '
                        'its task, one per line (--calib-file FILE)')
    return list(info.calibration_texts[:limit])


def encode_inputs(net, vocab, tokenizer, texts, max_len=None):
    """``{input_ids, attention_mask, token_type_ids}``: int64 ``(B, L)`` arrays of
    ``texts`` encoded as :func:`gluonbert.predict` does (pairs as the model was trained),
    padded to the longest."""
    from .data import BERTTransform
    from .predict import info_of, max_len_for
    info = info_of(net)
    transform = BERTTransform(tokenizer, vocab, max_len=max_len_for(net, max_len),
                              truncate=info.truncate, pair=info.text_pair)
    encoded = [transform(tuple(t) if info.text_pair else t) for t in texts]
    width = max(length for _, length, _ in encoded)
    ids = np.full((len(encoded), width), vocab.pad_id, dtype=np.int64)
    mask = np.zeros((len(encoded), width), dtype=np.int64)
    segments = np.zeros((len(encoded), width), dtype=np.int64)
    for row, (words, length, segment) in enumerate(encoded):
        ids[row, :length], mask[row, :length], segments[row, :length] = words, 1, segment
    return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': segments}


def gluonbert_logits(net, inputs):
    """gluonbert's float32 logits ``(B, C)`` for Hugging Face style ``inputs`` (a prefix
    attention mask: its row sums are the valid lengths)."""
    words = mx.nd.array(inputs['input_ids'], dtype='float32')
    segments = mx.nd.array(inputs['token_type_ids'], dtype='float32')
    valid_length = mx.nd.array(inputs['attention_mask'].sum(axis=1), dtype='float32')
    return net(words, segments, valid_length).astype('float32').asnumpy()


def softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


# -------------------------------------------------------------------------- directory
def check_output_dir(directory, what):
    """``directory`` if an export can be put there (absent or an empty directory; its
    parent is created), else a UsageError."""
    if not directory:
        raise UsageError(f'--output takes a directory for {what}')
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise UsageError(f'--output {directory} exists and is not an empty directory; '
                         f'{what} is written to a new one')
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    return directory


@contextlib.contextmanager
def staged_directory(directory):
    """Yield a staging directory next to ``directory``; renamed into place when the block
    ends without an error, removed otherwise (a failed check leaves no files)."""
    directory = os.path.abspath(directory)
    staging = tempfile.mkdtemp(dir=os.path.dirname(directory),
                               prefix=f'.{os.path.basename(directory)}.tmp-')
    try:
        yield staging
        for name in os.listdir(staging):  # safetensors writes 0600; on disk before the rename
            make_public(os.path.join(staging, name))
            fsync_file(os.path.join(staging, name))
        make_public(staging)  # mkdtemp's directory is private (0700)
        if os.path.isdir(directory):
            os.rmdir(directory)  # empty: check_output_dir said so
        os.replace(staging, directory)
        fsync_directory(os.path.dirname(directory))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------ checks
def transformers_available():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def check_with_transformers(directory, texts, inputs, reference, exact_truncation=True):
    """Load ``directory`` with transformers' Auto classes, as a user would; returns
    ``(ids_equal, max |logit difference| to reference)`` on ``texts``, whose gluonbert
    encoding is ``inputs``. Without ``exact_truncation`` (gluonbert cuts the texts in a way
    BertTokenizer does not: head+tail, or sentence pairs) the texts gluonbert cut are left
    out of the id comparison."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" on stderr: the command says it
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    pairs = [t for t in texts if not isinstance(t, str)]
    kwargs = {'text_pair': [p[1] for p in pairs]} if pairs else {}
    firsts = [t if isinstance(t, str) else t[0] for t in texts]
    encoded = tokenizer(firsts, padding=True, truncation='longest_first' if pairs else True,
                        return_tensors='np', **kwargs)
    rows = np.arange(len(texts))
    if not exact_truncation:
        rows = rows[inputs['attention_mask'].sum(axis=1) < tokenizer.model_max_length]
    ids_equal = all(_unpadded(encoded[k], encoded['attention_mask'], rows) ==
                    _unpadded(inputs[k], inputs['attention_mask'], rows)
                    for k in HF_INPUT_NAMES)
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(inputs[k]) for k in HF_INPUT_NAMES}).logits
    return ids_equal, float(np.abs(logits.float().numpy() - reference).max())


def _unpadded(values, mask, rows):
    """The values of ``rows`` where ``mask`` is 1, as lists (the two encodings' padded
    widths differ when rows are left out)."""
    return [values[r][mask[r].astype(bool)].tolist() for r in rows]


def logit_tolerance(reference):
    """The largest logit difference an exact export may show: float32 rounding, which
    grows with the logits' magnitude (1e-4 of the largest |logit|, and 1e-6 for logits
    near zero). A wrong weight, mask or activation moves logits by a sizeable fraction of
    themselves, far beyond it."""
    return 1e-4 * float(np.abs(reference).max()) + 1e-6


def _check_read_back(directory, net, tensors):
    """gluonbert's Hugging Face encoder reader must give the encoder back bit for bit. It
    is handed the directory's files with the encoder's tensors alone (it leaves a
    BertForSequenceClassification's head out; :func:`gluonbert.load_pretrained` reads the
    whole directory as a classifier, and refuses one without its head)."""
    from safetensors.numpy import load_file, save_file
    from .hf_checkpoint import load_hf_checkpoint
    written = load_file(os.path.join(directory, 'model.safetensors'))
    if sorted(written) != sorted(tensors) or any(
            not np.array_equal(written[n], tensors[n]) for n in tensors):
        raise RuntimeError('model.safetensors reads back other tensors than were written')
    encoder_only = tempfile.mkdtemp(dir=os.path.dirname(directory), prefix='.read-back-')
    try:
        for name in ('config.json', 'vocab.txt', 'tokenizer_config.json'):
            shutil.copy(os.path.join(directory, name), encoder_only)
        save_file({n: t for n, t in written.items() if n not in HEAD_NAMES},
                  os.path.join(encoder_only, 'model.safetensors'))
        bert, _, _ = load_hf_checkpoint(encoder_only)
    finally:
        shutil.rmtree(encoder_only, ignore_errors=True)
    original = {n: p for n, p in named_parameters(net.bert).items()
                if n != 'encoder.position_embed.table'}
    read = named_parameters(bert)
    differ = [n for n, p in read.items()
              if n != 'encoder.position_embed.weight' and
              not np.array_equal(p.data().asnumpy(), original[n].data(
                  original[n].list_ctx()[0]).asnumpy())]
    if not np.array_equal(read['encoder.position_embed.weight'].data().asnumpy(),
                          tensors['bert.embeddings.position_embeddings.weight']):
        differ.append('encoder.position_embed.weight')
    if differ:
        raise RuntimeError(f'the exported encoder reads back different: {", ".join(differ)}')


def export_hf(net, vocab, tokenizer, directory, texts, max_len=None):
    """Write ``net`` (a sentence classifier, LoRA merged) as a Hugging Face directory and
    check it on ``texts`` (see the module docstring).

    Returns a dict: ``directory``, ``files``, ``tensors`` (count), ``read_back`` (True),
    ``transformers`` (None where it is not installed, else ``{'ids_equal',
    'max_abs_logit_diff', 'tolerance', 'max_abs_prob_diff'}``).
    """
    from safetensors.numpy import save_file
    directory = check_output_dir(directory, 'a Hugging Face export')
    tensors = hf_tensors(net)
    inputs = encode_inputs(net, vocab, tokenizer, texts, max_len)
    reference = gluonbert_logits(net, inputs)
    result = {'directory': directory, 'tensors': len(tensors), 'transformers': None}
    with staged_directory(directory) as staging:
        save_file(tensors, os.path.join(staging, 'model.safetensors'),
                  metadata={'format': 'pt'})
        write_shared_files(staging, net, vocab, tokenizer, max_len)
        _check_read_back(staging, net, tensors)
        result['read_back'] = True
        if transformers_available():
            info = net.info
            exact = info.truncate == 'head' and not info.text_pair
            ids_equal, diff = check_with_transformers(staging, texts, inputs, reference,
                                                      exact_truncation=exact)
            tolerance = logit_tolerance(reference)
            if not ids_equal:
                raise ModelError("transformers' BertTokenizer gives other ids than "
                                 "gluonbert's tokenizer on the check texts; the export was "
                                 "not written")
            if diff > tolerance:
                raise ModelError(f'transformers computes logits {diff:.3g} away from '
                                 f"gluonbert's (tolerance {tolerance:.3g}); the export was "
                                 f'not written')
            result['transformers'] = {'ids_equal': ids_equal, 'max_abs_logit_diff': diff,
                                      'tolerance': tolerance}
        result['files'] = sorted(os.listdir(staging))
    return result
