"""A ``POST /predict`` body read and checked: TEI's shape (``{"inputs": ..., "raw_scores":
...}``), texts or text pairs as the model was trained, one :class:`RequestError` per
problem (its HTTP status, its TEI error type, one line)."""
import json

__all__ = ['RequestError', 'PredictRequest', 'parse_predict']

# fields TEI's /predict takes; ``truncate`` is accepted and changes nothing: texts are
# always truncated as the model was trained (its ClassifierInfo), as gluonbert-predict does
_FIELDS = ('inputs', 'raw_scores', 'truncate')


class RequestError(Exception):
    """A request the server refuses: ``status`` (HTTP), ``error_type`` (TEI's names where
    TEI has one) and a one-line message."""

    def __init__(self, status, error_type, message):
        super().__init__(' '.join(str(message).split()))
        self.status, self.error_type = status, error_type

    def body(self):
        return {'error': str(self), 'error_type': self.error_type}


class PredictRequest:
    """``items`` (texts, or ``(text, pair)`` tuples), ``single`` (the body sent one input,
    answered with one list rather than a list of lists) and ``raw_scores``."""
    __slots__ = ('items', 'single', 'raw_scores')

    def __init__(self, items, single, raw_scores):
        self.items, self.single, self.raw_scores = items, single, raw_scores


def _invalid(message):
    return RequestError(400, 'Validation', message)


def _text(value, where):
    if not isinstance(value, str):
        raise _invalid(f'{where} must be a string, got {_kind(value)}')
    if not value.strip():
        raise _invalid(f'{where} is empty or whitespace only; nothing to classify')
    try:
        value.encode('utf-8')
    except UnicodeEncodeError as err:
        raise _invalid(f'{where} is not valid Unicode (unpaired surrogate at character '
                       f'{err.start + 1})') from None
    return value


def _kind(value):
    return {dict: 'an object', list: 'an array', str: 'a string', bool: 'a boolean',
            type(None): 'null', int: 'a number', float: 'a number'}.get(type(value),
                                                                       type(value).__name__)


def _is_pair(value):
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str)
                                                               for v in value)


def _item(value, where, text_pair):
    if text_pair:
        if isinstance(value, str):
            raise _invalid(f'{where} is a single text, but this model classifies text pairs: '
                           f'send ["text", "text pair"]')
        if not isinstance(value, list) or len(value) != 2:
            raise _invalid(f'{where} must be a ["text", "text pair"] array, got {_kind(value)}'
                           + (f' of {len(value)}' if isinstance(value, list) else ''))
        return (_text(value[0], f'{where}[0]'), _text(value[1], f'{where}[1]'))
    if isinstance(value, list):
        raise _invalid(f'{where} is a text pair (an array), but this model classifies single '
                       f'texts: send a string')
    return _text(value, where)


def parse_predict(body, *, text_pair, max_inputs):
    """The :class:`PredictRequest` of ``body`` (bytes) for a model of ``text_pair``.

    Raises
    ------
    RequestError
        400 for invalid JSON, a wrong field or type, an empty text, a pair sent to a
        single-text model or the reverse; 413 for more than ``max_inputs`` inputs.
    """
    try:
        payload = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise _invalid(f'invalid JSON: {err}') from None
    if not isinstance(payload, dict):
        raise _invalid(f'the body must be a JSON object with "inputs", got {_kind(payload)}')
    unknown = sorted(set(payload) - set(_FIELDS))
    if unknown:
        raise _invalid(f'unknown field(s) {", ".join(map(repr, unknown))}; known: '
                       f'{", ".join(_FIELDS)}')
    if 'inputs' not in payload:
        raise _invalid('the body has no "inputs" field')
    raw_scores = payload.get('raw_scores', False)
    for name in ('raw_scores', 'truncate'):
        if not isinstance(payload.get(name, False), bool):
            raise _invalid(f'"{name}" must be true or false, got {_kind(payload[name])}')
    inputs = payload['inputs']
    single = isinstance(inputs, str) or (text_pair and _is_pair(inputs))
    if single:
        inputs = [inputs]
    elif not isinstance(inputs, list):
        raise _invalid(f'"inputs" must be a string or an array, got {_kind(inputs)}')
    if not inputs:
        raise _invalid('"inputs" is an empty array; nothing to classify')
    if len(inputs) > max_inputs:
        raise RequestError(413, 'Validation', f'{len(inputs)} inputs in one request; at most '
                                              f'{max_inputs} (--max-inputs)')
    items = [_item(value, '"inputs"' if single else f'"inputs"[{index}]', text_pair)
             for index, value in enumerate(inputs)]
    return PredictRequest(items, single, raw_scores)


def _no_constant(name):
    raise ValueError(f'{name} is not JSON')
