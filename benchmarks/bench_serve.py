"""gluonbert-serve's start-up, latency and throughput (docs/serving.md has the figures).

1. the direct call: the model on the server's path (gluonbert.fast float32, as the server
   runs it), one review at a time, in this process, before any server runs;
2. a server (``python -m gluonbert.cli.serve --port 0``): seconds from its start to
   ``/ready`` 200;
3. latency at concurrency 1 (one keep-alive connection, one review a request), then
   throughput at each ``--concurrency`` (that many clients, each with its own connection,
   one review a request, for ``--seconds``), with httpx from this process: the load
   generator shares the machine's cores with the server.

    .venv/bin/python benchmarks/bench_serve.py --model-dir runs/finetune/model
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import mxnet as mx

import gluonbert  # noqa: F401  (first: MXNet's thread count)
from gluonbert import fast
from gluonbert.model_dir import load_classifier
from gluonbert.serve.model import ServedModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reviews():
    path = os.path.join(ROOT, 'gluonbert', 'resources', 'reviews', 'test.jsonl')
    with open(path, encoding='utf-8') as f:
        return [json.loads(line)['text'] for line in f]


def ms(values, q=0.5):
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


def direct(model_dir, texts, repeats):
    net, vocab, tokenizer = load_classifier(model_dir)
    net.hybridize(static_alloc=True)
    model = ServedModel(fast.prepare(net, 'float32', ctx=mx.cpu()), vocab, tokenizer,
                        mx.cpu(), {})
    model.warm_up(32, 16384)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        model.run(model.encode([texts[i % len(texts)]]))
        times.append(time.perf_counter() - start)
    return times


async def load(url, texts, clients, seconds):
    latencies, end = [], time.perf_counter() + seconds

    async def client(k):
        async with httpx.AsyncClient(timeout=30) as http:
            i = k
            while time.perf_counter() < end:
                start = time.perf_counter()
                response = await http.post(url + '/predict', json={'inputs': texts[i % len(texts)]})
                assert response.status_code == 200, response.text
                latencies.append(time.perf_counter() - start)
                i += clients
    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model-dir', required=True)
    parser.add_argument('--concurrency', default='1,8,32')
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--repeats', type=int, default=100)
    parser.add_argument('server_flags', nargs=argparse.REMAINDER,
                        help='after --: flags for gluonbert-serve')
    args = parser.parse_args()
    texts = reviews()
    times = direct(args.model_dir, texts, args.repeats)
    print(f'direct call, one review: p50 {ms(times):.1f} ms, p95 {ms(times, .95):.1f} ms')
    flags = [f for f in args.server_flags if f != '--']
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, '-m', 'gluonbert.cli.serve', '--model-dir',
                               args.model_dir, '--port', '0', *flags],
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        url = None
        for line in server.stderr:
            if 'listening on ' in line:
                url = line.split('listening on ')[1].split()[0]
                break
        while httpx.get(url + '/ready').status_code != 200:
            time.sleep(0.01)
        print(f'start-up to ready: {time.perf_counter() - started:.2f} s')
        with httpx.Client(timeout=30) as http:
            times = []
            for i in range(args.repeats + 10):
                start = time.perf_counter()
                assert http.post(url + '/predict',
                                 json={'inputs': texts[i % len(texts)]}).status_code == 200
                times.append(time.perf_counter() - start)
        times = times[10:]
        print(f'server, concurrency 1, one review a request: p50 {ms(times):.1f} ms, '
              f'p95 {ms(times, .95):.1f} ms')
        for clients in map(int, args.concurrency.split(',')):
            latencies, seconds = asyncio.run(load(url, texts, clients, args.seconds))
            print(f'concurrency {clients}: {len(latencies) / seconds:.1f} requests/s, '
                  f'p50 {ms(latencies):.1f} ms, p95 {ms(latencies, .95):.1f} ms')
        sizes = [line for line in httpx.get(url + '/metrics').text.splitlines()
                 if line.startswith('gluonbert_batch_size_')]
        count = float(next(s for s in sizes if '_count' in s).split()[-1])
        total = float(next(s for s in sizes if '_sum' in s).split()[-1])
        print(f'batches: {count:.0f}, mean size {total / max(count, 1):.1f}')
    finally:
        server.terminate()
        print(f'server exit status after SIGTERM: {server.wait(60)}')


if __name__ == '__main__':
    main()
