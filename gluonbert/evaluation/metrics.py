"""Classification metrics from true labels and predicted probabilities (numpy only).

Every number is defined in docs/evaluation.md. In short, with ``C`` the confusion matrix
(``C[t, p]``: examples of true class ``t`` predicted as ``p``):

- accuracy: ``trace(C) / N``;
- per class ``k``: precision ``C[k, k] / sum_t C[t, k]``, recall ``C[k, k] / sum_p C[k, p]``,
  F1 ``2 C[k, k] / (sum_t C[t, k] + sum_p C[k, p])`` (the harmonic mean of the two), support
  ``sum_p C[k, p]``; a ratio whose denominator is 0 is 0 and a note says so (scikit-learn's
  ``zero_division=0``), so that the report never holds NaN;
- macro averages: the unweighted mean over every class of the model (those absent from the
  data included); weighted averages: the mean weighted by support;
- expected calibration error over ``num_bins`` equal-width bins of the predicted class's
  probability (its confidence): ``ECE = sum_b (n_b / N) |acc_b - conf_b|``, bin ``b``
  holding the confidences in ``(b/B, (b+1)/B]`` (0 in the first bin).

The predicted class is the most probable one (the first of a tie, as ``numpy.argmax``).
"""
import numpy as np

__all__ = ['ECE_BINS', 'confusion_matrix', 'calibration', 'classification_metrics',
           'compare_probabilities']

ECE_BINS = 15


def _checked(labels, probabilities, num_classes=None):
    """``(labels, probabilities)`` as an int array (N,) and a float64 array (N, K)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0 or probabilities.shape[1] < 2:
        raise ValueError(f'probabilities must be (N >= 1, K >= 2), got shape '
                         f'{probabilities.shape}')
    if not np.isfinite(probabilities).all():
        raise ValueError('probabilities hold NaN or infinity')
    labels = np.asarray(labels)
    if labels.shape != probabilities.shape[:1]:
        raise ValueError(f'{labels.size} labels for {probabilities.shape[0]} rows of '
                         f'probabilities')
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError('labels must be class ids (integers)')
        labels = labels.astype(np.int64)
    k = probabilities.shape[1] if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f'labels must be class ids in [0, {k}), got {labels.min()} to '
                         f'{labels.max()}')
    return labels.astype(np.int64), probabilities


def confusion_matrix(labels, predicted, num_classes):
    """``(K, K)`` int64 counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def calibration(confidences, correct, num_bins=ECE_BINS):
    """``(ece, bins)``: the expected calibration error and, per bin, ``{'lower', 'upper',
    'count', 'accuracy', 'confidence'}`` (accuracy and mean confidence None for an empty
    bin). Bin ``b`` holds confidences in ``(b/num_bins, (b+1)/num_bins]``, 0 in bin 0."""
    if num_bins < 1:
        raise ValueError(f'num_bins must be >= 1, got {num_bins}')
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # the number of inner edges strictly below a confidence is its bin: (lower, upper]
    index = np.searchsorted(edges[1:-1], confidences, side='left')
    total, ece, bins = confidences.size, 0.0, []
    for b in range(num_bins):
        members = index == b
        count = int(members.sum())
        accuracy = float(correct[members].mean()) if count else None
        confidence = float(confidences[members].mean()) if count else None
        if count:
            ece += count / total * abs(accuracy - confidence)
        bins.append({'lower': float(edges[b]), 'upper': float(edges[b + 1]), 'count': count,
                     'accuracy': accuracy, 'confidence': confidence})
    return float(ece), bins


def _ratio(numerator, denominator):
    return float(numerator) / float(denominator) if denominator else 0.0


def classification_metrics(labels, probabilities, label_names, num_bins=ECE_BINS):
    """The report of one model on one labelled set, as a JSON-ready dict.

    Parameters
    ----------
    labels : sequence of int
        True class ids, ``(N,)``.
    probabilities : array-like
        ``(N, K)`` predicted probabilities, ``K == len(label_names)``.
    label_names : list of str
        Class names in id order.
    num_bins : int, default 15
        Equal-width confidence bins of the calibration error.

    Returns
    -------
    dict
        ``num_examples``, ``label_names``, ``accuracy``, ``per_class`` (name ->
        ``precision``, ``recall``, ``f1``, ``support``, ``predicted``), ``macro_avg`` and
        ``weighted_avg`` (``precision``, ``recall``, ``f1``, ``support``), ``macro_f1``,
        ``weighted_f1``, ``confusion_matrix`` (``labels``, ``matrix``: rows true, columns
        predicted), ``calibration`` (``ece``, ``num_bins``, ``mean_confidence``, ``bins``)
        and ``notes`` (why a number is 0 by convention).
    """
    names = [str(n) for n in label_names]
    labels, probabilities = _checked(labels, probabilities, len(names))
    if probabilities.shape[1] != len(names):
        raise ValueError(f'{probabilities.shape[1]} probability columns for {len(names)} '
                         f'label names')
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, len(names))
    support, predicted_counts = matrix.sum(axis=1), matrix.sum(axis=0)
    per_class, notes = {}, []
    for k, name in enumerate(names):
        hits = matrix[k, k]
        per_class[name] = {'precision': _ratio(hits, predicted_counts[k]),
                           'recall': _ratio(hits, support[k]),
                           'f1': _ratio(2 * hits, predicted_counts[k] + support[k]),
                           'support': int(support[k]), 'predicted': int(predicted_counts[k])}
        if not predicted_counts[k]:
            notes.append(f'{name!r} was never predicted: its precision is 0 by convention '
                         f'(0/0, as zero_division=0)')
        if not support[k]:
            notes.append(f'{name!r} has no examples: its recall is 0 by convention (0/0)')
    total = int(support.sum())
    averages = {}
    for kind, weights in (('macro_avg', np.ones(len(names)) / len(names)),
                          ('weighted_avg', support / total)):
        averages[kind] = {key: float(sum(w * per_class[n][key] for w, n in zip(weights, names)))
                          for key in ('precision', 'recall', 'f1')}
        averages[kind]['support'] = total
    confidences = probabilities[np.arange(len(labels)), predicted]
    ece, bins = calibration(confidences, predicted == labels, num_bins)
    return {
        'num_examples': total, 'label_names': names,
        'accuracy': _ratio(np.trace(matrix), total),
        'per_class': per_class, **averages,
        'macro_f1': averages['macro_avg']['f1'], 'weighted_f1': averages['weighted_avg']['f1'],
        'confusion_matrix': {'labels': names, 'rows': 'true label',
                             'columns': 'predicted label', 'matrix': matrix.tolist()},
        'calibration': {'ece': ece, 'num_bins': num_bins,
                        'mean_confidence': float(confidences.mean()), 'bins': bins},
        'notes': notes,
    }


def compare_probabilities(first, second, *, max_listed=20):
    """How two models' answers on the same texts differ.

    ``first`` and ``second`` are ``(N, K)`` probabilities (same texts, same label order).
    Returns ``{'agreement', 'num_label_differences', 'max_abs_probability_difference',
    'mean_abs_probability_difference', 'differing_examples'}``: the fraction of texts given
    the same label, the number given different ones, the largest and the mean ``|p1 - p2|``
    over all ``N x K`` probabilities, and the indices (from 0) of the first ``max_listed``
    texts whose labels differ.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 2 or first.shape[0] == 0:
        raise ValueError(f'cannot compare probabilities of shapes {first.shape} and '
                         f'{second.shape}')
    differ = first.argmax(axis=1) != second.argmax(axis=1)
    gap = np.abs(first - second)
    return {'agreement': float(1.0 - differ.mean()),
            'num_label_differences': int(differ.sum()),
            'max_abs_probability_difference': float(gap.max()),
            'mean_abs_probability_difference': float(gap.mean()),
            'differing_examples': np.flatnonzero(differ)[:max_listed].tolist()}
