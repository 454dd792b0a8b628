"""Evaluating a classifier on a labelled set: accuracy, per-class precision, recall, F1 and
support, macro and weighted F1, the confusion matrix, the expected calibration error, and
how two models' answers differ (docs/evaluation.md defines each number).

- :mod:`.metrics`: the numbers, from labels and probabilities (numpy only);
- :mod:`.report`: the table, ``report.json``, ``confusion.png`` and ``reliability.png``;
- :mod:`.scoring`: probabilities from a gluonbert classifier or an exported ``.onnx`` file,
  and the labelled file read with the model's label names.

``gluonbert-evaluate`` (:mod:`gluonbert.cli.evaluate`) is the command;
:func:`report_classifier` writes the same report for a fine-tuning run's test set.
"""
from .metrics import (ECE_BINS, calibration, classification_metrics, compare_probabilities,
                      confusion_matrix)
from .report import (REPORT_FILES, format_comparison, format_report, plot_confusion,
                     plot_reliability, report_json, write_json, write_report,
                     write_report_files)
from .scoring import (ONNX_INSTALL, ClassifierScorer, OnnxScorer, classifier_probabilities,
                      load_scorer, read_labelled, report_classifier)

__all__ = ['ECE_BINS', 'calibration', 'classification_metrics', 'compare_probabilities',
           'confusion_matrix', 'REPORT_FILES', 'format_comparison', 'format_report',
           'plot_confusion', 'plot_reliability', 'report_json', 'write_json', 'write_report',
           'write_report_files', 'ONNX_INSTALL', 'ClassifierScorer', 'OnnxScorer',
           'classifier_probabilities', 'load_scorer', 'read_labelled', 'report_classifier']
