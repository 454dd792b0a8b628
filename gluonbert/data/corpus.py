"""Pre-training corpora, read as a stream of documents (each a list of sentences).

Formats, by suffix:

- ``.txt`` (or any other suffix): one sentence per line, a blank line between documents;
- ``.csv``/``.tsv``/``.jsonl``/``.json`` (JSON lines): one document per row, in a text
  column, split into sentences with :func:`split_sentences`.

:func:`iter_documents` streams any number of files (memory holds one document at a time) and
reports the bytes it has read, for progress bars; :func:`read_corpus` reads one small file
into a list. Errors are :class:`~gluonbert.errors.DataError` naming ``file:line``.
"""
import csv
import glob
import io
import itertools
import os
import re

from ..errors import DataError
from .readers import guess_delimiter, json_line, unlimited_csv_fields, utf16_hint

__all__ = ['split_sentences', 'expand_inputs', 'iter_documents', 'read_corpus',
           'TABLE_SUFFIXES']

TABLE_SUFFIXES = ('.csv', '.tsv', '.jsonl', '.json')
_SENTENCE_END = re.compile(r'(?<=[.!?])["\')\]]*\s+(?=["\'(\[]?[A-Z0-9])')
_HTML_BREAK = re.compile(r'<br\s*/?>', re.IGNORECASE)


def split_sentences(text):
    """Split a document into sentences (punctuation followed by a capital; HTML breaks)."""
    sentences = []
    for block in _HTML_BREAK.split(text):
        sentences.extend(s.strip() for s in _SENTENCE_END.split(block.strip()) if s.strip())
    return sentences


def expand_inputs(patterns):
    """The files that ``patterns`` (paths, folders or glob patterns) name, each pattern's
    matches sorted, in the order given, each file once. Raises DataError for a pattern that
    matches no file."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    paths, seen = [], set()
    for pattern in patterns:
        pattern = os.fspath(pattern)
        if os.path.isdir(pattern):  # a folder: its files (not hidden ones), sorted
            matches = sorted(os.path.join(pattern, name) for name in os.listdir(pattern)
                             if not name.startswith('.'))
        else:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise DataError(_no_match(pattern))
        for path in matches:
            path = os.path.abspath(path)
            if path not in seen:
                seen.add(path)
                paths.append(path)
    return paths


def _no_match(pattern):
    """Why ``pattern`` names no corpus file, in one line."""
    if glob.has_magic(pattern):
        return f'no corpus file matches {pattern}'
    if os.path.isdir(pattern):
        return f'the folder {pattern} holds no corpus files (hidden ones are left out)'
    if os.path.islink(pattern):
        return f'corpus file not found: {pattern} is a broken link'
    return f'corpus file not found: {pattern}'


class _Counted(io.RawIOBase):
    """A binary file that counts the bytes read through it (the progress of a stream)."""

    def __init__(self, raw, counter):
        super().__init__()
        self.raw, self.counter = raw, counter

    def readable(self):
        return True

    def readinto(self, buffer):
        count = self.raw.readinto(buffer)
        self.counter[0] += count or 0
        return count

    def close(self):
        self.raw.close()
        super().close()


def _lines(binary, path):
    """The lines of a binary file, decoded one by one (so an error names its line)."""
    for number, raw in enumerate(binary, 1):
        try:
            yield raw.decode('utf-8-sig' if number == 1 else 'utf-8')
        except UnicodeDecodeError as err:
            hint = utf16_hint(raw) if number == 1 else ''
            raise DataError(f'{path}:{number}: not valid UTF-8 ({err.reason} at byte '
                            f'{err.start} of the line){hint}') from None


def iter_documents(paths, *, text_column='text', bytes_read=None):
    """Documents (lists of non-empty sentences) of ``paths`` in order, streamed.

    ``bytes_read``: a one-item list, increased by the bytes read (for a progress bar).
    Empty documents are skipped. Raises DataError naming ``file:line`` for invalid UTF-8
    or JSON, or a missing text column.
    """
    counter = bytes_read if bytes_read is not None else [0]
    for path in paths:
        suffix = os.path.splitext(path)[1].lower()
        try:
            raw = open(path, 'rb', buffering=0)  # closed by the with below
        except OSError as err:
            raise DataError(f'{path}: cannot read it ({err.strerror})') from None
        with raw:
            lines = _lines(io.BufferedReader(_Counted(raw, counter), 1 << 20), path)
            if suffix in TABLE_SUFFIXES:
                for _, document in _table_documents(path, lines, suffix, text_column):
                    sentences = split_sentences(document)
                    if sentences:
                        yield sentences
                continue
            current = []
            for line in lines:
                line = line.strip()
                if line:
                    current.append(line)
                elif current:
                    yield current
                    current = []
            if current:
                yield current


def _table_documents(path, lines, suffix, column):
    """``(line, text)`` of each row of a CSV/TSV or JSON-lines file."""
    if suffix in ('.jsonl', '.json'):
        for number, row in enumerate(lines, 1):
            if not row.strip():
                continue
            record = json_line(row, f'{path}:{number}')
            if not isinstance(record, dict):
                raise DataError(f'{path}:{number}: expected a JSON object, got '
                                f'{type(record).__name__}')
            if column not in record:
                raise DataError(f'{path}:{number}: no {column!r} field; fields: '
                                f'{", ".join(record)}')
            value = record[column]
            if value is not None and not isinstance(value, str):
                raise DataError(f'{path}:{number}: {column!r} is {type(value).__name__}, '
                                f'not text')
            yield number, value or ''
        return
    header_line = next(lines, '')
    delimiter = '\t' if suffix == '.tsv' else guess_delimiter(header_line)
    with unlimited_csv_fields():  # a document may be longer than csv's 128 KiB
        yield from _csv_documents(path, itertools.chain([header_line], lines), delimiter,
                                  column)


def _csv_documents(path, lines, delimiter, column):
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None or column not in header:
            raise DataError(f'{path}:1: no {column!r} column; columns: '
                            f'{", ".join(header or [])}')
        where = header.index(column)
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(header):
                raise DataError(f'{path}:{reader.line_num}: {len(row)} fields, the header has '
                                f'{len(header)}')
            yield reader.line_num, row[where]
    except csv.Error as err:
        raise DataError(f'{path}:{reader.line_num}: {err}') from err


def read_corpus(path, *, text_column='text'):
    """The documents of one corpus file, as lists of sentences (see the module's formats).

    Raises DataError (naming the file) for an empty corpus or fewer than 2 documents, which
    next-sentence prediction needs for its negatives.
    """
    if not os.path.isfile(path):
        raise DataError(f'corpus file not found: {path}')
    documents = list(iter_documents([path], text_column=text_column))
    if not documents:
        raise DataError(f'{path}: the corpus is empty')
    if len(documents) < 2:
        raise DataError(f'{path}: the corpus has 1 document; next-sentence prediction needs '
                        f'at least 2 (separate documents with a blank line)')
    return documents
