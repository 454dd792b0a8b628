"""Probabilities of a labelled set from a gluonbert classifier or an exported ``.onnx`` file,
and the labelled set read with the model's label names.

Both kinds of model see the same inputs: each text (or text pair) encoded by
:class:`gluonbert.data.BERTTransform` with the model's vocabulary, tokenizer, max_len and
truncation, batched by length and padded with the vocabulary's pad id.
"""
import os

import numpy as np

from ..data import BINARY_NAMES, BERTTransform, DataError, check_data_file, pad_ids, read_table
from ..errors import EnvironmentProblem, ModelError, UsageError
from ..predict import info_of, max_len_for
from .report import write_report

__all__ = ['ONNX_INSTALL', 'ClassifierScorer', 'OnnxScorer', 'load_scorer', 'read_labelled',
           'classifier_probabilities', 'report_classifier']

ONNX_INSTALL = "pip install 'gluonbert[onnx]'"
# HF writes this huge sentinel as model_max_length when the length is unknown
_NO_LENGTH = 1_000_000


def _items(dataset):
    if dataset.text_pairs is None:
        return list(dataset.texts)
    return list(zip(dataset.texts, dataset.text_pairs))


def _progress(total, progress, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit='text', disable=not progress, leave=False)


def _encode(dataset, tokenizer, vocab, max_len, truncate, progress=False):
    """``(ids, segments)`` int arrays per example."""
    transform = BERTTransform(tokenizer, vocab, max_len=max_len, truncate=truncate,
                              pair=dataset.text_pairs is not None)
    encoded = []
    with _progress(len(dataset), progress, 'tokenizing') as bar:
        for item in _items(dataset):
            ids, _, segments = transform(item)
            encoded.append((ids, segments))
            bar.update(1)
    return encoded


class _Scorer:
    """A model that gives probabilities ``(N, K)`` for a dataset; ``name``, ``label_names``,
    ``max_len``, ``truncate``, ``text_pair`` (True, False or None: unknown). Subclasses
    define ``_run(ids, segments, valid_length) -> (B, K) probabilities`` of one batch."""
    name = label_names = vocab = tokenizer = None
    max_len, truncate, text_pair = 128, 'head', None

    def check_dataset(self, dataset):
        """A UsageError when the data's kind (single texts or pairs) is not the model's."""
        pairs = dataset.text_pairs is not None
        if self.text_pair is True and not pairs:
            raise UsageError(f'{self.name} was trained on sentence pairs; name the second '
                             f'text column with --text-pair-column')
        if self.text_pair is False and pairs:
            raise UsageError(f'{self.name} classifies single texts; drop --text-pair-column')

    def run_batch(self, ids, segments, valid_length):
        """``(B, K)`` probabilities of one padded batch: int64 ``ids`` and ``segments``
        ``(B, L)``, ``valid_length`` ``(B,)``."""
        return self._run(ids, segments, valid_length)

    def probabilities(self, dataset, *, batch_size=32, progress=False):
        """``(len(dataset), K)`` float64 probabilities, in the dataset's order."""
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        encoded = _encode(dataset, self.tokenizer, self.vocab, self.max_len, self.truncate,
                          progress)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        result = np.zeros((len(encoded), len(self.label_names)), dtype=np.float64)
        desc = f'evaluating {os.path.basename(os.path.normpath(self.name))}'
        with _progress(len(encoded), progress, desc) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                ids, valid_length = pad_ids([encoded[i][0] for i in chunk], self.vocab.pad_id,
                                            dtype=np.int64)
                segments, _ = pad_ids([encoded[i][1] for i in chunk], 0,
                                      length=ids.shape[1], dtype=np.int64)
                result[chunk] = self._run(ids, segments, valid_length)
                bar.update(len(chunk))
        return result


class ClassifierScorer(_Scorer):
    """A gluonbert classifier (``net(words, segments, valid_length) -> logits``).

    ``info_net`` is the block whose :class:`~gluonbert.model.ClassifierInfo` and config
    give the label names, max_len and truncation (``net`` itself by default; the float32
    model when ``net`` is its int8 or bfloat16 conversion)."""

    def __init__(self, net, vocab, tokenizer, *, ctx=None, max_len=None, name='model',
                 info_net=None):
        import mxnet as mx
        info_net = net if info_net is None else info_net
        info = info_of(info_net)
        self.net, self.vocab, self.tokenizer = net, vocab, tokenizer
        self.ctx = ctx or mx.cpu()
        self.name, self.label_names = name, list(info.label_names)
        self.max_len, self.truncate = max_len_for(info_net, max_len), info.truncate
        self.text_pair = info.text_pair

    def _run(self, ids, segments, valid_length):
        import mxnet as mx
        as_nd = lambda a: mx.nd.array(a, ctx=self.ctx, dtype='float32')  # noqa: E731
        logits = self.net(as_nd(ids), as_nd(segments), as_nd(valid_length))
        return mx.nd.softmax(logits.astype('float32'), axis=-1).asnumpy()


def _import_onnxruntime(path):
    try:
        import onnxruntime
    except ImportError as err:
        raise EnvironmentProblem(f'{path}: evaluating an ONNX model needs onnxruntime: '
                                 f'{ONNX_INSTALL}') from err
    return onnxruntime


def _onnx_label_names(path, config):
    """The label names of ``config.json``'s ``id2label`` ({"0": name, ...}), in id order."""
    from ..schema import Fields
    fields = Fields(config, path, 'ONNX model config', ModelError,
                    'it should be written by gluonbert-export --format onnx')
    id2label = fields.get('id2label', dict)
    try:
        by_id = {int(key): str(name) for key, name in id2label.items()}
    except ValueError:
        fields.fail('id2label', 'an object with class ids as keys', id2label)
    names = [by_id.get(i, '').strip() for i in range(len(by_id))]
    if len(names) < 2 or '' in names or len(set(names)) != len(names):
        fields.fail('id2label', 'distinct non-empty names of class ids 0, 1, ... (at least 2)',
                    id2label)
    return names


class OnnxScorer(_Scorer):
    """An exported ``.onnx`` classifier run by onnxruntime on the CPU.

    Beside the file: ``vocab.txt``, ``tokenizer_config.json`` (``do_lower_case``,
    ``strip_accents``, ``model_max_length``; optional) and ``config.json`` (``id2label``).
    The graph takes int64 ``input_ids``, ``attention_mask`` and ``token_type_ids``
    (batch, sequence) and gives ``logits`` (batch, labels). max_len: ``max_len``, else
    ``model_max_length``, else ``config.json``'s ``max_position_embeddings``, else 512.
    ``threads``: onnxruntime's ``intra_op_num_threads`` (its own default when None).
    Subclasses may run the file in another runtime: ``_session(path)`` returns an object
    with onnxruntime's ``run(output_names, feed)`` and the graph's input names, and sets
    ``self.output``.
    """

    def __init__(self, path, *, max_len=None, threads=None):
        self.threads = threads
        from ..schema import load_json
        from ..tokenizer import BERTTokenizer, Vocab
        if not os.path.isfile(path):
            raise ModelError(f'no such ONNX file: {path}')
        folder = os.path.dirname(os.path.abspath(path))
        config_path = os.path.join(folder, 'config.json')
        config = load_json(config_path, 'ONNX model config', ModelError)
        self.name, self.label_names = path, _onnx_label_names(config_path, config)
        vocab_path = os.path.join(folder, 'vocab.txt')
        if not os.path.isfile(vocab_path):
            raise ModelError(f'{vocab_path} is missing: the ONNX model needs its vocabulary '
                             f'beside it')
        try:
            self.vocab = Vocab.from_file(vocab_path)
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelError(f'{vocab_path}: not a BERT vocabulary ({err})') from err
        settings_path = os.path.join(folder, 'tokenizer_config.json')
        settings = (load_json(settings_path, 'tokenizer config', ModelError)
                    if os.path.exists(settings_path) else {})
        strip = settings.get('strip_accents')
        self.tokenizer = BERTTokenizer(self.vocab, lower=bool(settings.get('do_lower_case', True)),
                                       strip_accents=None if strip is None else bool(strip))
        limit = config.get('max_position_embeddings')
        limit = limit if isinstance(limit, int) and limit >= 3 else 512
        trained = settings.get('model_max_length')
        trained = trained if isinstance(trained, int) and 3 <= trained < _NO_LENGTH else limit
        self.max_len = min(max_len or trained, limit)
        self.truncate = settings.get('truncate', 'head')
        if self.truncate not in ('head', 'head+tail'):
            raise ModelError(f"{settings_path}: truncate must be 'head' or 'head+tail', got "
                             f"{self.truncate!r}")
        self.session, self.inputs = self._session(path)

    def _session(self, path):
        onnxruntime = _import_onnxruntime(path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        try:
            session = onnxruntime.InferenceSession(path, options,
                                                   providers=['CPUExecutionProvider'])
        except Exception as err:  # onnxruntime raises its own classes for a bad file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f'{path}: not a loadable ONNX model ({first})') from err
        inputs = [i.name for i in session.get_inputs()]
        known = ('input_ids', 'attention_mask', 'token_type_ids')
        if 'input_ids' not in inputs or set(inputs) - set(known):
            raise ModelError(f'{path}: the graph takes {", ".join(inputs)}; expected '
                             f'input_ids, attention_mask and token_type_ids')
        outputs = [o.name for o in session.get_outputs()]
        self.output = 'logits' if 'logits' in outputs else outputs[0]
        return session, inputs

    def _run(self, ids, segments, valid_length):
        mask = (np.arange(ids.shape[1])[None, :] < valid_length[:, None]).astype(np.int64)
        feed = {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': segments}
        logits = self.session.run([self.output], {k: feed[k] for k in self.inputs})[0]
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != (ids.shape[0], len(self.label_names)):
            raise ModelError(f'{self.name}: {self.output} has shape {logits.shape}, expected '
                             f'({ids.shape[0]}, {len(self.label_names)}) for the labels of '
                             f'config.json')
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def load_scorer(path, *, ctx=None, max_len=None):
    """A scorer for ``path``: an ``.onnx`` file (:class:`OnnxScorer`), else a model or
    adapter directory (:class:`ClassifierScorer` through
    :func:`gluonbert.model_dir.load_classifier`)."""
    from ..model_dir import load_classifier
    if os.fspath(path).lower().endswith('.onnx'):
        return OnnxScorer(path, max_len=max_len)
    net, vocab, tokenizer = load_classifier(path, ctx=ctx)
    net.hybridize(static_alloc=True)
    return ClassifierScorer(net, vocab, tokenizer, ctx=ctx, max_len=max_len, name=path)


def read_labelled(path, label_names, *, text_column='text', label_column='label',
                  text_pair_column=None, quoting=None):
    """The labelled file ``path`` (any file ``gluonbert-finetune --test`` reads) with class
    ids in the order of the model's ``label_names``.

    A model with the default names (negative, positive) reads labels as fine-tuning does
    by default (0/1, negative/positive, neg/pos); any other model matches its names
    (numbers by value, or their ids 0, 1, ...). Raises DataError (one line): no such file,
    no label column, an empty file, a label that is not one of the model's.
    """
    check_data_file(path)
    binary = list(label_names) == list(BINARY_NAMES)
    options = {'text_column': text_column, 'label_column': label_column,
               'labels': None if binary else list(label_names),
               'text_pair_column': text_pair_column}
    if quoting:
        options['quoting'] = quoting
    try:
        dataset = read_table(path, **options)
    except DataError as err:
        message = str(err)
        if ': unknown label ' not in message:
            raise
        where = message.split('; ', 1)[0]
        raise DataError(f"{where}: not one of the model's labels "
                        f"({', '.join(label_names)})") from err
    if list(dataset.label_names) != list(label_names):
        raise ModelError(f"the model's label names ({', '.join(label_names)}) cannot be "
                         f"matched in a data file (they read as "
                         f"{', '.join(dataset.label_names)})")
    return dataset


def classifier_probabilities(net, vocab, tokenizer, dataset, *, ctx=None, batch_size=32,
                             max_len=None, progress=False):
    """``(len(dataset), K)`` probabilities of a gluonbert classifier on a
    :class:`~gluonbert.data.TextClassificationDataset`, encoded as the model was trained."""
    scorer = ClassifierScorer(net, vocab, tokenizer, ctx=ctx, max_len=max_len)
    scorer.check_dataset(dataset)
    return scorer.probabilities(dataset, batch_size=batch_size, progress=progress)


def report_classifier(net, vocab, tokenizer, dataset, directory, *, ctx=None, batch_size=32,
                      max_len=None, progress=False, extra=None):
    """Evaluate a gluonbert classifier on ``dataset`` and write ``report.json``,
    ``confusion.png`` and ``reliability.png`` into ``directory``; returns the report dict
    (what ``gluonbert-evaluate --output`` writes, for a run's own test set)."""
    probabilities = classifier_probabilities(net, vocab, tokenizer, dataset, ctx=ctx,
                                             batch_size=batch_size, max_len=max_len,
                                             progress=progress)
    return write_report(dataset.labels, probabilities, info_of(net).label_names, directory,
                        extra={'data': dataset.source, **(extra or {})})
