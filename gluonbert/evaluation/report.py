"""An evaluation report as a table, as JSON (``report.json``) and as pictures
(``confusion.png``, ``reliability.png``)."""
import json
import math
import os

from .._io import atomic_write, write_text
from .metrics import ECE_BINS, classification_metrics

__all__ = ['REPORT_FILES', 'format_report', 'format_comparison', 'report_json', 'write_json',
           'plot_confusion', 'plot_reliability', 'write_report', 'write_report_files']

REPORT_FILES = ('report.json', 'confusion.png', 'reliability.png')


_COLUMNS = ('precision', 'recall', 'f1-score', 'support')
_CELL = 10  # characters per number column, as scikit-learn's classification_report


def _row(name, cells, width):
    """``name`` right-aligned in ``width``, then each cell right-aligned in its column."""
    return (str(name).rjust(width) + ''.join(f'{c:>{_CELL}}' for c in cells)).rstrip()


def format_report(report, digits=4):
    """The report as text lines: scikit-learn's ``classification_report`` layout
    (precision, recall, f1-score, support per class, then accuracy and the macro and
    weighted averages), the confusion matrix with label names, the calibration error and
    the notes."""
    def number(value):
        return f'{value:.{digits}f}'

    names = report['label_names']
    width = max(len(n) for n in names + ['weighted avg'])
    lines = [_row('', _COLUMNS, width), '']
    for name, c in report['per_class'].items():
        lines.append(_row(name, [number(c['precision']), number(c['recall']),
                                 number(c['f1']), c['support']], width))
    lines += ['', _row('accuracy', ['', '', number(report['accuracy']),
                                    report['num_examples']], width)]
    for label, key in (('macro avg', 'macro_avg'), ('weighted avg', 'weighted_avg')):
        a = report[key]
        lines.append(_row(label, [number(a['precision']), number(a['recall']),
                                  number(a['f1']), a['support']], width))
    lines += ['', 'confusion matrix (rows: true label, columns: predicted label)']
    matrix = report['confusion_matrix']['matrix']
    column = max(8, max(len(n) for n in names) + 2,
                 max(len(str(v)) for row in matrix for v in row) + 2)
    lines.append(' ' * width + ''.join(n.rjust(column) for n in names))
    for name, row in zip(names, matrix):
        lines.append(name.rjust(width) + ''.join(str(v).rjust(column) for v in row))
    cal = report['calibration']
    lines += ['', f'expected calibration error {number(cal["ece"])} ({cal["num_bins"]} '
                  f'equal-width confidence bins; mean confidence '
                  f'{number(cal["mean_confidence"])})']
    lines += [f'note: {note}' for note in report['notes']]
    return lines


def format_comparison(comparison, digits=4):
    """The lines that say how a second model's answers differ from the first's."""
    f = f'{{:.{digits}f}}'
    n = comparison['num_label_differences']
    lines = [f'compared with {comparison["model"]}: label agreement '
             f'{f.format(comparison["agreement"])} ({n} text{"" if n == 1 else "s"} labelled '
             f'differently), max |dp| {comparison["max_abs_probability_difference"]:.3g}, mean '
             f'|dp| {comparison["mean_abs_probability_difference"]:.3g}; its accuracy '
             f'{f.format(comparison["accuracy"])}']
    if comparison['differing_examples']:
        shown = ', '.join(str(i + 1) for i in comparison['differing_examples'])
        more = '' if n == len(comparison['differing_examples']) else ', ...'
        lines.append(f'texts labelled differently (from 1): {shown}{more}')
    return lines


def _finite(value, where='report'):
    """Refuse NaN and infinity anywhere in ``value`` (a bug if they get there)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f'{where} holds {value!r}, which JSON cannot carry')
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f'{where}.{key}')
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _finite(item, f'{where}[{i}]')


def report_json(report):
    """The report as RFC 8259 JSON text (no NaN or Infinity; ``null`` for an empty bin)."""
    _finite(report)
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + '\n'


def write_json(report, path):
    """Write ``report`` as JSON to ``path``, atomically."""
    write_text(path, report_json(report))


def _figure(width, height):
    """A matplotlib figure drawn by the Agg canvas: no pyplot, no global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    atomic_write(path, lambda tmp: figure.savefig(tmp, format='png'))


def plot_confusion(report, path):
    """Draw the confusion matrix (rows true, columns predicted, counts written in each
    cell, shaded by the share of its row) to the PNG ``path``."""
    import numpy as np
    names = report['confusion_matrix']['labels']
    matrix = np.asarray(report['confusion_matrix']['matrix'], dtype=np.float64)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.6 * len(names)
    figure = _figure(size + 1.0, size)
    ax = figure.add_subplot(1, 1, 1)
    image = ax.imshow(shares, cmap='Blues', vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, label='share of the true label')
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45 if len(names) > 3 else 0, ha='right'
                       if len(names) > 3 else 'center')
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlabel('predicted label')
    ax.set_ylabel('true label')
    for t in range(len(names)):
        for p in range(len(names)):
            ax.text(p, t, str(int(matrix[t, p])), ha='center', va='center',
                    color='white' if shares[t, p] > 0.5 else 'black')
    ax.set_title(f'accuracy {report["accuracy"]:.4f} on {report["num_examples"]} examples')
    figure.tight_layout()
    _save(figure, path)


def plot_reliability(report, path):
    """Draw the reliability diagram to the PNG ``path``: per confidence bin, the accuracy
    (bars) against the mean confidence (points), the diagonal of perfect calibration, and
    the bin counts (a second panel)."""
    cal = report['calibration']
    bins = cal['bins']
    width = bins[0]['upper'] - bins[0]['lower']
    centres = [(b['lower'] + b['upper']) / 2 for b in bins]
    full = [(c, b) for c, b in zip(centres, bins) if b['count']]
    figure = _figure(5.5, 6.5)
    top = figure.add_axes([0.14, 0.37, 0.8, 0.56])
    bottom = figure.add_axes([0.14, 0.08, 0.8, 0.2], sharex=top)
    top.plot([0, 1], [0, 1], '--', color='gray', label='perfect calibration')
    top.bar([c for c, _ in full], [b['accuracy'] for _, b in full], width=width * 0.95,
            color='tab:blue', alpha=0.7, edgecolor='black', label='accuracy')
    top.plot([b['confidence'] for _, b in full], [b['accuracy'] for _, b in full], 'o',
             color='tab:red', label='accuracy at mean confidence')
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.05)
    top.set_ylabel('accuracy')
    top.set_title(f'reliability: ECE {cal["ece"]:.4f} ({cal["num_bins"]} bins)')
    top.legend(loc='upper left', fontsize='small')
    bottom.bar(centres, [b['count'] for b in bins], width=width * 0.95, color='gray',
               edgecolor='black')
    for c, b in full:
        bottom.text(c, b['count'], str(b['count']), ha='center', va='bottom',
                    fontsize='x-small')
    bottom.set_ylim(0, max(b['count'] for b in bins) * 1.25)
    bottom.set_xlabel("confidence (the predicted label's probability)")
    bottom.set_ylabel('texts')
    _save(figure, path)


def write_report_files(report, directory):
    """Write ``report.json``, ``confusion.png`` and ``reliability.png`` of ``report``
    into ``directory`` (created); returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, name) for name in REPORT_FILES]
    write_json(report, paths[0])
    plot_confusion(report, paths[1])
    plot_reliability(report, paths[2])
    return paths


def write_report(labels, probabilities, label_names, directory, *, num_bins=ECE_BINS,
                 extra=None):
    """Compute the report of ``probabilities`` (N, K) against ``labels`` (N,) and write
    ``report.json``, ``confusion.png`` and ``reliability.png`` into ``directory``.

    ``extra`` (a dict) is merged into the report first (e.g. the model and data names).
    Returns the report dict (:func:`~gluonbert.evaluation.metrics.classification_metrics`).
    """
    report = dict(extra or {})
    report.update(classification_metrics(labels, probabilities, label_names, num_bins))
    write_report_files(report, directory)
    return report
