"""gluonbert.evaluation and gluonbert-evaluate: the metrics against tables worked out by hand,
the report files, the command in-process on tiny saved classifiers (and on a hand-built
ONNX graph where onnx and onnxruntime are installed), and its one-line errors."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import gluonbert
from gluonbert.cli.evaluate import evaluate_main
from gluonbert.evaluation import (calibration, classification_metrics, compare_probabilities,
                                  format_report, read_labelled, report_classifier,
                                  report_json, write_report)
from gluonbert.model import ClassifierInfo
from gluonbert.pretrained import save_pretrained
from gluonbert.tokenizer import BERTTokenizer, Vocab
from stand_ins import NEGATIVE, POSITIVE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def strict_json(text):
    """json.loads that refuses NaN and Infinity (RFC 8259 has neither)."""
    def refuse(name):
        raise ValueError(f'{name} is not JSON')
    return json.loads(text, parse_constant=refuse)


def rows_with(pred, conf, k):
    """Probability rows: ``conf`` on class ``pred``, the rest shared by the other classes."""
    row = np.full(k, (1.0 - conf) / (k - 1))
    row[pred] = conf
    return row


# ------------------------------------------------------------------ the metrics, by hand
def three_class_example():
    """19 examples of neg/neu/pos (6, 3, 10: imbalanced); neu is never predicted.

    Confusion matrix (rows true, columns predicted)::

            neg neu pos
        neg   5   0   1
        neu   2   0   1
        pos   1   0   9

    Confidences: 10 of the 14 right answers at 0.9, 4 at 0.7; 3 of the 5 wrong ones at 0.7,
    2 at 0.45.
    """
    cells = {(0, 0): 5, (0, 2): 1, (1, 0): 2, (1, 2): 1, (2, 0): 1, (2, 2): 9}
    labels, predicted = [], []
    for (true, pred), count in cells.items():
        labels += [true] * count
        predicted += [pred] * count
    right = [i for i in range(19) if labels[i] == predicted[i]]
    wrong = [i for i in range(19) if labels[i] != predicted[i]]
    conf = np.zeros(19)
    conf[right[:10]], conf[right[10:]] = 0.9, 0.7
    conf[wrong[:3]], conf[wrong[3:]] = 0.7, 0.45
    probabilities = np.stack([rows_with(p, c, 3) for p, c in zip(predicted, conf)])
    return labels, probabilities


def test_metrics_of_a_three_class_imbalanced_set_with_a_class_never_predicted():
    labels, probabilities = three_class_example()
    report = classification_metrics(labels, probabilities, ['neg', 'neu', 'pos'])
    assert report['confusion_matrix']['matrix'] == [[5, 0, 1], [2, 0, 1], [1, 0, 9]]
    assert report['confusion_matrix']['labels'] == ['neg', 'neu', 'pos']
    assert report['num_examples'] == 19
    assert report['accuracy'] == pytest.approx(14 / 19, abs=1e-15)
    expected = {  # precision, recall, F1, support, predicted
        'neg': (5 / 8, 5 / 6, 10 / 14, 6, 8),
        'neu': (0.0, 0.0, 0.0, 3, 0),        # never predicted: 0/0 -> 0; recall 0/3
        'pos': (9 / 11, 9 / 10, 18 / 21, 10, 11),
    }
    for name, (p, r, f1, support, predicted) in expected.items():
        got = report['per_class'][name]
        assert (got['precision'], got['recall'], got['f1']) == pytest.approx((p, r, f1),
                                                                             abs=1e-15)
        assert (got['support'], got['predicted']) == (support, predicted)
    macro, weighted = report['macro_avg'], report['weighted_avg']
    assert macro['precision'] == pytest.approx((5 / 8 + 0 + 9 / 11) / 3, abs=1e-15)
    assert macro['recall'] == pytest.approx((5 / 6 + 0 + 9 / 10) / 3, abs=1e-15)
    assert report['macro_f1'] == macro['f1'] == pytest.approx(11 / 21, abs=1e-15)
    assert weighted['precision'] == pytest.approx((6 * 5 / 8 + 10 * 9 / 11) / 19, abs=1e-15)
    assert weighted['recall'] == pytest.approx(14 / 19, abs=1e-15)  # = accuracy
    assert report['weighted_f1'] == weighted['f1'] == pytest.approx(90 / 133, abs=1e-15)
    assert macro['support'] == weighted['support'] == 19
    # ECE: bin 13 (0.867, 0.933]: 10 right at 0.9; bin 10 (0.667, 0.733]: 4 right, 3 wrong
    # at 0.7; bin 6 (0.4, 0.467]: 2 wrong at 0.45
    cal = report['calibration']
    assert cal['ece'] == pytest.approx((10 * 0.1 + 7 * abs(4 / 7 - 0.7) + 2 * 0.45) / 19,
                                       abs=1e-12)
    assert cal['ece'] == pytest.approx(2.8 / 19, abs=1e-12)
    assert cal['num_bins'] == 15 and len(cal['bins']) == 15
    counts = {b: cal['bins'][b]['count'] for b in range(15) if cal['bins'][b]['count']}
    assert counts == {6: 2, 10: 7, 13: 10}
    assert cal['bins'][10]['accuracy'] == pytest.approx(4 / 7)
    assert cal['bins'][10]['confidence'] == pytest.approx(0.7)
    assert cal['bins'][0] == {'lower': 0.0, 'upper': pytest.approx(1 / 15), 'count': 0,
                              'accuracy': None, 'confidence': None}
    assert cal['mean_confidence'] == pytest.approx((9 + 4.9 + 0.9) / 19)
    assert len(report['notes']) == 1 and "'neu' was never predicted" in report['notes'][0]


def test_a_class_with_no_examples_has_recall_zero_and_a_note():
    # true labels only a/b; the model predicts c once
    probabilities = [rows_with(p, 0.8, 3) for p in (0, 0, 1, 2)]
    report = classification_metrics([0, 0, 1, 1], probabilities, ['a', 'b', 'c'])
    c = report['per_class']['c']
    assert (c['precision'], c['recall'], c['f1'], c['support'], c['predicted']) == \
        (0.0, 0.0, 0.0, 0, 1)
    assert report['macro_f1'] == pytest.approx((1 + 2 / 3 + 0) / 3)  # c counts in the macro
    assert report['weighted_f1'] == pytest.approx((2 * 1 + 2 * 2 / 3) / 4)  # not weighted
    assert any("'c' has no examples" in note for note in report['notes'])


def test_calibration_bins_are_right_closed_and_the_ece_is_their_weighted_gap():
    # 4 bins: (0, .25], (.25, .5], (.5, .75], (.75, 1]; 0 goes to the first
    conf = [0.0, 0.25, 0.5, 0.5000001, 0.75, 1.0, 1.0, 0.3]
    right = [True, False, True, True, False, True, False, True]
    ece, bins = calibration(conf, right, num_bins=4)
    # bin 0: 0.0 (right), 0.25 (wrong); bin 1: 0.5, 0.3 (both right); bin 2: 0.5000001
    # (right), 0.75 (wrong); bin 3: 1.0 right and 1.0 wrong
    assert [b['count'] for b in bins] == [2, 2, 2, 2]
    assert [b['lower'] for b in bins] == [0.0, 0.25, 0.5, 0.75]
    assert [b['upper'] for b in bins] == [0.25, 0.5, 0.75, 1.0]
    assert [b['accuracy'] for b in bins] == [0.5, 1.0, 0.5, 0.5]
    assert bins[1]['confidence'] == pytest.approx(0.4)
    gaps = [2 * abs(0.5 - 0.125), 2 * abs(1.0 - 0.4), 2 * abs(0.5 - 1.2500001 / 2),
            2 * abs(0.5 - 1.0)]
    assert ece == pytest.approx(sum(gaps) / 8, abs=1e-12)
    assert calibration([0.9, 0.9], [True, True], 15)[0] == pytest.approx(0.1)
    perfect, _ = calibration([0.75] * 4, [True, True, True, False], 15)
    assert perfect == pytest.approx(0.0, abs=1e-15)


def test_bad_inputs_to_the_metrics_are_refused():
    with pytest.raises(ValueError, match='class ids'):
        classification_metrics([0, 2], [[0.5, 0.5], [0.2, 0.8]], ['a', 'b'])
    with pytest.raises(ValueError, match='NaN'):
        classification_metrics([0, 1], [[0.5, 0.5], [np.nan, 0.8]], ['a', 'b'])
    with pytest.raises(ValueError, match='2 labels for 3 rows'):
        classification_metrics([0, 1], np.full((3, 2), 0.5), ['a', 'b'])
    with pytest.raises(ValueError, match='3 probability columns for 2 label names'):
        classification_metrics([0, 1], np.full((2, 3), 1 / 3), ['a', 'b'])


def test_comparison_of_two_sets_of_probabilities():
    first = [[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]]
    second = [[0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]
    got = compare_probabilities(first, second)
    assert got['agreement'] == pytest.approx(2 / 3)
    assert got['num_label_differences'] == 1 and got['differing_examples'] == [1]
    assert got['max_abs_probability_difference'] == pytest.approx(0.2)
    assert got['mean_abs_probability_difference'] == pytest.approx(0.6 / 6)
    same = compare_probabilities(first, first)
    assert (same['agreement'], same['max_abs_probability_difference'],
            same['mean_abs_probability_difference']) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match='shapes'):
        compare_probabilities(first, second[:2])


def test_the_table_has_the_classification_report_layout():
    # C = [[3, 1], [0, 4]]: negative P 1 R .75 F1 6/7; positive P .8 R 1 F1 8/9
    probabilities = [rows_with(p, c, 2) for p, c in
                     [(0, 0.9), (0, 0.9), (0, 0.9), (1, 0.6), (1, 0.9), (1, 0.9), (1, 0.9),
                      (1, 0.9)]]
    report = classification_metrics([0, 0, 0, 0, 1, 1, 1, 1], probabilities,
                                    ['negative', 'positive'])
    expected = [
        '             precision    recall  f1-score   support',
        '',
        '    negative    1.0000    0.7500    0.8571         4',
        '    positive    0.8000    1.0000    0.8889         4',
        '',
        '    accuracy                        0.8750         8',
        '   macro avg    0.9000    0.8750    0.8730         8',
        'weighted avg    0.9000    0.8750    0.8730         8',
        '',
        'confusion matrix (rows: true label, columns: predicted label)',
        '              negative  positive',
        '    negative         3         1',
        '    positive         0         4',
        '',
        'expected calibration error 0.1625 (15 equal-width confidence bins; mean confidence '
        '0.8625)',
    ]
    assert format_report(report) == expected
    # ECE by hand: bin (.867, .933]: 7 at 0.9, all right; bin (.533, .6]: 1 wrong at 0.6
    assert report['calibration']['ece'] == pytest.approx((7 * 0.1 + 0.6) / 8)


def test_report_files_are_strict_json_and_png(tmp_path):
    labels, probabilities = three_class_example()
    report = write_report(labels, probabilities, ['neg', 'neu', 'pos'], str(tmp_path / 'r'),
                          extra={'model': 'hand-made'})
    text = (tmp_path / 'r' / 'report.json').read_text(encoding='utf-8')
    assert strict_json(text) == json.loads(json.dumps(report))
    assert report['model'] == 'hand-made' and report['per_class']['neu']['precision'] == 0.0
    assert 'NaN' not in text and 'Infinity' not in text and 'null' in text  # empty bins
    for name in ('confusion.png', 'reliability.png'):
        data = (tmp_path / 'r' / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
    with pytest.raises(ValueError, match='report.accuracy holds nan'):
        report_json(dict(report, accuracy=float('nan')))


def test_importing_the_evaluation_leaves_matplotlib_unloaded():
    code = ('import sys, gluonbert.evaluation, gluonbert.cli.evaluate\n'
            'print(sorted(m for m in sys.modules if m.startswith("matplotlib")))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert result.stdout.strip() == '[]', result.stderr


# ------------------------------------------------------------------ tiny saved classifiers
def tiny_vocab():
    words = sorted({w.strip(',.').lower() for t in POSITIVE + NEGATIVE for w in t.split()})
    return Vocab(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', ',', '.'] + words)


def tiny_classifier(vocab, label_names, seed=0, text_pair=False):
    mx.random.seed(seed)
    config = gluonbert.BERTConfig.from_preset('tiny', vocab_size=len(vocab), max_length=64)
    info = ClassifierInfo(list(label_names), max_len=32, text_pair=text_pair,
                          calibration_texts=[] if text_pair else POSITIVE + NEGATIVE)
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), num_classes=len(label_names),
                                   info=info)
    net.initialize(mx.init.Normal(0.5))
    return net


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """{'model': dir, 'flipped': the same model with its two classes swapped, 'three': a
    3-class model}, and the vocabulary and tokenizer."""
    root = tmp_path_factory.mktemp('models')
    vocab = tiny_vocab()
    tokenizer = BERTTokenizer(vocab)
    net = tiny_classifier(vocab, ['negative', 'positive'])
    found = {'vocab': vocab, 'tokenizer': tokenizer, 'net': net,
             'model': save_pretrained(net, vocab, tokenizer, str(root / 'model'))}
    # swap the output rows: the flipped model says negative where the model says positive
    dense = net.classifier[-1] if hasattr(net.classifier, '__getitem__') else net.classifier
    weight, bias = dense.weight.data(), dense.bias.data()
    dense.weight.set_data(weight[::-1])
    dense.bias.set_data(bias[::-1])
    found['flipped'] = save_pretrained(net, vocab, tokenizer, str(root / 'flipped'))
    dense.weight.set_data(weight[::-1])
    dense.bias.set_data(bias[::-1])
    three = tiny_classifier(vocab, ['bad', 'meh', 'good'], seed=1)
    found['three'] = save_pretrained(three, vocab, tokenizer, str(root / 'three'))
    found['pairs_net'] = tiny_classifier(vocab, ['negative', 'positive'], seed=2,
                                         text_pair=True)
    found['pairs'] = save_pretrained(found['pairs_net'], vocab, tokenizer, str(root / 'pairs'))
    return found


def write_csv(path, rows, header='text,label'):
    with open(path, 'w', encoding='utf-8') as f:
        f.write(header + '\n' + ''.join(f'"{t}",{label}\n' for t, label in rows))
    return str(path)


@pytest.fixture(scope='module')
def test_file(tmp_path_factory):
    rows = [(t, 'positive') for t in POSITIVE] + [(t, 'negative') for t in NEGATIVE]
    rows += [(t.upper(), 'pos' if label == 'positive' else 0) for t, label in rows[:8]]
    return write_csv(tmp_path_factory.mktemp('data') / 'test.csv', rows)


def run_evaluate(argv, capsys):
    code = evaluate_main(list(argv) + ['--no-progress'])
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_command_prints_the_table_and_writes_the_report(models, test_file, tmp_path,
                                                                  capsys):
    out_dir = tmp_path / 'report'
    code, out, err = run_evaluate(['--model-dir', models['model'], '--test', test_file,
                                   '--output', str(out_dir), '--batch-size', '5'], capsys)
    assert code == 0, err
    assert 'precision    recall  f1-score   support' in out
    assert 'weighted avg' in out and 'expected calibration error' in out
    assert f'{models["model"]} on {test_file}: 20 examples (negative, positive)' in out
    report = strict_json((out_dir / 'report.json').read_text(encoding='utf-8'))
    assert all((out_dir / n).read_bytes().startswith(PNG_SIGNATURE)
               for n in ('confusion.png', 'reliability.png'))
    # the same numbers as gluonbert.predict's labels give, counted here
    dataset = read_labelled(test_file, ['negative', 'positive'])
    assert dataset.labels == [1] * 6 + [0] * 6 + [1] * 6 + [0] * 2
    predictions = gluonbert.predict(models['net'], mx.cpu(), models['vocab'],
                                    models['tokenizer'], dataset.texts)
    matrix = np.zeros((2, 2), int)
    for truth, prediction in zip(dataset.labels, predictions):
        matrix[truth, prediction.label_id] += 1
    assert report['confusion_matrix']['matrix'] == matrix.tolist()
    assert report['accuracy'] == pytest.approx(np.trace(matrix) / 20)
    assert report['num_examples'] == 20 and report['model'] == models['model']
    for line in format_report(report):
        assert line in out.splitlines()
    # the function finetune calls writes the same report for its test set
    again = report_classifier(models['net'], models['vocab'], models['tokenizer'], dataset,
                              str(tmp_path / 'run'))
    assert again['confusion_matrix'] == report['confusion_matrix']
    assert again['calibration']['ece'] == pytest.approx(report['calibration']['ece'],
                                                        abs=1e-6)
    assert sorted(os.listdir(tmp_path / 'run')) == ['confusion.png', 'reliability.png',
                                                    'report.json']


def test_compare_with_itself_and_with_a_flipped_model(models, test_file, tmp_path, capsys):
    code, out, err = run_evaluate(['--model-dir', models['model'], '--test', test_file,
                                   '--compare', models['model'], '--output',
                                   str(tmp_path / 'a')], capsys)
    assert code == 0, err
    same = strict_json((tmp_path / 'a' / 'report.json').read_text())['comparison']
    assert (same['agreement'], same['num_label_differences'],
            same['max_abs_probability_difference'],
            same['mean_abs_probability_difference']) == (1.0, 0, 0.0, 0.0)
    assert 'label agreement 1.0000 (0 texts labelled differently)' in out
    code, out, err = run_evaluate(['--model-dir', models['model'], '--test', test_file,
                                   '--compare', models['flipped'], '--output',
                                   str(tmp_path / 'b')], capsys)
    assert code == 0, err
    report = strict_json((tmp_path / 'b' / 'report.json').read_text())
    flipped = report['comparison']
    # the flipped model's probabilities are the model's reversed: every label differs and
    # |dp| is |p_negative - p_positive| of the model, on both columns
    dataset = read_labelled(test_file, ['negative', 'positive'])
    p = np.array([list(x.probabilities.values()) for x in gluonbert.predict(
        models['net'], mx.cpu(), models['vocab'], models['tokenizer'], dataset.texts)])
    gap = np.abs(p[:, 0] - p[:, 1])
    assert flipped['agreement'] == 0.0 and flipped['num_label_differences'] == 20
    assert flipped['max_abs_probability_difference'] == pytest.approx(gap.max(), abs=1e-6)
    assert flipped['mean_abs_probability_difference'] == pytest.approx(gap.mean(), abs=1e-6)
    assert flipped['accuracy'] == pytest.approx(1 - report['accuracy'])
    assert flipped['differing_examples'] == list(range(20))
    assert 'label agreement 0.0000 (20 texts labelled differently)' in out


def test_int8_against_float32(models, test_file, capsys):
    code, out, err = run_evaluate(['--model-dir', models['model'], '--quantize', 'int8',
                                   '--test', test_file, '--compare', models['model']],
                                  capsys)
    assert code == 0, err
    assert f'{models["model"]} (int8) on {test_file}' in out
    assert f'compared with {models["model"]}: label agreement' in out


@pytest.mark.parametrize('case, message', [
    ('no labels', "no column 'label'"),
    ('unknown label', "test.csv:3: unknown label 'neutral': not one of the model's labels "
                      "(negative, positive)"),
    ('empty file', 'the file is empty'),
    ('header only', 'a header but no rows'),
    ('missing model', 'no such model directory'),
    ('missing onnx', 'no such ONNX file'),
    ('missing test', 'no such file'),
    ('other labels', 'has labels bad, meh, good'),
    ('max len', '--max-len must be >= 3'),
])
def test_user_errors_are_one_line_and_exit_2(case, message, models, test_file, tmp_path,
                                             capsys):
    model, test, extra = models['model'], test_file, []
    if case == 'no labels':
        test = str(tmp_path / 'test.csv')
        with open(test, 'w') as f:
            f.write('text\nfine film\n')
    elif case == 'unknown label':
        test = write_csv(tmp_path / 'test.csv', [('good', 'positive'), ('so so', 'neutral')])
    elif case == 'empty file':
        test = str(tmp_path / 'empty.csv')
        open(test, 'w').close()
    elif case == 'header only':
        test = write_csv(tmp_path / 'h.csv', [])
    elif case == 'missing model':
        model = str(tmp_path / 'nowhere')
    elif case == 'missing onnx':
        model = str(tmp_path / 'nowhere.onnx')
    elif case == 'missing test':
        test = str(tmp_path / 'nowhere.csv')
    elif case == 'other labels':
        extra = ['--compare', models['three']]
    elif case == 'max len':
        extra = ['--max-len', '2']
    code, out, err = run_evaluate(['--model-dir', model, '--test', test, *extra], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('gluonbert-evaluate: error: '), err
    assert message in lines[0]


def test_a_model_of_other_labels_reads_its_own_names(models, tmp_path, capsys):
    test = write_csv(tmp_path / 't.csv', [('a bad story', 'bad'), ('so so', 'meh'),
                                          ('great acting', 'good'), ('dull', '0')])
    assert read_labelled(test, ['bad', 'meh', 'good']).labels == [0, 1, 2, 0]
    code, out, err = run_evaluate(['--model-dir', models['three'], '--test', test], capsys)
    assert code == 0, err
    assert '         bad' in out and '         meh' in out and '        good' in out


def test_sentence_pairs_are_encoded_as_the_model_was_trained(models, tmp_path, capsys):
    from gluonbert.data import BERTTransform
    from gluonbert.evaluation import ClassifierScorer
    pairs = list(zip(POSITIVE, NEGATIVE))
    test = str(tmp_path / 'pairs.csv')
    with open(test, 'w', encoding='utf-8') as f:
        f.write('text,text_b,label\n' + ''.join(f'"{a}","{b}",{i % 2}\n'
                                                for i, (a, b) in enumerate(pairs)))
    dataset = read_labelled(test, ['negative', 'positive'], text_pair_column='text_b')
    net, vocab = models['pairs_net'], models['vocab']
    got = ClassifierScorer(net, vocab, models['tokenizer']).probabilities(dataset,
                                                                          batch_size=4)
    transform = BERTTransform(models['tokenizer'], vocab, max_len=32, pair=True)
    for row, pair in zip(got, pairs):  # one at a time, no padding: segments 0 then 1
        ids, length, segments = transform(pair)
        assert segments.max() == 1
        logits = net(mx.nd.array([ids]), mx.nd.array([segments]), mx.nd.array([length]))
        np.testing.assert_allclose(row, mx.nd.softmax(logits).asnumpy()[0], atol=1e-5)
    code, out, err = run_evaluate(['--model-dir', models['pairs'], '--test', test,
                                   '--text-pair-column', 'text_b'], capsys)
    assert code == 0, err
    assert '6 examples (negative, positive)' in out
    code, out, err = run_evaluate(['--model-dir', models['pairs'], '--test', test], capsys)
    assert code == 2 and 'was trained on sentence pairs; name the second text column with ' \
        '--text-pair-column' in err
    code, out, err = run_evaluate(['--model-dir', models['model'], '--test', test,
                                   '--text-pair-column', 'text_b'], capsys)
    assert code == 2 and 'classifies single texts; drop --text-pair-column' in err


# ------------------------------------------------------------------ ONNX
def build_onnx(folder, vocab, embeddings, type_embeddings):
    """A hand-made .onnx 'classifier': logits = sum over the valid positions of
    embeddings[input_ids] + type_embeddings[token_type_ids], with the files beside it."""
    onnx = pytest.importorskip('onnx')
    from onnx import TensorProto, helper, numpy_helper
    num_labels = embeddings.shape[1]
    nodes = [
        helper.make_node('Gather', ['E', 'input_ids'], ['e']),
        helper.make_node('Gather', ['T', 'token_type_ids'], ['t']),
        helper.make_node('Add', ['e', 't'], ['et']),
        helper.make_node('Cast', ['attention_mask'], ['m'], to=TensorProto.FLOAT),
        helper.make_node('Unsqueeze', ['m', 'axis2'], ['m3']),
        helper.make_node('Mul', ['et', 'm3'], ['masked']),
        helper.make_node('ReduceSum', ['masked', 'axis1'], ['logits'], keepdims=0),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ['batch', 'sequence'])
              for name in ('input_ids', 'attention_mask', 'token_type_ids')]
    output = helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', num_labels])
    initializers = [numpy_helper.from_array(embeddings.astype(np.float32), 'E'),
                    numpy_helper.from_array(type_embeddings.astype(np.float32), 'T'),
                    numpy_helper.from_array(np.array([2], np.int64), 'axis2'),
                    numpy_helper.from_array(np.array([1], np.int64), 'axis1')]
    graph = helper.make_graph(nodes, 'tiny', inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, 'model.onnx')
    onnx.save(model, path)
    vocab.save(os.path.join(folder, 'vocab.txt'))
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
        json.dump({'do_lower_case': True, 'model_max_length': 32}, f)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump({'id2label': {str(i): n for i, n in
                                enumerate(['negative', 'positive'][:num_labels])},
                   'max_position_embeddings': 64}, f)
    return path


def test_an_onnx_model_is_evaluated_through_onnxruntime(models, test_file, tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    from gluonbert.data import BERTTransform
    from gluonbert.evaluation import OnnxScorer
    vocab = models['vocab']
    rng = np.random.RandomState(0)
    embeddings, types = rng.normal(size=(len(vocab), 2)), rng.normal(size=(2, 2))
    path = build_onnx(str(tmp_path / 'onnx'), vocab, embeddings, types)
    dataset = read_labelled(test_file, ['negative', 'positive'])
    scorer = OnnxScorer(path)
    assert (scorer.label_names, scorer.max_len) == (['negative', 'positive'], 32)
    got = scorer.probabilities(dataset, batch_size=3)
    transform = BERTTransform(models['tokenizer'], vocab, max_len=32)
    logits = np.array([embeddings[ids].sum(0) + types[segments].sum(0)
                       for ids, _, segments in map(transform, dataset.texts)])
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    code, out, err = run_evaluate(['--model-dir', path, '--test', test_file, '--compare',
                                   path, '--output', str(tmp_path / 'r')], capsys)
    assert code == 0, err
    report = strict_json((tmp_path / 'r' / 'report.json').read_text())
    assert report['comparison']['agreement'] == 1.0
    assert report['comparison']['max_abs_probability_difference'] == 0.0
    predicted = expected.argmax(1)
    assert report['accuracy'] == pytest.approx(np.mean(predicted == dataset.labels))
    # a gluonbert model against an ONNX file: label agreement as counted here
    code, out, err = run_evaluate(['--model-dir', models['model'], '--test', test_file,
                                   '--compare', path, '--output', str(tmp_path / 's')], capsys)
    assert code == 0, err
    mixed = strict_json((tmp_path / 's' / 'report.json').read_text())['comparison']
    mine = np.array([x.label_id for x in gluonbert.predict(
        models['net'], mx.cpu(), vocab, models['tokenizer'], dataset.texts)])
    assert mixed['agreement'] == pytest.approx(np.mean(mine == predicted))


def test_onnx_without_onnxruntime_names_the_extra(models, test_file, tmp_path, capsys,
                                                  monkeypatch):
    pytest.importorskip('onnx')
    rng = np.random.RandomState(0)
    path = build_onnx(str(tmp_path / 'onnx'), models['vocab'],
                      rng.normal(size=(len(models['vocab']), 2)), rng.normal(size=(2, 2)))
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime fails
    code, out, err = run_evaluate(['--model-dir', path, '--test', test_file], capsys)
    assert code == 2
    assert err.strip() == (f"gluonbert-evaluate: error: {path}: evaluating an ONNX model "
                           f"needs onnxruntime: pip install 'gluonbert[onnx]'")


def test_a_damaged_onnx_file_is_one_line(models, test_file, tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    rng = np.random.RandomState(0)
    pytest.importorskip('onnx')
    path = build_onnx(str(tmp_path / 'onnx'), models['vocab'],
                      rng.normal(size=(len(models['vocab']), 2)), rng.normal(size=(2, 2)))
    with open(path, 'wb') as f:
        f.write(b'not a protobuf at all')
    code, out, err = run_evaluate(['--model-dir', path, '--test', test_file], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f'{path}: not a loadable ONNX model' in err
