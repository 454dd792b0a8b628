"""Text classification data: readers, the BERT transform, length-bucketed batching.

A batch is ``(input_ids, valid_length, segments, label)``:

- ``input_ids``: ``(B, L)`` WordPiece ids, padded with the vocabulary's pad id;
- ``valid_length``: ``(B,)`` real tokens per example ([CLS] and [SEP] included);
- ``segments``: ``(B, L)`` 0 for [CLS], sentence A and its [SEP] (and for padding), 1 for B;
- ``label``: ``(B,)`` class ids.
"""
import codecs
import contextlib
import csv
import dataclasses
import decimal
import glob
import json
import os
import re
import socket
import sys
import threading

import numpy as np

from .errors import DataError, EnvironmentProblem

__all__ = ['DataError', 'TextClassificationDataset', 'read_csv', 'read_jsonl', 'read_parquet',
           'read_table', 'check_data_file', 'read_aclimdb', 'load_imdb', 'load_sample_reviews',
           'load_dataset', 'BERTTransform', 'ClassificationTransform', 'batchify_fn',
           'BucketSampler', 'padding_waste', 'make_dataloader', 'SAMPLE_DIR']

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'resources', 'reviews')
BINARY_NAMES = ['negative', 'positive']
_BINARY_ALIASES = {'0': 0, '1': 1, 'negative': 0, 'positive': 1, 'neg': 0, 'pos': 1}


@dataclasses.dataclass
class TextClassificationDataset:
    """Texts with integer labels; ``label_names[i]`` names label ``i``.

    ``text_pairs`` holds the second text of sentence-pair tasks (None for single texts);
    an item is then ``((text, text_pair), label)``, for ``BERTTransform(..., pair=True)``.
    """
    texts: list
    labels: list
    label_names: list
    source: str = '<memory>'
    text_pairs: list = None

    def __post_init__(self):
        if not self.texts:
            raise DataError(f'{self.source}: the dataset is empty')
        if len(self.texts) != len(self.labels):
            raise DataError(f'{self.source}: {len(self.texts)} texts but {len(self.labels)} '
                            f'labels')
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise DataError(f'{self.source}: {len(self.texts)} texts but '
                            f'{len(self.text_pairs)} text pairs')

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, index):
        if self.text_pairs is not None:
            return (self.texts[index], self.text_pairs[index]), self.labels[index]
        return self.texts[index], self.labels[index]

    def subset(self, indices):
        """A new dataset of the examples at ``indices`` (a range, slice or list)."""
        if isinstance(indices, slice):
            indices = range(len(self))[indices]
        indices = list(indices)
        pairs = None if self.text_pairs is None else [self.text_pairs[i] for i in indices]
        return TextClassificationDataset([self.texts[i] for i in indices],
                                         [self.labels[i] for i in indices],
                                         list(self.label_names), source=self.source,
                                         text_pairs=pairs)


# ------------------------------------------------------------------------- readers
_NUMBER = re.compile(r'[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?')
_INDEX = re.compile(r'[0-9]{1,9}')
_ESCAPED_BYTE = re.compile('[\udc80-\udcff]')  # what errors='surrogateescape' makes of bad bytes
DATA_SUFFIXES = {'.csv': 'csv', '.tsv': 'csv', '.jsonl': 'jsonl', '.json': 'jsonl',
                 '.ndjson': 'jsonl', '.parquet': 'parquet'}
PARQUET_INSTALL = "pip install 'gluonbert[parquet]'"


def _number(value):
    """The exact value of a plain decimal number (``'10'``, ``'1.0'``, ``'-2e3'``), else None."""
    return decimal.Decimal(value) if _NUMBER.fullmatch(value) else None


def _kind(value):
    """A value's type in JSON words, for messages."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'a boolean'
    if isinstance(value, (int, float)):
        return f'a number ({value!r})'
    if isinstance(value, (list, tuple)):
        return 'an array'
    if isinstance(value, dict):
        return 'an object'
    return type(value).__name__


class _LabelMap:
    """Maps raw label values to class ids (see :func:`read_csv` for the rules)."""

    def __init__(self, declared):
        self.declared, self.numeric, self.by_index = None, False, False
        if declared is None:
            return
        names = [str(x).strip() for x in declared]
        if not names or '' in names:
            raise DataError(f'declared labels must be non-empty names, got {names!r}')
        values = [_number(name) for name in names]
        self.numeric = all(v is not None for v in values)
        keys = values if self.numeric else names
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise DataError(f'declared labels must be distinct: {names[i]!r} repeats '
                                f'{names[keys.index(key)]!r}')
        self.declared, self.values = names, values
        # '0', '1', ... as class indices, unless a declared name is itself a digit string
        self.by_index = not any(re.fullmatch('[0-9]+', name) for name in names)

    def names(self):
        return list(self.declared or BINARY_NAMES)

    def _unknown(self, where, value):
        if self.declared is None:
            return DataError(f'{where}: unknown label {value!r}; expected 0/1 or negative/'
                             f'positive, or declare the label set (labels=[...], --labels '
                             f'a,b,c)')
        how = (' (compared as numbers)' if self.numeric else
               f' or their indices 0-{len(self.declared) - 1}' if self.by_index else '')
        return DataError(f'{where}: unknown label {value!r}; accepted labels: '
                         f'{", ".join(self.declared)}{how}')

    def __call__(self, raw, where, column):
        if isinstance(raw, str):
            value = raw.strip()
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = str(int(raw)) if isinstance(raw, float) and raw.is_integer() else str(raw)
        else:
            raise DataError(f'{where}: {column!r} must be a string or a number, got '
                            f'{_kind(raw)}')
        number = _number(value)
        if self.declared is None:
            label = _BINARY_ALIASES.get(value.lower())
            if label is None and number is not None and number in (0, 1):
                label = int(number)
            if label is None:
                raise self._unknown(where, value)
            return label
        if self.numeric:
            if number is not None and number in self.values:
                return self.values.index(number)
        elif value in self.declared:
            return self.declared.index(value)
        elif self.by_index and _INDEX.fullmatch(value) and int(value) < len(self.declared):
            return int(value)
        raise self._unknown(where, value)


class _Rows:
    """Collects validated ``(text[, text_pair], label)`` rows into a dataset."""

    def __init__(self, path, text_column, label_column, labels, text_pair_column):
        columns = [text_column, label_column] + ([text_pair_column] if text_pair_column else [])
        if len(set(columns)) != len(columns):
            raise DataError(f'the text, label and text pair columns must differ, got '
                            f'{", ".join(map(repr, columns))}')
        self.path, self.columns = path, columns
        self.text_column, self.label_column = text_column, label_column
        self.text_pair_column = text_pair_column
        self.label_map = _LabelMap(labels)
        self.texts, self.ids = [], []
        self.pairs = [] if text_pair_column else None

    def _text(self, raw, where, column):
        if not isinstance(raw, str):
            raise DataError(f'{where}: {column!r} must be a string, got {_kind(raw)}')
        if not raw.strip():
            raise DataError(f'{where}: {column!r} is empty')
        return raw

    def add(self, where, row):
        """Add the row at ``where`` (``path:line``), a mapping of column to value."""
        text = self._text(row[self.text_column], where, self.text_column)
        if self.pairs is not None:
            pair = self._text(row[self.text_pair_column], where, self.text_pair_column)
        label = self.label_map(row[self.label_column], where, self.label_column)
        self.texts.append(text)
        self.ids.append(label)
        if self.pairs is not None:
            self.pairs.append(pair)

    def dataset(self, empty):
        if not self.texts:
            raise DataError(f'{self.path}: the dataset is empty: {empty}')
        return TextClassificationDataset(self.texts, self.ids, self.label_map.names(),
                                         source=self.path, text_pairs=self.pairs)


def check_data_file(path):
    """Raise :class:`DataError` unless ``path`` exists, is not a directory and has a suffix
    :func:`read_table` reads; returns the reader's kind (``'csv'``, ``'jsonl'``,
    ``'parquet'``)."""
    path = os.fspath(path)
    _check_exists(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in DATA_SUFFIXES:
        raise DataError(f'{path}: unsupported file type {suffix or "(none)"!r}; use .csv, '
                        f'.tsv, .jsonl or .parquet')
    return DATA_SUFFIXES[suffix]


def _check_exists(path):
    if os.path.isdir(path):
        raise DataError(f'{path}: is a directory, not a data file')
    if not os.path.exists(path):
        raise DataError(f'no such file: {path}')


def _bad_utf8(where, line_bytes, index):
    """The message for an undecodable byte at ``index`` of a line's bytes."""
    return DataError(f'{where}: invalid UTF-8 at byte {index + 1} of the line '
                     f'(0x{line_bytes[index]:02x}); the file must be UTF-8 encoded')


def _checked_lines(lines, path):
    """Yield the lines of a file read with ``errors='surrogateescape'``; a line holding an
    undecodable byte raises :class:`DataError` naming it."""
    for number, line in enumerate(lines, 1):
        escaped = _ESCAPED_BYTE.search(line)
        if escaped:
            raw = line.encode('utf-8', 'surrogateescape')
            index = len(line[:escaped.start()].encode('utf-8', 'surrogateescape'))
            raise _bad_utf8(f'{path}:{number}', raw, index)
        yield line


_FIELD_LIMIT = threading.Lock()
_field_limit_state = {'users': 0, 'saved': None}


@contextlib.contextmanager
def _unlimited_csv_fields():
    """Lift the csv module's field size limit (128 KiB by default) while reading; the
    previous limit is restored when the last reader finishes."""
    with _FIELD_LIMIT:
        if _field_limit_state['users'] == 0:
            limit = sys.maxsize
            while True:
                try:  # the limit is a C long: 32 bits on Windows
                    _field_limit_state['saved'] = csv.field_size_limit(limit)
                    break
                except OverflowError:
                    limit //= 2
        _field_limit_state['users'] += 1
    try:
        yield
    finally:
        with _FIELD_LIMIT:
            _field_limit_state['users'] -= 1
            if _field_limit_state['users'] == 0:
                csv.field_size_limit(_field_limit_state['saved'])


_QUOTING = {None: csv.QUOTE_MINIMAL, 'minimal': csv.QUOTE_MINIMAL, 'none': csv.QUOTE_NONE}


def _plural(n, word):
    return f'{n} {word}' if n == 1 else f'{n} {word}s'


def read_csv(path, *, text_column='text', label_column='label', labels=None, delimiter=None,
             text_pair_column=None, quoting=None):
    """Read a CSV (or TSV: ``.tsv`` suffix or ``delimiter='\\t'``) file with a header row.

    The file is streamed through the :mod:`csv` module; it must be UTF-8 (a BOM is
    skipped). Records end at ``\\n``, ``\\r\\n`` or ``\\r`` outside quotes; every other
    character (U+0085, U+2028, U+2029, form feed, NUL, emoji, ...) is text. A
    double-quoted field may hold the delimiter, quotes (doubled) and newlines. Blank lines
    are skipped; fields have no size limit.

    Parameters
    ----------
    path : str
    text_column, label_column : str
        Header names (surrounding spaces in the header are ignored).
    labels : list of str, optional
        The label set, in id order. Without it labels are binary: ``0``/``1`` (any number
        equal to them, e.g. ``1.0``), ``negative``/``positive`` or ``neg``/``pos`` (any
        case). Declared labels that are all numbers (``['10', '20']``) match by value:
        ``10`` and ``10.0`` are id 0 and ``1`` is an error. Other declared labels match
        exactly (after stripping spaces); when none of them is a digit string, ``'0'``,
        ``'1'``, ... are also accepted as ids. Any other label is an error.
    delimiter : str, optional
        Default: tab for ``.tsv``, else comma.
    text_pair_column : str, optional
        Second text of sentence-pair tasks; the dataset's ``text_pairs``.
    quoting : {'minimal', 'none'}, optional
        ``'minimal'`` (default: what the csv module and pandas write) or ``'none'``: quotes
        are plain text (GLUE's TSV files).

    Raises
    ------
    DataError
        Naming ``path:LINE`` (the line where the record starts): invalid UTF-8, a missing
        column, a record with more fields than the header (an unquoted delimiter in a text
        would otherwise cut it silently: quote such texts), a record too short to hold a
        needed column, an empty text, an unknown label; an empty file or a header without
        rows names the file.
    """
    path = os.fspath(path)
    _check_exists(path)
    if quoting not in _QUOTING:
        raise DataError(f"quoting must be 'minimal' or 'none', got {quoting!r}")
    if delimiter is None:
        delimiter = '\t' if path.lower().endswith('.tsv') else ','
    delimiter_name = {',': 'a comma', '\t': 'a tab'}.get(delimiter, repr(delimiter))
    rows = _Rows(path, text_column, label_column, labels, text_pair_column)
    with _unlimited_csv_fields(), \
            open(path, encoding='utf-8-sig', errors='surrogateescape', newline='') as f:
        reader = csv.reader(_checked_lines(f, path), delimiter=delimiter,
                            quoting=_QUOTING[quoting])
        positions = None
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader, None)
            except csv.Error as err:
                raise DataError(f'{path}:{reader.line_num}: {err}') from err
            if record is None:
                break
            if not record:  # a blank line
                continue
            where = f'{path}:{start}'
            if positions is None:
                header = [name.strip() for name in record]
                positions = {}
                for column in rows.columns:
                    if column not in header:
                        raise DataError(f'{where}: no column {column!r}; columns are: '
                                        f'{", ".join(map(repr, header))}')
                    if header.count(column) > 1:
                        raise DataError(f'{where}: column {column!r} appears '
                                        f'{header.count(column)} times in the header')
                    positions[column] = header.index(column)
                needed = max(positions.values()) + 1
                continue
            spans = ('' if reader.line_num == start else
                     f' (the record runs from line {start} to line {reader.line_num}: is a '
                     f'quote left open?)')
            if len(record) > len(header):
                raise DataError(f'{where}: row has {len(record)} fields but the header has '
                                f'{len(header)}; quote texts that contain {delimiter_name}'
                                f'{spans}')
            if len(record) < needed:
                raise DataError(f'{where}: row has {_plural(len(record), "field")} but the '
                                f'header has {len(header)}{spans}')
            rows.add(where, {column: record[i] for column, i in positions.items()})
    if positions is None:
        raise DataError(f'{path}: the file is empty: expected a header row')
    return rows.dataset('a header but no rows')


def _no_constant(name):
    raise ValueError(f'{name} is not valid JSON')


def read_jsonl(path, *, text_column='text', label_column='label', labels=None,
               text_pair_column=None):
    """Read JSON lines: one object per line with a text and a label field.

    Lines end at ``\\n`` (a ``\\r`` before it is dropped); U+2028 and the like inside a
    line are text. Blank lines are skipped. Texts must be JSON strings (not null, numbers
    or arrays); labels strings or numbers, matched as :func:`read_csv` describes.

    Raises
    ------
    DataError
        Naming ``path:LINE``: invalid UTF-8 or JSON, a line that is not an object, a
        missing field, a text that is not a non-empty string, an unknown label.
    """
    path = os.fspath(path)
    _check_exists(path)
    rows = _Rows(path, text_column, label_column, labels, text_pair_column)
    with open(path, 'rb') as f:
        for number, raw in enumerate(f, 1):
            where, skipped = f'{path}:{number}', 0
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, skipped = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
            raw = raw[:-1] if raw.endswith(b'\n') else raw
            raw = raw[:-1] if raw.endswith(b'\r') else raw
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError as err:
                raise _bad_utf8(where, b'\0' * skipped + raw, err.start + skipped) from err
            if not line.strip(' \t\r'):
                continue
            try:
                row = json.loads(line, parse_constant=_no_constant)
            except json.JSONDecodeError as err:
                raise DataError(f'{where}: invalid JSON: {err.msg} (column {err.colno})') \
                    from err
            except (ValueError, RecursionError) as err:
                raise DataError(f'{where}: invalid JSON: {err}') from err
            if not isinstance(row, dict):
                raise DataError(f'{where}: expected a JSON object, got {_kind(row)}')
            for column in rows.columns:
                if column not in row:
                    raise DataError(f'{where}: no field {column!r}; fields are: '
                                    f'{", ".join(map(repr, row)) or "(none)"}')
            rows.add(where, row)
    return rows.dataset('no JSON lines')


def _import_parquet(path):
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise EnvironmentProblem(f'{path}: reading Parquet files needs pyarrow: '
                                 f'{PARQUET_INSTALL}') from err
    return pyarrow, pyarrow.parquet


def read_parquet(path, *, text_column='text', label_column='label', labels=None,
                 text_pair_column=None):
    """Read a Parquet file (needs ``pyarrow``: ``pip install 'gluonbert[parquet]'``),
    streamed in record batches. Texts must be strings (not null); labels strings or
    numbers, matched as :func:`read_csv` describes; errors name ``path: row N`` (from 1)."""
    path = os.fspath(path)
    _check_exists(path)
    pyarrow, parquet = _import_parquet(path)
    rows = _Rows(path, text_column, label_column, labels, text_pair_column)
    try:
        table = parquet.ParquetFile(path)
        names = table.schema_arrow.names
        for column in rows.columns:
            if column not in names:
                raise DataError(f'{path}: no column {column!r}; columns are: '
                                f'{", ".join(map(repr, names))}')
        offset = 0
        for batch in table.iter_batches(batch_size=8192, columns=rows.columns):
            values = {c: batch.column(batch.schema.get_field_index(c)).to_pylist()
                      for c in rows.columns}
            for i in range(batch.num_rows):
                rows.add(f'{path}: row {offset + i + 1}', {c: values[c][i] for c in rows.columns})
            offset += batch.num_rows
    except pyarrow.ArrowException as err:
        message = ' '.join(str(err).split())
        raise DataError(f'{path}: not a readable Parquet file ({message})') from err
    return rows.dataset('no rows')


def _decode_error(path, err, data=None):
    line = data[:err.start].count(b'\n') + 1 if data is not None else '?'
    return DataError(f'{path}:{line}: invalid UTF-8 at byte {err.start}; the file must be '
                     f'UTF-8 encoded')


def _read_text(path):
    if not os.path.isfile(path):
        raise DataError(f'no such file: {path}')
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as err:
        raise _decode_error(path, err, data) from err


_READERS = {'csv': read_csv, 'jsonl': read_jsonl, 'parquet': read_parquet}


def read_table(path, **options):
    """Read a ``.csv``, ``.tsv``, ``.jsonl`` (``.json``, ``.ndjson``) or ``.parquet`` file by
    its suffix; ``options`` go to :func:`read_csv`, :func:`read_jsonl` or
    :func:`read_parquet` (``delimiter`` and ``quoting`` only to CSV)."""
    kind = check_data_file(path)
    if kind != 'csv':
        for option in ('delimiter', 'quoting'):
            if options.pop(option, None) is not None:
                raise DataError(f'{path}: {option} applies to .csv and .tsv files only')
    return _READERS[kind](os.fspath(path), **options)


def read_aclimdb(root, split='train'):
    """Read the Stanford ``aclImdb`` tree: ``root/<split>/{pos,neg}/*.txt``."""
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    texts, ids = [], []
    for label, folder in enumerate(('neg', 'pos')):
        directory = os.path.join(root, split, folder)
        if not os.path.isdir(directory):
            raise DataError(f'{directory} is missing: expected the aclImdb layout '
                            f'{split}/pos and {split}/neg with one review per .txt file')
        for path in sorted(glob.glob(os.path.join(directory, '*.txt'))):
            texts.append(_read_text(path).strip())
            ids.append(label)
    return TextClassificationDataset(texts, ids, list(BINARY_NAMES),
                                     source=os.path.join(root, split))


def _reachable(host, port=443, timeout=3.0):
    """TCP reachability within ``timeout`` s (name resolution included, via a thread)."""
    if os.environ.get('GLUONBERT_OFFLINE') == '1':
        return False
    result = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


# gluonnlp.data.IMDB's files and their sha1, as its downloader checks them.
IMDB_SHA1 = {'train': '516a0ba06bca4e32ee11da2e129f4f871dff85dc',
             'test': '7d59bd8899841afdc1c75242815260467495b64a'}


def load_imdb(split='train', root=None):
    """IMDB through ``gluonnlp.data.IMDB`` (rating >= 5 is positive); needs the download or a
    cached copy. Fails within seconds, with instructions, when neither is available."""
    import gluonnlp
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = root or os.path.join(gluonnlp.base.get_home_dir(), 'datasets', 'imdb')
    file_name, sha1 = f'{split}.json', IMDB_SHA1[split]
    path = os.path.join(os.path.expanduser(root), file_name)
    from .pretrained import _sha1
    if not os.path.exists(path) or _sha1(path) != sha1:
        repo = os.environ.get('MXNET_GLUON_REPO',
                              'https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/')
        host = repo.split('//', 1)[-1].split('/', 1)[0]
        if not _reachable(host):
            raise DataError(f'IMDB is not cached ({path} is missing or damaged) and its '
                            f'download host {host} is not reachable. Put {file_name} in '
                            f'{root}, or use --dataset /path/to/aclImdb or --train/--test '
                            f'CSV files')
    dataset = gluonnlp.data.IMDB(split, root=root)
    texts = [text for text, _ in dataset]
    ids = [1 if score >= 5 else 0 for _, score in dataset]
    return TextClassificationDataset(texts, ids, list(BINARY_NAMES), source=f'IMDB {split}')


def load_sample_reviews(split='train'):
    """The bundled movie reviews (balanced positive/negative), ``'train'`` or ``'test'``."""
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return read_jsonl(os.path.join(SAMPLE_DIR, f'{split}.jsonl'))


def load_dataset(name_or_path, split='train', *, text_column=None, label_column=None,
                 labels=None, text_pair_column=None):
    """``'sample'`` (bundled), ``'imdb'`` (download), an ``aclImdb`` directory, or a data
    file (:func:`read_table`; ``split`` is then unused).

    The keyword arguments go to :func:`read_table` and apply to data files only.
    """
    options = {'text_column': text_column, 'label_column': label_column, 'labels': labels,
               'text_pair_column': text_pair_column}
    options = {k: v for k, v in options.items() if v is not None}
    if os.path.splitext(os.fspath(name_or_path))[1].lower() in DATA_SUFFIXES:
        return read_table(name_or_path, **options)
    if options:
        raise DataError(f'{", ".join(options)} apply to data files (.csv, .tsv, .jsonl, '
                        f'.parquet), not to {name_or_path!r}')
    if name_or_path == 'sample':
        return load_sample_reviews(split)
    if name_or_path == 'imdb':
        return load_imdb(split)
    if os.path.isdir(name_or_path):
        return read_aclimdb(name_or_path, split)
    raise DataError(f"unknown dataset {name_or_path!r}: use 'sample', 'imdb', an aclImdb "
                    f"directory or a .csv, .tsv, .jsonl or .parquet file")


# ----------------------------------------------------------------------- transform
class BERTTransform:
    """Text (or a text pair) to ``(input_ids, valid_length, segments)`` without padding.

    Parameters
    ----------
    tokenizer : callable str -> list of str
    vocab : Vocab
    max_len : int, default 128
        Longest output, [CLS] and [SEP]s included.
    truncate : {'head', 'head+tail'}
        ``head`` keeps the first tokens. ``head+tail`` keeps the first ``head_tokens`` and
        the last ``max_len - 2 - head_tokens`` tokens (Sun et al. 2019: best for long
        reviews); when ``max_len - 2 <= head_tokens`` it is the same as ``head``.
    pair : bool
        Inputs are ``(text_a, text_b)``; the longer side is trimmed until the pair fits.
    head_tokens : int, default 128
    """

    def __init__(self, tokenizer, vocab, *, max_len=128, truncate='head', pair=False,
                 head_tokens=128):
        if truncate not in ('head', 'head+tail'):
            raise ValueError(f"truncate must be 'head' or 'head+tail', got {truncate!r}")
        minimum = 4 if pair else 3
        if not isinstance(max_len, int) or max_len < minimum:
            raise ValueError(f'max_len must be an integer >= {minimum}, got {max_len!r}')
        self.tokenizer, self.vocab = tokenizer, vocab
        self.max_len, self.truncate, self.pair = max_len, truncate, pair
        self.head_tokens = head_tokens

    def _truncate_single(self, ids):
        budget = self.max_len - 2
        if len(ids) <= budget:
            return ids
        if self.truncate == 'head+tail' and budget > self.head_tokens:
            tail = budget - self.head_tokens
            return ids[:self.head_tokens] + ids[len(ids) - tail:]
        return ids[:budget]

    def __call__(self, text):
        vocab = self.vocab
        if self.pair:
            first, second = (vocab[self.tokenizer(t)] for t in text)
            while len(first) + len(second) > self.max_len - 3:
                (first if len(first) >= len(second) else second).pop()
            ids = [vocab.cls_id] + first + [vocab.sep_id] + second + [vocab.sep_id]
            segments = [0] * (len(first) + 2) + [1] * (len(second) + 1)
        else:
            body = self._truncate_single(vocab[self.tokenizer(text)])
            ids = [vocab.cls_id] + body + [vocab.sep_id]
            segments = [0] * len(ids)
        return (np.asarray(ids, dtype=np.int32), len(ids), np.asarray(segments, dtype=np.int32))


class ClassificationTransform:
    """``(text, label)`` to ``(input_ids, valid_length, segments, label)``."""

    def __init__(self, bert_transform):
        self.bert_transform = bert_transform

    def __call__(self, text, label):
        input_ids, valid_length, segments = self.bert_transform(text)
        return input_ids, valid_length, segments, label


# ------------------------------------------------------------------------ batching
def batchify_fn(pad_id, round_to=None):
    """Pad a list of ``(input_ids, valid_length, segments, label)`` into NDArrays.

    ``input_ids`` are padded with ``pad_id``; ``segments`` with 0 (padding belongs to no
    second sentence, and the pad id may not be a valid segment id). ``round_to`` pads the
    length up to a multiple (8 suits GPU tensor cores).
    """
    import mxnet as mx

    def batchify(samples):
        longest = max(int(s[1]) for s in samples)
        if round_to:
            longest = -(-longest // round_to) * round_to
        words = np.full((len(samples), longest), pad_id, dtype=np.float32)
        segments = np.zeros((len(samples), longest), dtype=np.float32)
        for row, (ids, length, segs, _) in enumerate(samples):
            words[row, :length] = ids
            segments[row, :length] = segs
        valid_length = np.array([s[1] for s in samples], dtype=np.float32)
        labels = np.array([s[3] for s in samples], dtype=np.float32)
        return (mx.nd.array(words, dtype='float32'), mx.nd.array(valid_length),
                mx.nd.array(segments), mx.nd.array(labels))
    return batchify


class BucketSampler:
    """Batches of similar lengths, reshuffled reproducibly each epoch.

    Each epoch shuffles the examples, cuts the order into chunks of ``batch_size *
    num_buckets``, sorts each chunk by length and cuts it into batches, then shuffles the
    batches. Long and short examples stop sharing batches, so little padding is wasted,
    while batches still vary from epoch to epoch. Without shuffling, examples are sorted by
    length (deterministic evaluation order).

    Yields lists of indices; ``len(sampler)`` is the number of batches.
    """

    def __init__(self, lengths, batch_size, *, num_buckets=10, shuffle=True, seed=0):
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.lengths = np.asarray(lengths)
        self.batch_size, self.num_buckets = batch_size, max(1, num_buckets)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def batches(self):
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind='stable')
            return [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        rng = np.random.RandomState((self.seed * 1_000_003 + self.epoch) % (2 ** 32))
        order = rng.permutation(n)
        chunk = self.batch_size * self.num_buckets
        batches = []
        for start in range(0, n, chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(self.lengths[part], kind='stable')]
            batches.extend(part[i:i + self.batch_size].tolist()
                           for i in range(0, len(part), self.batch_size))
        rng.shuffle(batches)
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size  # batches


class _PlainSampler(BucketSampler):
    """Unbucketed batches: shuffled (or in order), cut every batch_size examples."""

    def batches(self):
        n = len(self.lengths)
        order = np.arange(n)
        if self.shuffle:
            order = np.random.RandomState(
                (self.seed * 1_000_003 + self.epoch) % (2 ** 32)).permutation(n)
        return [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]


def padding_waste(lengths, batches, round_to=None):
    """Fraction of token slots in padded batches that are padding."""
    lengths = np.asarray(lengths)
    used = total = 0
    for batch in batches:
        batch_lengths = lengths[list(batch)]
        longest = batch_lengths.max()
        if round_to:
            longest = -(-longest // round_to) * round_to
        used += batch_lengths.sum()
        total += longest * len(batch_lengths)
    return float(1 - used / total) if total else 0.0


class _Loader:
    """Batches of pre-transformed examples; ``len()``, ``batch_sampler.set_epoch`` and
    ``padding_waste`` as the training loop expects."""

    def __init__(self, samples, batch_sampler, batchify, round_to):
        self.samples, self.batch_sampler, self._batchify = samples, batch_sampler, batchify
        lengths = [s[1] for s in samples]
        self.padding_waste = padding_waste(lengths, batch_sampler.batches(), round_to)
        plain = _PlainSampler(lengths, batch_sampler.batch_size, shuffle=batch_sampler.shuffle,
                              seed=batch_sampler.seed)
        self.padding_waste_unbucketed = padding_waste(lengths, plain.batches(), round_to)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        for indices in self.batch_sampler:
            yield self._batchify([self.samples[i] for i in indices])


def make_dataloader(dataset, transform, *, batch_size=32, shuffle=True, bucket=True, seed=0,
                    pad_id=None, round_to=None, num_buckets=10, progress=None, num_shards=1,
                    shard_index=0, even_shards=True):
    """Transform every example once, up front, and batch them by length.

    Parameters
    ----------
    dataset : TextClassificationDataset or sequence of (text, label)
        Sentence pairs (``text_pairs``, or items ``((text_a, text_b), label)``) need a
        ``pair=True`` transform: segments are then 0 for [CLS] A [SEP], 1 for B [SEP].
    transform : BERTTransform
    bucket : bool
        Length-bucketed batches (:class:`BucketSampler`); False batches in data order.
    pad_id : int, optional
        Id that pads ``input_ids``; default: the transform vocabulary's ``pad_id``.
    num_shards, shard_index : int
        Distributed training: keep only shard ``shard_index`` of ``num_shards``, every
        ``num_shards``-th example (see :func:`gluonbert.distributed.shard_indices`); only
        those are tokenized. ``batch_size`` is then per worker.
    even_shards : bool
        Drop the last ``len(dataset) % num_shards`` examples so every shard has the same
        size, hence every worker the same number of batches (training); False keeps every
        example (evaluation, whose counts are summed over the workers).

    Returns
    -------
    An iterable of ``(input_ids, valid_length, segments, label)`` batches with ``len()``,
    ``.batch_sampler`` (call ``set_epoch``), ``.padding_waste`` and
    ``.padding_waste_unbucketed``.
    """
    from tqdm.auto import tqdm
    if pad_id is None:
        pad_id = transform.vocab.pad_id
    pairs = getattr(dataset, 'text_pairs', None) is not None
    if isinstance(dataset, TextClassificationDataset) and \
            pairs != bool(getattr(transform, 'pair', pairs)):
        raise ValueError(f'{dataset.source} holds {"sentence pairs" if pairs else "single texts"}'
                         f': use BERTTransform(..., pair={pairs})')
    classify = ClassificationTransform(transform)
    indices = range(len(dataset))
    if num_shards != 1 or shard_index != 0:
        from .distributed import shard_indices
        indices = shard_indices(len(dataset), num_shards, shard_index, even=even_shards)
        if not indices and even_shards:
            raise DataError(f'{getattr(dataset, "source", "the dataset")}: {len(dataset)} '
                            f'examples cannot fill {num_shards} equal shards')
    show = len(indices) > 2000 if progress is None else progress
    samples = [classify(*dataset[i]) for i in tqdm(indices, desc='tokenizing',
                                                   unit='text', disable=not show, leave=False)]
    lengths = [s[1] for s in samples]
    sampler_cls = BucketSampler if bucket else _PlainSampler
    sampler = sampler_cls(lengths, batch_size, num_buckets=num_buckets, shuffle=shuffle,
                          seed=seed)
    return _Loader(samples, sampler, batchify_fn(pad_id, round_to), round_to)
