"""Reading files gluonbert did not necessarily write: strict JSON, checked fields, and the
tensor headers of weight files, all before anything is built or allocated.

- :func:`load_json`: JSON with a size and nesting bound, duplicate keys and ``NaN``/
  ``Infinity`` refused (Python's ``json`` accepts all three, and recurses without bound);
- :class:`Fields`: typed, ranged reads of a JSON object's fields, each failure one line that
  names the file, the field and what was expected;
- :func:`safetensors_header` / :func:`ndarray_file_header`: ``{name: (dtype, shape)}`` of a
  ``.safetensors`` or ``mx.nd.save`` file, read from its header without loading a tensor.

Every error is the ``error`` class a caller passes (a :class:`~gluonbert.errors.
GluonbertError` subclass), so a model directory's problem is a ``ModelError`` and a
checkpoint's a ``CheckpointError``. This module imports nothing heavy (no MXNet, no numpy).
"""
import json
import math
import os
import re
import struct

__all__ = ['load_json', 'parse_json', 'Fields', 'safetensors_header', 'ndarray_file_header',
           'MAX_JSON_BYTES', 'MAX_JSON_DEPTH', 'FLOAT_DTYPES']

MAX_JSON_BYTES = 64 << 20  # no file gluonbert reads as JSON is near this
MAX_JSON_DEPTH = 64        # the deepest file gluonbert writes nests 5 levels
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r'[\[\]{}]')

# dtype names as numpy spells them, for both header readers
FLOAT_DTYPES = ('float16', 'bfloat16', 'float32', 'float64')


def _nesting_depth(text):
    """The deepest nesting of arrays/objects in JSON ``text`` (strings skipped), counted
    without recursion so that a hostile file cannot exhaust the stack."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if match.group() in '[{' else -1
        deepest = max(deepest, depth)
    return deepest


def _refuse_duplicates(pairs):
    value = {}
    for key, item in pairs:
        if key in value:
            raise ValueError(f'the key {key!r} appears twice in one object')
        value[key] = item
    return value


def _refuse_constant(name):
    raise ValueError(f'{name} is not a JSON number')


def parse_json(text, where, what, error, *, max_depth=MAX_JSON_DEPTH):
    """Parse JSON ``text`` strictly (see the module); ``where`` (a path) and ``what`` name it
    in the one-line ``error``."""
    depth = _nesting_depth(text)
    if depth > max_depth:
        raise error(f'{where}: damaged {what} (JSON nested {depth} levels deep; at most '
                    f'{max_depth} are read)')
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates,
                          parse_constant=_refuse_constant)
    except ValueError as err:  # JSONDecodeError included
        raise error(f'{where}: damaged {what} (not valid JSON: {err})') from None


def load_json(path, what, error, *, kind=dict, max_bytes=MAX_JSON_BYTES):
    """The JSON value of the file ``path``, which must be a ``kind`` (default an object).

    Raises ``error`` (one line naming ``path`` and ``what`` it is) for a missing or
    unreadable file, one over ``max_bytes``, text that is not UTF-8 or not strict JSON
    (see :func:`parse_json`), or a value of another kind.
    """
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise error(f'{path}: too large for a {what} ({size:,} bytes; at most '
                        f'{max_bytes:,} are read)')
        with open(path, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        raise error(f'{path} is missing') from None
    except IsADirectoryError:
        raise error(f'{path}: a directory, where a {what} file was expected') from None
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as err:
        raise error(f'{path}: damaged {what} (not UTF-8 text: byte {err.start})') from None
    if text.startswith('\ufeff'):  # a byte order mark, as some Windows editors write
        text = text[1:]
    value = parse_json(text, path, what, error)
    if not isinstance(value, kind):
        raise error(f'{path}: damaged {what} (the file holds {_describe(value)}, not '
                    f'{_KINDS[kind]})')
    return value


_KINDS = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string',
          list: 'a list', dict: 'an object', type(None): 'null'}


def _describe(value):
    for kind in (bool, int, float, str, list, dict, type(None)):
        if isinstance(value, kind):
            return _KINDS[kind]
    return type(value).__name__


class Fields:
    """Checked reads of the fields of one JSON object from a file.

    ``Fields(obj, path, what, error, hint)``; each read raises ``error`` with one line:
    ``PATH: damaged WHAT (FIELD must be EXPECTED, got VALUE); HINT``.

    Parameters
    ----------
    obj : dict
    path : str
        The file, for the message.
    what : str
        What the file is ('model manifest', 'run state').
    error : type
        The GluonbertError subclass to raise.
    hint : str, optional
        What the user can do, appended to every message.
    prefix : str, optional
        The dotted position of ``obj`` in its file ('tokenizer.'), for field names.
    """

    def __init__(self, obj, path, what, error, hint='', prefix=''):
        self.obj, self.path, self.what, self.error = obj, path, what, error
        self.hint, self.prefix = hint, prefix

    def fail(self, key, expected, value=None, *, shown=True):
        """Raise the one-line error for field ``key``."""
        got = f', got {_short(value)}' if shown else ''
        hint = f'; {self.hint}' if self.hint else ''
        raise self.error(f'{self.path}: damaged {self.what} ({_name(self.prefix + key)} must be '
                         f'{expected}{got}){hint}')

    def has(self, key):
        return key in self.obj

    def get(self, key, kind, *, default=..., low=None, high=None, choices=None,
            nullable=False):
        """The field ``key``, checked.

        ``kind`` is bool, int, float (an int is accepted and converted), str, list or dict;
        ``default`` (if given) is returned when the field is absent; ``low``/``high`` bound
        numbers (inclusive) and the lengths of strings and lists; ``choices`` lists the
        allowed values; ``nullable`` lets ``null`` through as None.
        """
        if key not in self.obj:
            if default is not ...:
                return default
            self.fail(key, f'present ({_KINDS[kind]})', shown=False)
        value = self.obj[key]
        if value is None and nullable:
            return None
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            self.fail(key, _KINDS[kind] + (' or null' if nullable else ''), value)
        if kind is float and not math.isfinite(value):
            self.fail(key, 'a finite number', value)
        if choices is not None and value not in choices:
            self.fail(key, 'one of ' + ', '.join(map(repr, choices)), value)
        measure = len(value) if kind in (str, list) else value
        noun = ' long' if kind in (str, list) else ''
        if low is not None and measure < low or high is not None and measure > high:
            bounds = (f'at least {low}' if high is None else f'at most {high}' if low is None
                      else f'between {low} and {high}')
            self.fail(key, f'{bounds}{noun}', value)
        return value

    def object(self, key, *, default=...):
        """The sub-object ``key`` as a :class:`Fields` (its names prefixed ``key.``)."""
        value = self.get(key, dict, default=default)
        if value is None or value is default and default is not ...:
            return value
        return Fields(value, self.path, self.what, self.error, self.hint,
                      f'{self.prefix}{key}.')

    def only(self, known):
        """Refuse fields other than ``known``."""
        extra = sorted(set(self.obj) - set(known))
        if extra:
            hint = f'; {self.hint}' if self.hint else ''
            raise self.error(f'{self.path}: damaged {self.what} (unknown field '
                             f'{_name(self.prefix + extra[0])}; known: '
                             f'{", ".join(sorted(known))})'
                             f'{hint}')


def _name(key):
    """A field name as a message shows it: quoted (JSON escapes) if it holds anything but
    printable characters, so that a hostile key cannot break the one-line message."""
    return key if key.isprintable() and len(key) <= 80 else _short(key, 80)


def _short(value, limit=60):
    text = json.dumps(value) if isinstance(value, (dict, list, str, bool, type(None))) \
        else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


# ---------------------------------------------------------------------- tensor headers
_SAFETENSORS_DTYPES = {'F16': 'float16', 'BF16': 'bfloat16', 'F32': 'float32',
                       'F64': 'float64', 'I8': 'int8', 'U8': 'uint8', 'I16': 'int16',
                       'I32': 'int32', 'I64': 'int64', 'BOOL': 'bool', 'U16': 'uint16',
                       'U32': 'uint32', 'U64': 'uint64', 'F8_E4M3': 'float8_e4m3',
                       'F8_E5M2': 'float8_e5m2'}
_SAFETENSORS_SIZES = {'float16': 2, 'bfloat16': 2, 'float32': 4, 'float64': 8, 'int8': 1,
                      'uint8': 1, 'int16': 2, 'int32': 4, 'int64': 8, 'bool': 1,
                      'uint16': 2, 'uint32': 4, 'uint64': 8, 'float8_e4m3': 1,
                      'float8_e5m2': 1}


def safetensors_header(path, error):
    """``{name: (dtype, shape)}`` of a ``.safetensors`` file, from its JSON header.

    The header is checked as the format defines it (a little-endian u64 length, a JSON
    object of ``{dtype, shape, data_offsets}``, offsets inside the file, sizes that match
    the shapes), so that a damaged file is one line here instead of an error in the reader.
    """
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(8)
        if len(head) < 8:
            raise error(f'{path}: not a safetensors file ({size} bytes)')
        length = struct.unpack('<Q', head)[0]
        if length > min(size - 8, 100 << 20):
            raise error(f'{path}: not a safetensors file (header length {length:,} for a '
                        f'file of {size:,} bytes)')
        raw = f.read(length)
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        raise error(f'{path}: not a safetensors file (its header is not UTF-8)') from None
    header = parse_json(text.rstrip(' '), path, 'safetensors header', error)
    if not isinstance(header, dict):
        raise error(f'{path}: damaged safetensors header (not a JSON object)')
    data_bytes = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        fields = Fields(entry, path, 'safetensors header', error, prefix=f'{name}.') \
            if isinstance(entry, dict) else None
        if fields is None:
            raise error(f'{path}: damaged safetensors header ({name} is not an object)')
        dtype = fields.get('dtype', str, choices=tuple(_SAFETENSORS_DTYPES))
        shape = fields.get('shape', list)
        offsets = fields.get('data_offsets', list, low=2, high=2)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                   for d in shape + offsets):
            fields.fail('shape', 'non-negative integers', shape)
        dtype = _SAFETENSORS_DTYPES[dtype]
        count = math.prod(shape)
        if not offsets[0] <= offsets[1] <= data_bytes or \
                offsets[1] - offsets[0] != count * _SAFETENSORS_SIZES[dtype]:
            fields.fail('data_offsets', f'{count * _SAFETENSORS_SIZES[dtype]} bytes inside '
                        f'the {data_bytes:,} data bytes', offsets)
        tensors[name] = (dtype, tuple(shape))
    return tensors


# mshadow's type flags, as mx.nd.save writes them
_MXNET_DTYPES = {0: 'float32', 1: 'float64', 2: 'float16', 3: 'uint8', 4: 'int32', 5: 'int8',
                 6: 'int64', 7: 'bool', 8: 'int16', 9: 'uint16', 10: 'uint32', 11: 'uint64',
                 12: 'bfloat16'}
_MXNET_SIZES = {'float32': 4, 'float64': 8, 'float16': 2, 'uint8': 1, 'int32': 4, 'int8': 1,
                'int64': 8, 'bool': 1, 'int16': 2, 'uint16': 2, 'uint32': 4, 'uint64': 8,
                'bfloat16': 2}
_NDARRAY_LIST_MAGIC = 0x112
_NDARRAY_MAGICS = (0xF993FAC9, 0xF993FACA)  # V2, and V3 (numpy shape semantics)


def ndarray_file_header(path, error):
    """``{name: (dtype, shape)}`` of an ``mx.nd.save`` file of named dense arrays, read by
    seeking past the data (nothing is allocated): a truncated or foreign file is one line
    here, before MXNet's loader (which can abort the process on a damaged file) sees it."""
    size = os.path.getsize(path)

    def damaged(why):
        return error(f'{path}: not an MXNet parameter file, or damaged ({why})')

    with open(path, 'rb') as f:
        def read(fmt):
            want = struct.calcsize(fmt)
            data = f.read(want)
            if len(data) < want:
                raise damaged(f'it ends at byte {f.tell()} of a header')
            return struct.unpack(fmt, data)
        magic, _ = read('<QQ')
        if magic != _NDARRAY_LIST_MAGIC:
            raise damaged('wrong magic number')
        count, = read('<Q')
        if count > size // 16:
            raise damaged(f'{count:,} arrays in {size:,} bytes')
        entries = []
        for _ in range(count):
            array_magic, storage = read('<Ii')
            if array_magic not in _NDARRAY_MAGICS or storage != 0:
                raise damaged('not a dense array' if array_magic in _NDARRAY_MAGICS
                              else 'wrong array magic number')
            ndim, = read('<i')
            if ndim == -1:  # an array of unknown shape: no data follows
                entries.append(('float32', None))
                continue
            if not 0 <= ndim <= 32:
                raise damaged(f'an array of {ndim} dimensions')
            shape = read(f'<{ndim}q') if ndim else ()  # () is a scalar: one element
            if any(d < 0 for d in shape):
                raise damaged('a negative dimension')
            _, _, flag = read('<iii')  # device type, device id, dtype
            if flag not in _MXNET_DTYPES:
                raise damaged(f'unknown dtype flag {flag}')
            dtype = _MXNET_DTYPES[flag]
            nbytes = math.prod(shape) * _MXNET_SIZES[dtype]
            if f.tell() + nbytes > size:
                raise damaged(f'an array of {nbytes:,} bytes past the end of the file')
            f.seek(nbytes, os.SEEK_CUR)
            entries.append((dtype, tuple(shape)))
        name_count, = read('<Q')
        if name_count != count:
            raise damaged(f'{name_count} names for {count} arrays')
        names = []
        for _ in range(name_count):
            length, = read('<Q')
            if length > 4096:
                raise damaged(f'a name of {length:,} bytes')
            data = f.read(length)
            if len(data) < length:
                raise damaged('it ends inside a name')
            names.append(data.decode('utf-8', 'replace'))
    if len(set(names)) != len(names):
        raise damaged('a name appears twice')
    return dict(zip(names, entries))
