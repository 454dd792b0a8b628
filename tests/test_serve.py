"""gluonbert-serve: real server processes on loopback ports (``--port 0``: the port it
prints), a real HTTP client (httpx), tiny saved classifiers."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import mxnet as mx
import numpy as np
import pytest

httpx = pytest.importorskip('httpx')
pytest.importorskip('fastapi')
pytest.importorskip('uvicorn')
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import gluonbert  # noqa: E402
from export_models import LABELS, MAX_LEN, PAIRS, TEXTS, save_classifier, tiny_classifier  # noqa: E402
from gluonbert.cli.predict import predict_main  # noqa: E402
from gluonbert.cli.serve import serve_main  # noqa: E402
from gluonbert.hf_export import encode_inputs, gluonbert_logits  # noqa: E402
from gluonbert.model_dir import load_classifier  # noqa: E402
from gluonbert.pretrained import load_pretrained  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """``python -m gluonbert.cli.serve`` in a subprocess; ``url`` once it listens."""

    def __init__(self, model_dir, *flags, threads=1):
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads),
                   MXNET_SUBGRAPH_VERBOSE='0')
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'gluonbert.cli.serve', '--model-dir', str(model_dir),
             '--port', '0', *flags], env=env, stderr=subprocess.PIPE, text=True)
        self.lines, self.url = [], None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line.rstrip('\n'))
            if 'listening on http://' in line:
                self.url = line.split('listening on ')[1].split()[0]
                self._listening.set()
        self._listening.set()

    def wait_listening(self, timeout=60):
        assert self._listening.wait(timeout) and self.url, self.lines
        return self.url

    def wait_ready(self, timeout=60):
        url, end = self.wait_listening(), time.monotonic() + timeout
        while time.monotonic() < end:
            if httpx.get(url + '/ready').status_code == 200:
                return url
            time.sleep(0.02)
        raise AssertionError(f'not ready in {timeout} s: {self.lines}')

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code


@pytest.fixture(scope='module')
def minilm():
    _, vocab, tokenizer = load_pretrained('minilm')
    return vocab, tokenizer


@pytest.fixture(scope='module')
def model_dirs(minilm, tmp_path_factory):
    vocab, tokenizer = minilm
    root = tmp_path_factory.mktemp('serve')
    single = save_classifier(tiny_classifier(vocab, tokenizer), vocab, tokenizer,
                             root / 'single')
    pair = save_classifier(tiny_classifier(vocab, tokenizer, text_pair=True, seed=1), vocab,
                           tokenizer, root / 'pair')
    return {'single': single, 'pair': pair}


@pytest.fixture(scope='module')
def servers(model_dirs):
    """The servers of this module, started together (their start-ups overlap)."""
    started = {
        'main': Server(model_dirs['single'], '--max-inputs', '8', '--max-body-bytes', '4096',
                       '--max-wait-ms', '2'),
        'pair': Server(model_dirs['pair']),
        # the queue takes 3 inputs, a batch waits 1 s for more, a request 0.5 s for its answer
        'limits': Server(model_dirs['single'], '--max-queue', '3', '--max-wait-ms', '1000',
                         '--request-timeout', '0.5'),
        'workers': Server(model_dirs['single'], '--workers', '2', threads=2),
    }
    yield started
    for server in started.values():
        server.stop(signal.SIGKILL) if server.process.poll() is None else None


@pytest.fixture(scope='module')
def main_url(servers):
    return servers['main'].wait_ready()


def _metrics(url):
    families = text_string_to_metric_families(httpx.get(url + '/metrics').text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families for s in family.samples}


def _reference(model_dir, texts):
    """gluonbert-predict's probabilities for ``texts`` ({label: probability} each)."""
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert predict_main(['--model-dir', str(model_dir), *texts]) == 0
    return [json.loads(line)['probabilities'] for line in out.getvalue().splitlines()]


def _as_dict(answer):
    scores = [a['score'] for a in answer]
    assert scores == sorted(scores, reverse=True), answer  # best first
    assert sorted(a['label'] for a in answer) == sorted(LABELS)
    return {a['label']: a['score'] for a in answer}


def test_ready_is_503_until_the_model_is_warm(servers):
    server = servers['main']
    url, first = server.wait_listening(), None
    while first is None or first == 503:
        response = httpx.get(url + '/ready')
        if first is None:
            first = response.status_code
            assert httpx.get(url + '/health').status_code == 200  # alive while loading
        if response.status_code == 503:
            assert response.json()['error_type'] == 'Unhealthy'
        else:
            break
    assert first == 503 and response.status_code == 200
    assert any(line.startswith('gluonbert-serve: ready in ') for line in server.lines)


def test_probabilities_equal_gluonbert_predict_in_order(main_url, model_dirs):
    texts = TEXTS + ['a', 'what a film ' * 40]  # one past max_len: truncated as predict does
    response = httpx.post(main_url + '/predict', json={'inputs': texts[:8]})
    assert response.status_code == 200, response.text
    answers = response.json() + httpx.post(main_url + '/predict',
                                           json={'inputs': texts[8:]}).json()
    reference = _reference(model_dirs['single'], texts)
    assert len(answers) == len(texts)
    for answer, expected in zip(answers, reference):
        got = _as_dict(answer)
        for label in LABELS:
            assert abs(got[label] - expected[label]) <= 1e-5, (got, expected)
    one = httpx.post(main_url + '/predict', json={'inputs': texts[2]}).json()
    assert [a['label'] for a in one] == [a['label'] for a in answers[2]]  # one text: one list
    assert abs(one[0]['score'] - answers[2][0]['score']) <= 1e-6
    distinct = {round(a[0]['score'], 5) for a in answers}
    assert len(distinct) > 3  # the texts do get different answers: order is tested


def test_raw_scores_are_the_logits(main_url, model_dirs, minilm):
    vocab, tokenizer = minilm
    net, _, _ = load_classifier(str(model_dirs['single']))
    logits = gluonbert_logits(net, encode_inputs(net, vocab, tokenizer, TEXTS[:4]))
    answers = httpx.post(main_url + '/predict',
                         json={'inputs': TEXTS[:4], 'raw_scores': True}).json()
    for answer, row in zip(answers, logits):
        got = _as_dict(answer)
        np.testing.assert_allclose([got[label] for label in LABELS], row, atol=1e-4)
        assert abs(sum(got.values()) - 1) > 1e-3  # logits, not probabilities


def test_pairs_and_their_mistakes(servers, model_dirs, minilm):
    url = servers['pair'].wait_ready()
    vocab, tokenizer = minilm
    net, _, _ = load_classifier(str(model_dirs['pair']))
    logits = gluonbert_logits(net, encode_inputs(net, vocab, tokenizer, PAIRS))
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    answers = httpx.post(url + '/predict', json={'inputs': PAIRS}).json()
    for answer, row in zip(answers, expected):
        got = _as_dict(answer)
        np.testing.assert_allclose([got[label] for label in LABELS], row, atol=1e-5)
    one = httpx.post(url + '/predict', json={'inputs': PAIRS[0]}).json()  # one pair
    np.testing.assert_allclose([_as_dict(one)[label] for label in LABELS], expected[0],
                               atol=1e-5)
    for bad in ('one text', ['a', 'b', 'c'], [['a', 'b'], 'c'], [['a', '']]):
        response = httpx.post(url + '/predict', json={'inputs': bad})
        assert response.status_code == 400, (bad, response.text)
        assert response.json()['error_type'] == 'Validation'
    assert 'text pairs' in httpx.post(url + '/predict', json={'inputs': 'x'}).json()['error']
    single = httpx.post(servers['main'].wait_ready() + '/predict', json={'inputs': [['a', 'b']]})
    assert single.status_code == 400 and 'single texts' in single.json()['error']


@pytest.mark.parametrize('body, status, words', [
    (b'{"inputs": ', 400, 'invalid JSON'),
    (b'[1, 2]', 400, 'JSON object'),
    (b'{"inputs": 5}', 400, 'string or an array'),
    (b'{"inputs": [5]}', 400, 'must be a string'),
    (b'{"inputs": "   "}', 400, 'empty'),
    (b'{"inputs": []}', 400, 'empty array'),
    (b'{"inputs": "a", "raw_scores": "yes"}', 400, 'true or false'),
    (b'{"inputs": "a", "bogus": 1}', 400, 'unknown field'),
    (b'{"inputs": "a", "x": NaN}', 400, 'invalid JSON'),
    (json.dumps({'inputs': ['t'] * 9}).encode(), 413, '--max-inputs'),
    (json.dumps({'inputs': 'x' * 5000}).encode(), 413, '--max-body-bytes'),
])
def test_bad_requests_get_one_line_errors(main_url, body, status, words):
    response = httpx.post(main_url + '/predict', content=body,
                          headers={'content-type': 'application/json'})
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {'error', 'error_type'} and words in error['error']
    assert '\n' not in error['error']


def test_concurrent_clients_each_get_their_own_answers(main_url, model_dirs):
    texts = TEXTS + ['great', 'bad', 'so so', 'loved every minute']
    reference = dict(zip(texts, _reference(model_dirs['single'], texts)))
    requests = [[texts[(i + j) % len(texts)] for j in range(1 + i % 4)] for i in range(40)]

    async def burst():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(main_url + '/predict',
                                                      json={'inputs': r}) for r in requests))

    before = _metrics(main_url)
    responses = asyncio.run(burst())
    for sent, response in zip(requests, responses):
        assert response.status_code == 200
        for text, answer in zip(sent, response.json()):
            got = _as_dict(answer)
            assert all(abs(got[k] - reference[text][k]) <= 1e-5 for k in LABELS), text
    after = _metrics(main_url)
    batches = after[('gluonbert_batch_size_count', ())] - before[('gluonbert_batch_size_count',
                                                                   ())]
    inputs = sum(map(len, requests))
    assert after[('gluonbert_inputs_total', ())] - before[('gluonbert_inputs_total', ())] == \
        inputs
    assert batches < len(requests)  # requests shared batches


def test_info_openapi_and_metrics(main_url):
    info = httpx.get(main_url + '/info').json()
    assert info['labels'] == LABELS and info['max_len'] == MAX_LEN
    assert info['truncation'] == 'head' and info['dtype'] == 'float32'
    assert info['version'] == gluonbert.__version__ and info['batching']['max_inputs'] == 8
    assert set(info['kernels']) == {'layer_norm', 'dropout', 'attention', 'attention_mask'}
    assert '/predict' in httpx.get(main_url + '/openapi.json').json()['paths']
    assert httpx.get(main_url + '/nowhere').json()['error_type'] == 'Http'
    before = _metrics(main_url)
    for _ in range(3):
        httpx.post(main_url + '/predict', json={'inputs': 'fine'})
    httpx.post(main_url + '/predict', json={'inputs': ''})
    after = _metrics(main_url)

    def count(metrics, status):
        return metrics.get(('gluonbert_requests_total',
                            (('route', '/predict'), ('status', status))), 0)
    assert count(after, '200') - count(before, '200') == 3
    assert count(after, '400') - count(before, '400') == 1
    for name in ('gluonbert_request_duration_seconds_count', 'gluonbert_queue_duration_seconds'
                 '_count', 'gluonbert_inference_duration_seconds_count'):
        assert any(key[0] == name and value > 0 for key, value in after.items()), name
    assert after[('gluonbert_queue_depth', ())] == 0


def test_overload_timeouts_and_disconnects_cost_nothing(servers):
    url = servers['limits'].wait_ready()
    too_many = httpx.post(url + '/predict', json={'inputs': ['a'] * 4})  # never fits
    assert too_many.status_code == 413 and '--max-queue' in too_many.json()['error']
    with pytest.raises(httpx.TimeoutException):  # the client goes before its batch starts
        httpx.post(url + '/predict', json={'inputs': 'gone'}, timeout=0.15)

    async def burst():
        async with httpx.AsyncClient(timeout=10) as client:
            return await asyncio.gather(*(client.post(url + '/predict', json={'inputs': 'x'})
                                          for _ in range(8)))
    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [429] * 5 + [504] * 3, statuses
    for response in responses:
        assert response.json()['error_type'] == {429: 'Overloaded',
                                                 504: 'Timeout'}[response.status_code]
        if response.status_code == 429:
            assert int(response.headers['retry-after']) >= 1
    time.sleep(1.2)  # past the batch window: dropped inputs never ran
    metrics = _metrics(url)
    assert metrics[('gluonbert_inputs_total', ())] == 0
    assert metrics[('gluonbert_queue_depth', ())] == 0
    assert metrics[('gluonbert_requests_total', (('route', '/predict'), ('status', '499')))] == 1


def test_workers_share_the_port_and_the_cores(servers):
    server = servers['workers']
    url = server.wait_ready()
    pids = set()
    for _ in range(12):
        with httpx.Client() as client:  # a new connection each
            info = client.get(url + '/info').json()
            pids.add(info['pid'])
            assert info['omp_threads'] == 1  # 2 threads shared by 2 workers
            assert client.post(url + '/predict', json={'inputs': 'ok'}).status_code == 200
    assert server.process.pid not in pids
    assert server.stop() == 0
    assert any('2 workers, 1 threads each' in line for line in server.lines)


def test_sigterm_answers_every_accepted_request_and_exits_0(model_dirs):
    server = Server(model_dirs['single'], '--max-wait-ms', '1500', '--drain-timeout', '10')
    url = server.wait_ready()
    results = []

    def call(text):
        results.append(httpx.post(url + '/predict', json={'inputs': text}, timeout=20))
    callers = [threading.Thread(target=call, args=(t,)) for t in TEXTS[:5]]
    for caller in callers:
        caller.start()
    end = time.monotonic() + 10
    while _metrics(url)[('gluonbert_queue_depth', ())] < 5:  # accepted, their batch not run
        assert time.monotonic() < end, 'the requests did not reach the queue'
        time.sleep(0.02)
    server.process.send_signal(signal.SIGTERM)
    for caller in callers:
        caller.join(20)
    assert [r.status_code for r in results] == [200] * 5
    assert server.process.wait(15) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + '/health')


def test_start_up_errors_are_one_line_and_exit_2(model_dirs, tmp_path, capsys):
    assert serve_main(['--model-dir', str(tmp_path / 'missing')]) == 2
    assert capsys.readouterr().err.strip().count('\n') == 0
    assert serve_main(['--model-dir', str(model_dirs['single']), '--max-batch-size', '0']) == 2
    assert '--max-batch-size must be >= 1' in capsys.readouterr().err
    taken = socket.socket()
    taken.bind(('127.0.0.1', 0))
    taken.listen(1)
    port = str(taken.getsockname()[1])
    assert serve_main(['--model-dir', str(model_dirs['single']), '--port', port]) == 2
    assert 'cannot listen on 127.0.0.1:' in capsys.readouterr().err
    taken.close()
    damaged = tmp_path / 'damaged'
    damaged.mkdir()
    (damaged / 'gluonbert.json').write_text('{"format": "gluonbert"')
    server = Server(damaged)
    assert server.process.wait(60) == 2
    server._reader.join(5)
    said = [line for line in server.lines if 'listening on' not in line]
    assert len(said) == 1 and said[0].startswith('gluonbert-serve: error: '), server.lines
    assert 'damaged manifest' in said[0]


def test_draining_app_is_not_ready(model_dirs):
    """In process: the application itself, through Starlette's test client (lifespan
    included), turns /ready to 503 once marked draining."""
    from starlette.testclient import TestClient

    from gluonbert.serve.app import Settings, create_app
    from gluonbert.serve.model import ServedModel

    def load():
        net, vocab, tokenizer = load_classifier(str(model_dirs['single']))
        return ServedModel(net, vocab, tokenizer, mx.cpu(), {'dtype': 'float32'})
    app = create_app(load, Settings(max_wait_ms=0))
    with TestClient(app) as client:
        assert app.state.serving.batcher.ready.wait(30)
        assert client.get('/ready').status_code == 200
        assert client.post('/predict', json={'inputs': 'fine'}).status_code == 200
        app.state.serving.draining = True
        response = client.get('/ready')
        assert response.status_code == 503 and 'draining' in response.json()['error']


class RecordingModel:
    """The batcher's model in the unit tests below: the batches it was given (the lengths
    of their inputs); logits ``[length, -length]`` per input."""

    def __init__(self):
        self.batches = []

    def run(self, encoded):
        lengths = [len(ids) for ids, _ in encoded]
        self.batches.append(lengths)
        logits = np.array([[n, -n] for n in lengths], dtype=np.float32)
        return logits, logits


def _queued_batches(lengths, **limits):
    """The batches a Batcher forms of one request per length in ``lengths``, all queued
    before the thread looks (a long window), and each request's answer."""
    from gluonbert.serve.batcher import Batcher, Pending
    model = RecordingModel()
    answered = []
    batcher = Batcher(lambda: model, max_wait=0.3, max_queue=1000, **limits)
    pendings = [Pending([(np.zeros(n, np.int32), np.zeros(n, np.int32))], answered.append)
                for n in lengths]
    for pending in pendings:
        batcher.submit(pending)
    batcher.start()
    assert batcher.ready.wait(10)
    batcher.stop(10)
    assert batcher.finished.is_set() and len(answered) == len(lengths)
    for pending, n in zip(pendings, lengths):
        assert pending.logits[0][0] == n  # each request got its own row
    return model.batches


def test_batches_group_by_length_within_the_caps():
    lengths = [10, 100, 12, 98, 11, 99, 13, 97]
    batches = _queued_batches(lengths, max_batch_size=4, max_batch_tokens=10_000)
    assert sorted(map(sorted, batches)) == [[10, 11, 12, 13], [97, 98, 99, 100]]
    # padded tokens: 4 x 100 would be over 300: the oldest long one (100) and its nearest
    # go 3 together, the last alone
    batches = _queued_batches(lengths, max_batch_size=4, max_batch_tokens=300)
    assert sorted(map(sorted, batches)) == [[10, 11, 12, 13], [97], [98, 99, 100]]
    # one input over the token cap still runs, alone
    assert _queued_batches([50, 500], max_batch_size=8, max_batch_tokens=100) == [[50], [500]]


def test_a_client_gone_mid_body_costs_nothing(main_url):
    host, port = main_url.rsplit('/', 1)[1].split(':')
    before = _metrics(main_url)
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n'
                    b'content-length: 1000\r\n\r\n{"inputs": "')
    key = ('gluonbert_requests_total', (('route', '/predict'), ('status', '499')))
    end = time.monotonic() + 10
    while _metrics(main_url).get(key, 0) == before.get(key, 0):
        assert time.monotonic() < end, 'the server did not notice the client went'
        time.sleep(0.05)
    assert httpx.get(main_url + '/health').status_code == 200
    assert _metrics(main_url)[('gluonbert_inputs_total', ())] == \
        before[('gluonbert_inputs_total', ())]


def test_without_the_serve_extra_the_command_says_what_to_install(monkeypatch, capsys):
    from gluonbert.cli.serve import serve_main
    monkeypatch.setitem(sys.modules, 'fastapi', None)  # as if not installed
    assert serve_main(['--model-dir', '.', '--port', '0']) == 2
    assert capsys.readouterr().err == ("gluonbert-serve: error: gluonbert-serve needs the "
                                       "fastapi package, which is not installed: pip install "
                                       "'gluonbert[serve]'\n")
