"""Runtimes for a fine-tuned classifier: gluonbert's own (``mxnet``), and onnxruntime and
OpenVINO on its ONNX export, cached beside the model; ``auto`` picks the fastest on this
CPU that keeps float32's answers, by measurement (docs/backends.md).

- :mod:`.runners`: the packages each backend needs, the model's cache and ONNX export, the
  OpenVINO runner and :class:`BackendClassifier`;
- :mod:`.choice`: the candidates, their measurement, the recorded choice,
  :func:`load_backend` and the gluonbert-info lines.

Nothing here imports onnxruntime or OpenVINO until a backend runs.
"""
from .choice import (MIN_AGREEMENT, available_backends, backend_report, candidates,
                     format_backend_report, load_backend, pick, read_choice)
from .runners import (BACKENDS, CACHE_DIR_NAME, BackendClassifier, cache_root,
                      missing_backend, model_fingerprint, onnx_export_dir, openvino_precision,
                      require_backend)

__all__ = ['BACKENDS', 'CACHE_DIR_NAME', 'MIN_AGREEMENT', 'BackendClassifier',
           'available_backends', 'backend_report', 'cache_root', 'candidates',
           'format_backend_report', 'load_backend', 'missing_backend', 'model_fingerprint',
           'onnx_export_dir', 'openvino_precision', 'pick', 'read_choice', 'require_backend']
