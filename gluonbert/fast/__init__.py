"""Inference fast paths for a fine-tuned :class:`~gluonbert.BERTClassifier`.

- :mod:`.passes`: pure graph passes (trace, fold constants, partition for oneDNN);
- :mod:`.convert`: conversions that return a new block (:func:`to_float32`,
  :func:`to_bfloat16`, :func:`quantize_int8`, :func:`prepare`) and :func:`optimize`, which
  hybridizes a block in place;
- :mod:`.calibrate`: example and calibration inputs, and the recording int8 calibration
  needs.
"""
from .calibrate import calibration_batches, calibration_texts, encode_batches, example_inputs
from .convert import (DTYPES, INT8_EXCLUDED_OPERATORS, INTERLEAVED_ATTENTION_OPS,
                      InferenceClassifier, init_amp_bfloat16, optimize, prepare, quantize_int8,
                      to_bfloat16, to_float32)
from .passes import INPUT_NAMES, fold_constants

__all__ = ['DTYPES', 'INPUT_NAMES', 'INTERLEAVED_ATTENTION_OPS', 'INT8_EXCLUDED_OPERATORS',
           'InferenceClassifier', 'calibration_batches', 'calibration_texts', 'encode_batches',
           'example_inputs', 'fold_constants', 'init_amp_bfloat16', 'optimize', 'prepare',
           'quantize_int8', 'to_bfloat16', 'to_float32']
