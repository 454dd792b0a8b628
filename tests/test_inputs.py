"""Bad and unusual training files: the exact rows read, or the exact one-line error.

Every row of ``CASES`` is read twice: by :func:`gluonbert.data.read_table` (the rows, or a
:class:`DataError` with the full message) and by ``gluonbert-finetune --train F --test F``
(exit status 2 and exactly one ``gluonbert-finetune: error: ...`` line, before the model
loads: ``gluonbert.cli.finetune._load_model`` is replaced by a stand-in that stops the run).
"""
import collections
import json
import re
import sys

import pytest

from gluonbert import cli, data
from gluonbert.cli import finetune as finetune_cli
from gluonbert.errors import DataError, EnvironmentProblem, GluonbertError

Rows = collections.namedtuple('Rows', 'texts labels pairs', defaults=(None,))
Case = collections.namedtuple('Case', 'id name content options expect')


def fails(message):
    """An expected error; ``{path}`` stands for the file's path."""
    return ('error', message)


def _pandas_to_csv(path):
    pandas = pytest.importorskip('pandas')
    frame = pandas.DataFrame({'text': ['great film', 'bad, really bad', 'He said "no"',
                                       'two\nlines'], 'label': [1, 0, 0, 1]})
    frame.to_csv(path)


def _nested_json_message():
    try:
        json.loads('[' * 100_000)
    except RecursionError as err:
        return f'invalid JSON: {err}'
    raise AssertionError('json.loads read 100000 nested arrays')


def _tweets():
    """300 tweets; row 227 (line 228) holds U+2028, as the real file that was rejected."""
    texts = [f'tweet number {i} #fun' for i in range(300)]
    texts[226] = 'first part\u2028second part'
    texts[100] = 'next\u0085line and \u2029 paragraph \x1c\x1d\x1e \x0b\x0c end'
    return texts


TWEETS = _tweets()
BIG = 'word ' * 200_000  # 1 MB
WIDE = '"' + 'a, b\n' * 40_000 + '"'  # a 200 KB quoted field (the csv module's limit: 128 KiB)
LABELS_10_20 = {'labels': ['10', '20']}
NEG_POS = {'labels': ['neg', 'pos']}
PAIRS = {'text_column': 'sentence1', 'text_pair_column': 'sentence2'}
BAD_LINE = 'the file must be UTF-8 encoded'
BINARY_HELP = ('expected 0/1 or negative/positive, or declare the label set (labels=[...], '
               '--labels a,b,c)')

CASES = [
    # ---------------------------------------------------------------- CSV that is valid
    Case('csv-crlf', 'r.csv', 'text,label\r\nhello,1\r\nbye,0\r\n', {},
         Rows(['hello', 'bye'], [1, 0])),
    Case('csv-bom', 'r.csv', '\ufefftext,label\nhello,1\n', {}, Rows(['hello'], [1])),
    Case('csv-cr-only-line-ends', 'r.csv', 'text,label\rhello,1\rbye,0\r', {},
         Rows(['hello', 'bye'], [1, 0])),
    Case('csv-quoted-newline-and-quotes', 'r.csv',
         'text,label\n"line one\nline two",1\n"say ""hi"", then, go",0\n', {},
         Rows(['line one\nline two', 'say "hi", then, go'], [1, 0])),
    Case('csv-quoted-crlf-inside-text', 'r.csv', 'text,label\r\n"a\r\nb",1\r\n', {},
         Rows(['a\r\nb'], [1])),
    Case('csv-tweets-u2028-row-227', 'tweets.csv',
         'text,label\n' + ''.join(f'{t},{i % 2}\n' for i, t in enumerate(TWEETS)), {},
         Rows(TWEETS, [i % 2 for i in range(300)])),
    Case('csv-unicode-separators-and-controls', 'r.csv',
         'text,label\nnext\u0085line,1\nline\u2028sep,0\npara\u2029sep,1\n'
         'vt\x0bff\x0cfs\x1cgs\x1drs\x1e,0\n', {},
         Rows(['next\u0085line', 'line\u2028sep', 'para\u2029sep',
               'vt\x0bff\x0cfs\x1cgs\x1drs\x1e'], [1, 0, 1, 0])),
    Case('csv-emoji', 'r.csv', 'text,label\n"so good \U0001F600\U0001F44D\U0001F3FD, really",1\n',
         {}, Rows(['so good \U0001F600\U0001F44D\U0001F3FD, really'], [1])),
    Case('csv-nul-in-text', 'r.csv', 'text,label\nnul\x00inside,0\n', {},
         Rows(['nul\x00inside'], [0])),
    Case('csv-1mb-text', 'r.csv', f'text,label\n{BIG},1\nshort,0\n', {},
         Rows([BIG, 'short'], [1, 0])),
    Case('csv-200kb-quoted-field', 'r.csv', f'text,label\n{WIDE},0\n', {},
         Rows([WIDE[1:-1]], [0])),
    Case('csv-pandas-format', 'r.csv',
         ',text,label\n0,great film,1\n1,"bad, really bad",0\n2,"He said ""no""",0\n'
         '3,"two\nlines",1\n', {},
         Rows(['great film', 'bad, really bad', 'He said "no"', 'two\nlines'], [1, 0, 0, 1])),
    Case('csv-written-by-pandas', 'r.csv', _pandas_to_csv, {},
         Rows(['great film', 'bad, really bad', 'He said "no"', 'two\nlines'], [1, 0, 0, 1])),
    Case('csv-blank-lines-skipped', 'r.csv', 'text,label\n\nhello,1\n\n\nbye,0\n\n', {},
         Rows(['hello', 'bye'], [1, 0])),
    Case('csv-header-spaces', 'r.csv', 'text , label\nhi,1\n', {}, Rows(['hi'], [1])),
    Case('csv-short-row-with-the-used-columns', 'r.csv', 'text,label,source\nhi,1\nyo,0,web\n',
         {}, Rows(['hi', 'yo'], [1, 0])),
    Case('tsv', 'r.tsv', 'text\tlabel\nhello, world\t1\n"quoted\ttab"\t0\n', {},
         Rows(['hello, world', 'quoted\ttab'], [1, 0])),
    Case('tsv-glue-quotes-are-text', 'r.tsv', 'text\tlabel\n"Hello," she said\t1\n',
         {'quoting': 'none'}, Rows(['"Hello," she said'], [1])),
    Case('csv-sentence-pairs', 'r.csv',
         'sentence1,sentence2,label\nA man eats.,"Someone eats, fast.",1\n', PAIRS,
         Rows(['A man eats.'], [1], ['Someone eats, fast.'])),
    # --------------------------------------------------------------- JSONL that is valid
    Case('jsonl-ensure-ascii-false', 'r.jsonl',
         ''.join(json.dumps({'text': t, 'label': 1}, ensure_ascii=False) + '\n'
                 for t in ['a\u2028b', 'c\u0085d\u2029e', 'smile \U0001F600', 'nul \x00'])
         + '\n', {},
         Rows(['a\u2028b', 'c\u0085d\u2029e', 'smile \U0001F600', 'nul \x00'], [1, 1, 1, 1])),
    Case('jsonl-crlf-and-bom', 'r.jsonl',
         '\ufeff{"text": "a", "label": 1}\r\n\r\n{"text": "b", "label": "0"}\r\n', {},
         Rows(['a', 'b'], [1, 0])),
    Case('jsonl-number-labels', 'r.jsonl',
         '{"text": "a", "label": 1.0}\n{"text": "b", "label": 0}\n', {}, Rows(['a', 'b'], [1, 0])),
    Case('jsonl-lone-surrogate-escape-is-text', 'r.jsonl', '{"text": "x \\ud83d", "label": 1}\n',
         {}, Rows(['x \ud83d'], [1])),
    Case('jsonl-sentence-pairs', 'r.jsonl',
         '{"sentence1": "Is it?", "sentence2": "It is.", "label": "0"}\n', PAIRS,
         Rows(['Is it?'], [0], ['It is.'])),
    # ------------------------------------------------------------------------- labels
    Case('labels-binary-aliases', 'r.csv', 'text,label\na,POSITIVE\nb,Neg\nc,1.0\nd, 0 \n', {},
         Rows(['a', 'b', 'c', 'd'], [1, 0, 1, 0])),
    Case('labels-numeric-by-value', 'r.csv', 'text,label\na,10\nb,20.0\nc, 20 \n', LABELS_10_20,
         Rows(['a', 'b', 'c'], [0, 1, 1])),
    Case('labels-numeric-1-is-not-an-index', 'r.csv', 'text,label\na,10\nb,1\n', LABELS_10_20,
         fails("{path}:3: unknown label '1'; accepted labels: 10, 20 (compared as numbers)")),
    Case('labels-names-and-their-indices', 'r.csv', 'text,label\na,pos\nb,0\nc,1\n', NEG_POS,
         Rows(['a', 'b', 'c'], [1, 0, 1])),
    Case('labels-index-out-of-range', 'r.csv', 'text,label\na,2\n', NEG_POS,
         fails("{path}:2: unknown label '2'; accepted labels: neg, pos or their indices 0-1")),
    Case('labels-no-indices-when-a-name-is-a-digit', 'r.csv', 'text,label\na,0\n',
         {'labels': ['a', '1']}, fails("{path}:2: unknown label '0'; accepted labels: a, 1")),
    Case('labels-undeclared', 'r.csv', 'text,label\na,1\nb,maybe\n', {},
         fails(f"{{path}}:3: unknown label 'maybe'; {BINARY_HELP}")),
    Case('labels-empty', 'r.csv', 'text,label\na,\n', {},
         fails(f"{{path}}:2: unknown label ''; {BINARY_HELP}")),
    Case('labels-declared-twice-by-value', 'r.csv', 'text,label\na,1\n', {'labels': ['1', '1.0']},
         fails("declared labels must be distinct: '1.0' repeats '1'")),
    Case('labels-json-boolean', 'r.jsonl', '{"text": "a", "label": true}\n', {},
         fails("{path}:1: 'label' must be a string or a number, got a boolean")),
    Case('labels-json-null', 'r.jsonl', '{"text": "a", "label": null}\n', {},
         fails("{path}:1: 'label' must be a string or a number, got null")),
    # -------------------------------------------------------------------------- texts
    Case('text-null', 'r.jsonl', '{"text": "ok", "label": 1}\n{"text": null, "label": 1}\n', {},
         fails("{path}:2: 'text' must be a string, got null")),
    Case('text-number', 'r.jsonl', '{"text": 5, "label": 1}\n', {},
         fails("{path}:1: 'text' must be a string, got a number (5)")),
    Case('text-list', 'r.jsonl', '{"text": ["a"], "label": 1}\n', {},
         fails("{path}:1: 'text' must be a string, got an array")),
    Case('text-empty-csv', 'r.csv', 'text,label\n,1\n', {}, fails("{path}:2: 'text' is empty")),
    Case('text-pair-empty', 'r.csv', 'sentence1,sentence2,label\na, ,1\n', PAIRS,
         fails("{path}:2: 'sentence2' is empty")),
    # ------------------------------------------------------------ columns and fields
    Case('csv-missing-column', 'r.csv', 'body,label\nx,1\n', {},
         fails("{path}:1: no column 'text'; columns are: 'body', 'label'")),
    Case('csv-missing-pair-column', 'r.csv', 'sentence1,label\nx,1\n', PAIRS,
         fails("{path}:1: no column 'sentence2'; columns are: 'sentence1', 'label'")),
    Case('csv-column-twice', 'r.csv', 'text,text,label\nx,y,1\n', {},
         fails("{path}:1: column 'text' appears 2 times in the header")),
    Case('jsonl-missing-field', 'r.jsonl', '{"text": "x", "label": 1}\n{"label": 0}\n', {},
         fails("{path}:2: no field 'text'; fields are: 'label'")),
    Case('same-column-twice', 'r.csv', 'text,label\nx,1\n', {'text_column': 'label'},
         fails("the text, label and text pair columns must differ, got 'label', 'label'")),
    Case('csv-unquoted-comma', 'r.csv', 'text,label\nfine,1\nhello, world,1\n', {},
         fails('{path}:3: row has 3 fields but the header has 2; quote texts that contain a '
               'comma')),
    Case('csv-unquoted-comma-in-the-last-column', 'r.csv', 'label,text\n1,hello, world\n', {},
         fails('{path}:2: row has 3 fields but the header has 2; quote texts that contain a '
               'comma')),
    Case('csv-trailing-delimiter', 'r.csv', 'text,label\nhello,1,\n', {},
         fails('{path}:2: row has 3 fields but the header has 2; quote texts that contain a '
               'comma')),
    Case('tsv-extra-tab', 'r.tsv', 'text\tlabel\na\tb\t1\n', {},
         fails('{path}:2: row has 3 fields but the header has 2; quote texts that contain a '
               'tab')),
    Case('csv-too-few-fields', 'r.csv', 'text,label\nhello\n', {},
         fails('{path}:2: row has 1 field but the header has 2')),
    Case('csv-quote-left-open', 'r.csv', 'text,label\n"unbalanced,1\nnext,0\n', {},
         fails('{path}:2: row has 1 field but the header has 2 (the record runs from line 2 to '
               'line 3: is a quote left open?)')),
    Case('csv-semicolons-from-excel', 'r.csv',
         '\ufefftext;label\r\n"great; fun, really";1\r\nbad;0\r\n', {},
         Rows(['great; fun, really', 'bad'], [1, 0])),
    Case('csv-vertical-bars', 'r.csv', 'label|text\n1|a, b\n0|c\n', {},
         Rows(['a, b', 'c'], [1, 0])),
    Case('csv-semicolon-in-a-comma-file-is-text', 'r.csv', 'text,label\na;b,1\n', {},
         Rows(['a;b'], [1])),
    Case('csv-semicolons-unquoted-extra-field', 'r.csv', 'text;label\na;b;1\n', {},
         fails('{path}:2: row has 3 fields but the header has 2; quote texts that contain a '
               'semicolon')),
    # ------------------------------------------------------------ empty, broken files
    Case('csv-empty-file', 'r.csv', '', {},
         fails('{path}: the file is empty: expected a header row')),
    Case('csv-blank-lines-only', 'r.csv', '\n\r\n\n', {},
         fails('{path}: the file is empty: expected a header row')),
    Case('csv-header-only', 'r.csv', 'text,label\n', {},
         fails('{path}: the dataset is empty: a header but no rows')),
    Case('jsonl-empty-file', 'r.jsonl', '', {},
         fails('{path}: the dataset is empty: no JSON lines')),
    Case('csv-invalid-utf8', 'r.csv', b'text,label\nok,1\nbad \xff,0\n', {},
         fails(f'{{path}}:3: invalid UTF-8 at byte 5 of the line (0xff); {BAD_LINE}')),
    Case('csv-latin1', 'r.csv', 'text,label\ncaf\xe9,1\n'.encode('latin-1'), {},
         fails(f'{{path}}:2: invalid UTF-8 at byte 4 of the line (0xe9); {BAD_LINE}')),
    Case('tsv-utf16-from-excel', 'r.tsv', 'text\tlabel\r\nhello\t1\r\n'.encode('utf-16'), {},
         fails(f"{{path}}:1: invalid UTF-8 at byte 1 of the line (0xff); {BAD_LINE} (it looks "
               f"like UTF-16, e.g. Excel's 'Unicode Text': save it as UTF-8)")),
    Case('csv-invalid-utf8-inside-a-quoted-record', 'r.csv',
         b'text,label\n"line 2\nline 3 \xc3(\nline 4",1\n', {},
         fails(f'{{path}}:3: invalid UTF-8 at byte 8 of the line (0xc3); {BAD_LINE}')),
    Case('jsonl-invalid-utf8', 'r.jsonl', b'{"text": "a", "label": 1}\n{"text": "\xed\xa0\x80"}\n',
         {}, fails(f'{{path}}:2: invalid UTF-8 at byte 11 of the line (0xed); {BAD_LINE}')),
    Case('jsonl-invalid-json', 'r.jsonl', '{"text": "x", "label": 1}\n{oops\n', {},
         fails('{path}:2: invalid JSON: Expecting property name enclosed in double quotes '
               '(column 2)')),
    Case('jsonl-u2028-alone-is-not-blank', 'r.jsonl', '\u2028\n', {},
         fails('{path}:1: invalid JSON: Expecting value (column 1)')),
    Case('jsonl-nan', 'r.jsonl', '{"text": "x", "label": NaN}\n', {},
         fails('{path}:1: invalid JSON: NaN is not valid JSON')),
    Case('jsonl-deeply-nested', 'r.jsonl', '[' * 100_000 + '\n', {},
         fails('{path}:1: ' + _nested_json_message())),
    Case('jsonl-array-not-object', 'r.jsonl', '[{"text": "x", "label": 1}]\n', {},
         fails('{path}:1: expected a JSON object, got an array')),
    Case('directory-not-file', 'data.csv', 'DIRECTORY', {},
         fails('{path}: is a directory, not a data file')),
    Case('missing-file', 'absent.csv', None, {}, fails('no such file: {path}')),
    Case('unsupported-suffix', 'r.txt', 'text,label\nx,1\n', {},
         fails("{path}: unsupported file type '.txt'; use .csv, .tsv, .jsonl or .parquet")),
    Case('no-suffix', 'reviews', 'text,label\nx,1\n', {},
         fails("{path}: unsupported file type '(none)'; use .csv, .tsv, .jsonl or .parquet")),
]


def make_file(tmp_path, case):
    path = tmp_path / case.name
    if case.content == 'DIRECTORY':
        path.mkdir()
    elif callable(case.content):
        case.content(path)
    elif isinstance(case.content, bytes):
        path.write_bytes(case.content)
    elif case.content is not None:
        with open(path, 'w', encoding='utf-8', newline='') as f:
            f.write(case.content)
    return str(path)


def cli_flags(options):
    """``read_table`` options as gluonbert-finetune flags."""
    flags = {'text_column': '--text-column', 'label_column': '--label-column',
             'text_pair_column': '--text-pair-column', 'quoting': '--quoting',
             'labels': '--labels'}
    args = []
    for key, value in options.items():
        args += [flags[key], ','.join(value) if key == 'labels' else value]
    return args


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_reader(case, tmp_path):
    path = make_file(tmp_path, case)
    if isinstance(case.expect, Rows):
        dataset = data.read_table(path, **case.options)
        assert dataset.texts == case.expect.texts
        assert dataset.labels == case.expect.labels
        assert dataset.text_pairs == case.expect.pairs
        return
    message = case.expect[1].format(path=path)
    with pytest.raises(DataError, match=f'^{re.escape(message)}$'):
        data.read_table(path, **case.options)


class _ModelWouldLoad(GluonbertError):
    pass


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_finetune_cli(case, tmp_path, monkeypatch, capsys):
    """The same file through gluonbert-finetune: one line, exit 2, before the model loads
    (a file that reads fine reaches the model loading, here a stand-in that stops)."""
    def load_model(args, ctx):
        raise _ModelWouldLoad('the data was read; the model would load now')

    monkeypatch.setattr(finetune_cli, '_load_model', load_model)
    path = make_file(tmp_path, case)
    code = cli.finetune_main(['--model', 'tiny', '--train', path, '--test', path,
                              '--output-dir', str(tmp_path / 'run'), '--no-progress',
                              *cli_flags(case.options)])
    err = capsys.readouterr().err
    message = ('the data was read; the model would load now' if isinstance(case.expect, Rows)
               else case.expect[1].format(path=path))
    assert (code, err) == (2, f'gluonbert-finetune: error: {message}\n')


def test_csv_field_size_limit_is_restored():
    import csv
    from gluonbert.data.readers import unlimited_csv_fields
    before = csv.field_size_limit()
    with unlimited_csv_fields():
        assert csv.field_size_limit() >= 2 ** 31 - 1
        with unlimited_csv_fields():
            pass
        assert csv.field_size_limit() >= 2 ** 31 - 1  # still reading
    assert csv.field_size_limit() == before


def test_csv_field_size_limit_survives_a_32_bit_c_long(monkeypatch, tmp_path):
    import csv
    real = csv.field_size_limit

    def field_size_limit(*limit):
        if limit and limit[0] > 2 ** 31 - 1:
            raise OverflowError('Python int too large to convert to C long')
        return real(*limit)

    monkeypatch.setattr(csv, 'field_size_limit', field_size_limit)
    path = make_file(tmp_path, CASES[[c.id for c in CASES].index('csv-200kb-quoted-field')])
    assert data.read_csv(path).texts == [WIDE[1:-1]]


# -------------------------------------------------------------------------- Parquet
def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch, capsys):
    path = tmp_path / 'r.parquet'
    path.write_bytes(b'PAR1 not really')
    monkeypatch.setitem(sys.modules, 'pyarrow', None)
    monkeypatch.setitem(sys.modules, 'pyarrow.parquet', None)
    message = (f"{path}: reading Parquet files needs pyarrow: pip install "
               f"'gluonbert[parquet]'")
    with pytest.raises(EnvironmentProblem, match=f'^{re.escape(message)}$'):
        data.read_table(str(path))
    monkeypatch.setattr(finetune_cli, '_load_model', lambda *a: pytest.fail('the model loaded'))
    assert cli.finetune_main(['--train', str(path), '--test', str(path), '--no-progress',
                              '--output-dir', str(tmp_path / 'run')]) == 2
    assert capsys.readouterr().err == f'gluonbert-finetune: error: {message}\n'


def test_parquet_reading(tmp_path):
    pyarrow = pytest.importorskip('pyarrow')
    from pyarrow import parquet
    path = str(tmp_path / 'r.parquet')
    table = pyarrow.table({'sentence1': ['a\u2028b', 'c, d', 'e'], 'sentence2': ['x', 'y', 'z'],
                           'label': [1, 0, 1]})
    parquet.write_table(table, path, row_group_size=2)
    single = data.read_table(path, text_column='sentence1')
    assert (single.texts, single.labels, single.text_pairs) == (['a\u2028b', 'c, d', 'e'],
                                                                [1, 0, 1], None)
    pairs = data.load_dataset(path, text_column='sentence1', text_pair_column='sentence2',
                              labels=['no', 'yes'])
    assert pairs.text_pairs == ['x', 'y', 'z'] and pairs.label_names == ['no', 'yes']
    assert pairs.labels == [1, 0, 1]

    cases = [
        ({'text': ['ok', None], 'label': [1, 0]}, {},
         f"{path}: row 2: 'text' must be a string, got null"),
        ({'text': ['ok', 'x'], 'label': [1, None]}, {},
         f"{path}: row 2: 'label' must be a string or a number, got null"),
        ({'text': ['ok', 'x', 'y'], 'label': [10, 20, 1]}, {'labels': ['10', '20']},
         f"{path}: row 3: unknown label '1'; accepted labels: 10, 20 (compared as numbers)"),
        ({'body': ['ok'], 'label': [1]}, {},
         f"{path}: no column 'text'; columns are: 'body', 'label'"),
    ]
    for columns, options, message in cases:
        parquet.write_table(pyarrow.table(columns), path, row_group_size=2)
        with pytest.raises(DataError, match=f'^{re.escape(message)}$'):
            data.read_table(path, **options)
    with open(path, 'wb') as f:
        f.write(b'this is not parquet')
    with pytest.raises(DataError, match=f'^{re.escape(path)}: not a readable Parquet file '):
        data.read_table(path)
