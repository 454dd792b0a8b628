"""The runtimes an exported classifier runs in, and the ONNX export they share, cached
beside the model.

``mxnet`` is gluonbert itself (its float32, bfloat16 and int8 paths, :mod:`gluonbert.fast`).
``onnxruntime`` and ``openvino`` run the model's ONNX export
(:func:`gluonbert.onnx_export.export_onnx`), written on first use into the model's cache
(:func:`cache_root`: ``MODEL_DIR/.gluonbert-cache``, or under ``~/.cache/gluonbert/models``
when the model directory is read-only) in a folder named by the model's fingerprint, so
that a changed model is exported again. Both run the file through
:class:`gluonbert.evaluation.scoring.OnnxScorer` (the one runner of ONNX files): OpenVINO
as a subclass that compiles it with ``openvino.Core().compile_model``.
"""
import contextlib
import hashlib
import importlib
import os
import shutil

import numpy as np

from .._env import default_num_threads
from .._io import file_sha1
from ..errors import EnvironmentProblem, UsageError
from ..evaluation.scoring import OnnxScorer
from ..hardware import cpu_info
from ..predict import info_of, label_names_of

__all__ = ['BACKENDS', 'ONNX_EXTRA', 'OPENVINO_EXTRA', 'CACHE_DIR_NAME', 'require_backend',
           'missing_backend', 'openvino_precision', 'model_fingerprint', 'cache_root',
           'onnx_export_dir', 'BackendClassifier', 'OpenVinoScorer', 'onnx_classifier']

BACKENDS = ('mxnet', 'onnxruntime', 'openvino', 'auto')
ONNX_EXTRA = "pip install 'gluonbert[onnx]'"
OPENVINO_EXTRA = "pip install 'gluonbert[openvino]'"
CACHE_DIR_NAME = '.gluonbert-cache'
# the packages each runtime needs: the export is built with onnx and checked in onnxruntime
_PACKAGES = {'onnxruntime': ('onnx', 'onnxruntime'),
             'openvino': ('onnx', 'onnxruntime', 'openvino')}
_EXTRAS = {'onnxruntime': ONNX_EXTRA, 'openvino': OPENVINO_EXTRA}


def _import(name):
    return importlib.import_module(name)


def missing_backend(backend):
    """Why ``backend`` cannot run here (one line naming the extra to install), or None."""
    for package in _PACKAGES.get(backend, ()):
        try:
            _import(package)
        except ImportError:
            return (f'--backend {backend} needs the {package} package, which is not '
                    f'installed: {_EXTRAS[backend]}')
    return None


def require_backend(backend):
    """An EnvironmentProblem (one line) when ``backend``'s packages are missing."""
    problem = missing_backend(backend)
    if problem:
        raise EnvironmentProblem(problem)


def openvino_precision(cpu=None):
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` on this CPU: ``bf16`` where it has AMX or
    AVX512_BF16, else ``f32``."""
    cpu = cpu or cpu_info()
    return 'bf16' if any(cpu.has(f) for f in ('amx_bf16', 'avx512_bf16')) else 'f32'


def model_fingerprint(model_dir):
    """sha1 of what the model is: its ``gluonbert.json`` (which records the sha1 of each of
    its files, checked when it loads), else of the name and sha1 of each of its files."""
    from ..pretrained import MANIFEST
    digest = hashlib.sha1()
    manifest = os.path.join(model_dir, MANIFEST)
    if os.path.isfile(manifest):
        names = [MANIFEST]
    else:
        names = sorted(n for n in os.listdir(model_dir)
                       if not n.startswith('.') and os.path.isfile(os.path.join(model_dir, n)))
    for name in names:
        digest.update(f'{name}\0{file_sha1(os.path.join(model_dir, name))}\0'.encode())
    return digest.hexdigest()


def _home_cache():
    base = os.environ.get('GLUONBERT_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'),
        'gluonbert')
    return os.path.join(base, 'models')


def cache_root(model_dir):
    """``MODEL_DIR/.gluonbert-cache`` where the model directory is writable, else the
    user's cache (``GLUONBERT_CACHE_DIR``, else ``~/.cache/gluonbert``)/``models``; the
    files under it are named by the model's fingerprint either way."""
    local = os.path.join(os.path.abspath(model_dir), CACHE_DIR_NAME)
    if os.path.isdir(local) and os.access(local, os.W_OK) or os.access(model_dir, os.W_OK):
        return local
    return _home_cache()


def onnx_export_dir(model_dir, net, vocab, tokenizer, *, fingerprint=None, exported=None):
    """The folder of the model's checked ONNX export (``model.onnx``, ``model_int8.onnx``
    and the tokenizer and label files), exported on first use; ``exported`` (a list) gets
    export_onnx's result when this call wrote it. A folder of an older fingerprint in the
    model's own cache is removed."""
    from ..hf_export import check_texts
    from ..onnx_export import export_onnx
    fingerprint = fingerprint or model_fingerprint(model_dir)
    root = os.path.join(cache_root(model_dir), 'onnx')
    target = os.path.join(root, fingerprint)
    if os.path.isfile(os.path.join(target, 'model.onnx')):
        return target
    with _waiting_lock(root):  # one exporter at a time; the others wait for its files
        if not os.path.isfile(os.path.join(target, 'model.onnx')):
            result = export_onnx(net, vocab, tokenizer, target, check_texts(net),
                                 dtype='int8')
            if exported is not None:
                exported.append(result)
    if root.startswith(os.path.abspath(model_dir) + os.sep):
        for name in os.listdir(root):
            if name != fingerprint and len(name) == 40 and not name.startswith('.'):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return target


@contextlib.contextmanager
def _waiting_lock(directory):
    """An exclusive ``flock`` on ``DIRECTORY/.lock``, waited for (released when the process
    ends, however it ends); no lock where the platform has none."""
    os.makedirs(directory, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(os.path.join(directory, '.lock'), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class OpenVinoScorer(OnnxScorer):
    """An ONNX export compiled by OpenVINO for the CPU, with ``INFERENCE_PRECISION_HINT``
    ``precision`` (``f32`` or ``bf16``) and ``INFERENCE_NUM_THREADS`` ``threads``; both
    axes of the inputs stay dynamic."""

    def __init__(self, path, *, precision='f32', threads=None, max_len=None):
        self.precision = precision
        super().__init__(path, max_len=max_len, threads=threads)

    def _session(self, path):
        openvino = _import('openvino')
        config = {'INFERENCE_PRECISION_HINT': self.precision}
        if self.threads:
            config['INFERENCE_NUM_THREADS'] = int(self.threads)
        compiled = openvino.Core().compile_model(path, 'CPU', config)
        self.output = 'logits'
        return _CompiledModel(compiled), [port.get_any_name() for port in compiled.inputs]


class _CompiledModel:
    """An OpenVINO compiled model with onnxruntime's ``run(output_names, feed)``."""

    def __init__(self, compiled):
        self.compiled, self.request = compiled, compiled.create_infer_request()

    def run(self, names, feed):
        result = self.request.infer(feed)
        return [result[self.compiled.output(name)] for name in names]


class BackendClassifier:
    """A classifier run outside MXNet, usable wherever :func:`gluonbert.predict.predict`
    takes a net: it has the float32 model's ``info``, ``config`` and ``num_classes``, and
    ``run_padded(words, valid_length)`` gives a padded batch's probabilities."""

    def __init__(self, net, scorer, backend, precision):
        self.info, self.config = info_of(net), getattr(net, 'config', None)
        self.num_classes = len(label_names_of(net))
        self.scorer, self.backend, self.precision = scorer, backend, precision

    def run_padded(self, words, valid_length):
        ids = np.asarray(words, dtype=np.int64)
        return self.scorer.run_batch(ids, np.zeros_like(ids),
                                     np.asarray(valid_length, dtype=np.int64))

    def __repr__(self):
        return f'BackendClassifier({self.backend}, {self.precision})'


def onnx_classifier(directory, net, backend, precision, threads=None):
    """A :class:`BackendClassifier` of the export in ``directory``: ``onnxruntime``
    (``float32`` or ``int8``) or ``openvino`` (``f32`` or ``bf16``)."""
    threads = threads or default_num_threads()
    if backend == 'onnxruntime':
        name = {'float32': 'model.onnx', 'int8': 'model_int8.onnx'}[precision]
        scorer = OnnxScorer(os.path.join(directory, name), threads=threads)
    elif backend == 'openvino':
        scorer = OpenVinoScorer(os.path.join(directory, 'model.onnx'), precision=precision,
                                threads=threads)
    else:
        raise UsageError(f'no ONNX backend {backend!r}')
    return BackendClassifier(net, scorer, backend, precision)
