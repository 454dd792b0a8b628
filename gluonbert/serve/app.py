"""The HTTP application (FastAPI): Hugging Face TEI's ``POST /predict`` and probes.

- ``POST /predict``: ``{"inputs": "text"}`` (or a list, or ``[["text", "pair"]]`` for
  pair models; ``"raw_scores": true`` for logits) -> every label with its score, best
  first (a list of such lists for a list of inputs);
- ``GET /health`` 200 while the process serves; ``GET /ready`` 503 until the model is
  loaded and warmed, and while draining; ``GET /info``; ``GET /metrics`` (Prometheus);
  ``GET /openapi.json`` (FastAPI's).

Errors are ``{"error": "one line", "error_type": "..."}``: 400 bad input, 413 too large,
429 queue full (with ``Retry-After``), 503 not ready, 504 past ``request_timeout``.
Inputs are tokenized on a thread pool, never on the event loop; the
:class:`~.batcher.Batcher`'s thread runs the model.
"""
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import math
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .._version import __version__
from .batcher import Batcher, Pending, QueueFull
from .inputs import RequestError, parse_predict
from .metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = ['Settings', 'create_app']

# a body over --max-body-bytes is read (and thrown away) up to this much, so that the
# client gets its 413 rather than a reset connection
_DRAIN_LIMIT = 16 << 20


@dataclasses.dataclass(frozen=True)
class Settings:
    """The batching and limit flags of ``gluonbert-serve``."""
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 512
    max_batch_tokens: int = 16384
    max_inputs: int = 64
    max_body_bytes: int = 1 << 20
    request_timeout: float = 30.0
    tokenizer_threads: int = 2
    workers: int = 1


class _State:
    def __init__(self, settings, batcher, metrics):
        self.settings, self.batcher, self.metrics = settings, batcher, metrics
        self.draining = False
        self.pool = None

    @property
    def ready(self):
        return self.batcher.ready.is_set() and not self.draining


def _error(err, headers=None):
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def create_app(load, settings=None, *, on_load_error=None):
    """The application for the model ``load()`` returns (a
    :class:`~gluonbert.serve.model.ServedModel`, loaded and warmed on the inference thread
    when the application starts). ``on_load_error(exception)`` is called on the event loop
    if that fails. ``app.state.serving.draining = True`` turns ``/ready`` to 503."""
    settings = settings or Settings()
    metrics = Metrics()
    batcher = Batcher(load, max_batch_size=settings.max_batch_size,
                      max_wait=settings.max_wait_ms / 1000.0,
                      max_batch_tokens=settings.max_batch_tokens,
                      max_queue=settings.max_queue, observe=metrics)
    state = _State(settings, batcher, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        loop = asyncio.get_running_loop()
        state.pool = concurrent.futures.ThreadPoolExecutor(
            settings.tokenizer_threads, thread_name_prefix='gluonbert-tokenize')
        batcher.start()
        watcher = loop.create_task(_watch_load(loop, batcher, on_load_error))
        try:
            yield
        finally:
            watcher.cancel()
            await loop.run_in_executor(None, batcher.stop, 10.0)
            state.pool.shutdown(wait=False)

    app = FastAPI(title='gluonbert-serve', version=__version__, lifespan=lifespan,
                  description='A fine-tuned gluonbert classifier over HTTP (Hugging Face '
                              'TEI compatible /predict).')
    app.state.serving = state

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc):  # 404, 405: JSON bodies too
        return JSONResponse({'error': str(exc.detail), 'error_type': 'Http'},
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def bug(_request, exc):  # a JSON 500; uvicorn logs the traceback
        return JSONResponse({'error': f'internal error: {type(exc).__name__}',
                             'error_type': 'Backend'}, status_code=500)

    def measured(route):
        def wrap(handler):
            async def endpoint(request: Request):
                start = time.perf_counter()
                try:
                    response = await handler(request)
                except RequestError as err:
                    headers = {'Retry-After': '1'} if err.status == 429 else None
                    response = _error(err, headers)
                metrics.answered(route, response.status_code, time.perf_counter() - start)
                return response
            endpoint.__name__ = handler.__name__
            endpoint.__doc__ = handler.__doc__
            return endpoint
        return wrap

    @app.post('/predict', openapi_extra=_PREDICT_OPENAPI)
    @measured('/predict')
    async def predict(request):
        """Classify a text, a list of texts, or text pairs (TEI's /predict)."""
        return await _predict(request, state)

    @app.get('/health')
    @measured('/health')
    async def health(_request):
        """200 while the process serves."""
        return JSONResponse({'status': 'ok'})

    @app.get('/ready')
    @measured('/ready')
    async def ready(_request):
        """200 once the model is loaded and warmed; 503 before, and while draining."""
        if state.ready:
            return JSONResponse({'status': 'ready'})
        why = 'draining' if state.draining else 'loading'
        raise RequestError(503, 'Unhealthy', f'not ready: {why}')

    @app.get('/info')
    @measured('/info')
    async def info(_request):
        """The model (labels, max_len, truncation, dtype, kernels) and the settings."""
        if not batcher.ready.is_set():
            raise RequestError(503, 'Unhealthy', 'not ready: the model is loading')
        return JSONResponse({'version': __version__, **batcher.model.describe(),
                             'batching': dataclasses.asdict(settings)})

    @app.get('/metrics')
    @measured('/metrics')
    async def prometheus(_request):
        """Prometheus text format."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _watch_load(loop, batcher, on_load_error):
    await loop.run_in_executor(None, _wait_either, batcher)
    if batcher.load_error is not None and on_load_error is not None:
        on_load_error(batcher.load_error)


def _wait_either(batcher):
    while not (batcher.ready.wait(0.05) or batcher.finished.is_set()):
        pass


async def _read_body(request, limit):
    declared = request.headers.get('content-length', '')
    too_large = RequestError(413, 'Validation', f'the body is over {limit} bytes '
                                                f'(--max-body-bytes)')
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > _DRAIN_LIMIT or (declared.isdigit() and int(declared) > _DRAIN_LIMIT):
                raise too_large
    except ClientDisconnect:  # gone before its body was in: nothing to answer
        raise RequestError(499, 'Http', 'the client went away') from None
    if size > limit:
        raise too_large
    return b''.join(chunks)


async def _predict(request, state):
    settings, batcher = state.settings, state.batcher
    deadline = time.monotonic() + settings.request_timeout
    if not batcher.ready.is_set():
        raise RequestError(503, 'Unhealthy', 'not ready: the model is loading')
    model = batcher.model
    body = await _read_body(request, settings.max_body_bytes)
    parsed = parse_predict(body, text_pair=model.text_pair, max_inputs=settings.max_inputs)
    loop = asyncio.get_running_loop()
    try:
        encoded = await loop.run_in_executor(state.pool, model.encode, parsed.items)
    except Exception as err:  # noqa: BLE001  one input the tokenizer cannot take
        raise RequestError(400, 'Tokenizer', f'cannot tokenize the input: '
                                             f'{type(err).__name__}: {err}') from None
    future = loop.create_future()

    def done(pending):  # on the inference thread
        loop.call_soon_threadsafe(_settle, future, pending)

    if len(encoded) > settings.max_queue:  # would never fit: not worth a retry
        raise RequestError(413, 'Validation', f'{len(encoded)} inputs in one request; the '
                                              f'queue takes {settings.max_queue} (--max-queue)')
    pending = Pending(encoded, done)
    try:
        batcher.submit(pending)
    except QueueFull as err:
        raise RequestError(429, 'Overloaded', f'overloaded: {err}') from None
    gone = loop.create_task(_disconnected(request))
    try:
        finished, _ = await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED,
                                         timeout=max(0.0, deadline - time.monotonic()))
    finally:
        gone.cancel()
    if future not in finished:
        batcher.cancel(pending)
        if gone in finished:  # the client went away: nobody reads an answer
            return Response(status_code=499)
        raise RequestError(504, 'Timeout', f'no answer within {settings.request_timeout:g} s '
                                           f'(--request-timeout)')
    if pending.error is not None:
        raise RequestError(500, 'Backend', f'inference failed: '
                                           f'{type(pending.error).__name__}: {pending.error}')
    answers = [_scores(model.labels, pending.logits[i] if parsed.raw_scores
                       else pending.probabilities[i]) for i in range(len(parsed.items))]
    return JSONResponse(answers[0] if parsed.single else answers)


def _settle(future, pending):
    if not future.done():
        future.set_result(pending)


async def _disconnected(request):
    while True:
        message = await request.receive()
        if message['type'] == 'http.disconnect':
            return


def _scores(labels, row):
    values = [float(v) for v in row]
    if not all(math.isfinite(v) for v in values):
        raise RequestError(500, 'Backend', 'the model gives non-finite scores: its weights '
                                           'overflow float32 or are damaged')
    pairs = sorted(zip(labels, values), key=lambda p: -p[1])
    return [{'label': label, 'score': score} for label, score in pairs]


_INPUT = {'oneOf': [{'type': 'string'},
                    {'type': 'array', 'minItems': 2, 'maxItems': 2, 'items': {'type': 'string'}}]}
_PREDICT_OPENAPI = {
    'requestBody': {'required': True, 'content': {'application/json': {'schema': {
        'type': 'object', 'required': ['inputs'],
        'properties': {'inputs': {'oneOf': [_INPUT, {'type': 'array', 'items': _INPUT}]},
                       'raw_scores': {'type': 'boolean', 'default': False},
                       'truncate': {'type': 'boolean', 'default': True}}}}}},
    'responses': {'200': {'description': 'every label with its score, best first (one such '
                                         'list per input for a list of inputs)'},
                  '400': {'description': 'invalid input'},
                  '413': {'description': 'body or input count over the limits'},
                  '429': {'description': 'queue full; see Retry-After'},
                  '504': {'description': 'no answer within the request timeout'}}}
