"""Readers of labelled text files: CSV/TSV, JSON lines and Parquet into a
:class:`TextClassificationDataset`, with the label rules they share."""
import codecs
import contextlib
import csv
import dataclasses
import decimal
import itertools
import json
import os
import re
import sys
import threading

from ..errors import DataError, EnvironmentProblem

__all__ = ['TextClassificationDataset', 'read_csv', 'read_jsonl', 'read_parquet', 'read_table',
           'check_data_file', 'DATA_SUFFIXES', 'BINARY_NAMES', 'PARQUET_INSTALL']

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


def utf16_hint(first_line_bytes):
    """What to tell about a file whose first line starts with a UTF-16 byte-order mark
    (as a suffix of an invalid-UTF-8 message), else ''."""
    if first_line_bytes.startswith((b'\xff\xfe', b'\xfe\xff')):
        return " (it looks like UTF-16, e.g. Excel's 'Unicode Text': save it as UTF-8)"
    return ''


def _bad_utf8(where, line_bytes, index):
    """The message for an undecodable byte at ``index`` of a line's bytes."""
    hint = utf16_hint(line_bytes) if index == 0 else ''
    return DataError(f'{where}: invalid UTF-8 at byte {index + 1} of the line '
                     f'(0x{line_bytes[index]:02x}); the file must be UTF-8 encoded{hint}')


_DELIMITER_NAMES = {',': 'a comma', '\t': 'a tab', ';': 'a semicolon', '|': 'a vertical bar'}


def guess_delimiter(header):
    """The delimiter of a CSV whose header row is the line ``header``: a comma, unless the
    row is one field at commas but several at semicolons (what Excel writes where the
    decimal mark is a comma), tabs or vertical bars."""
    if len(next(csv.reader([header]), [])) > 1:
        return ','
    for delimiter in (';', '\t', '|'):
        if len(next(csv.reader([header], delimiter=delimiter), [])) > 1:
            return delimiter
    return ','


def _first_line(path):
    """The first non-blank line of a text file ('' if none in its first 1,000 lines)."""
    with open(path, encoding='utf-8-sig', errors='replace', newline='') as f:
        return next((line for line in itertools.islice(f, 1000) if line.strip()), '')


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
def unlimited_csv_fields():
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
        Default: tab for ``.tsv``; else a comma, unless the header row is a single field
        with commas but splits at semicolons (Excel's CSV where the decimal mark is a
        comma), tabs or vertical bars: then that one.
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
        delimiter = '\t' if path.lower().endswith('.tsv') else guess_delimiter(_first_line(path))
    delimiter_name = _DELIMITER_NAMES.get(delimiter, repr(delimiter))
    rows = _Rows(path, text_column, label_column, labels, text_pair_column)
    with unlimited_csv_fields(), \
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


class _RepeatedKey(ValueError):
    """A JSON object with a key twice: Python's json keeps the last value silently."""


def _unique_keys(pairs):
    row = {}
    for key, value in pairs:
        if key in row:
            raise _RepeatedKey(f'the field {key!r} appears twice in one object (which value '
                               f'is meant?)')
        row[key] = value
    return row


def json_line(line, where):
    """The JSON value of one line of a JSON-lines file, strictly: a repeated key, ``NaN``/
    ``Infinity`` and nesting Python cannot parse are one-line DataErrors at ``where``
    (``path:LINE``)."""
    try:
        return json.loads(line, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(f'{where}: invalid JSON: {err.msg} (column {err.colno})') from None
    except _RepeatedKey as err:
        raise DataError(f'{where}: {err}') from None
    except (ValueError, RecursionError) as err:
        raise DataError(f'{where}: invalid JSON: {err}') from None


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
        field that appears twice, a missing field, a text that is not a non-empty string,
        an unknown label.
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
            row = json_line(line, where)
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

