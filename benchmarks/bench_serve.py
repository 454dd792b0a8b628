"""gluonbert-serve under load, against the unbatched server and a hand-written Hugging Face
server, in one run (docs/serving.md has the figures).

1. the direct call: the model on the server's path (gluonbert.fast float32, as the server
   runs it), one review at a time, in this process, before any server runs;
2. then, one server at a time, each a process of its own on a loopback port:

   - ``gluonbert``: ``python -m gluonbert.cli.serve`` with the flags after ``--``;
   - ``unbatched``: the same with ``--max-batch-size 1``;
   - ``hf-pipeline``: what users write by hand: Hugging Face
     ``pipeline('text-classification')`` called in one plain FastAPI ``def`` route, under
     uvicorn, serving the same model exported with ``gluonbert-export --format hf`` (in a
     temporary directory), run by ``--hf-python`` (default: this Python) when torch,
     transformers, fastapi and uvicorn import there (``--no-hf``: skip it);

   each gets its start-up time to ready, then for ``--seconds`` a level:

   - **closed loop** at each ``--concurrency`` (that many clients, each with its own
     keep-alive connection, each sending its next request when its answer is in);
   - **open loop** at each ``--rates`` fraction of that server's closed-loop peak: one
     review a request sent on a fixed schedule whatever the answers (latency counted from
     the scheduled time, so a server that falls behind pays for it), at most
     ``--max-in-flight`` outstanding (a request that would exceed it is not sent and
     counts as failed); *late* counts requests the load generator itself sent more than
     10 ms behind schedule;

   throughput (answers 200 per second), p50/p90/p99 latency and errors (non-200 answers,
   connection errors, timeouts, not sent) per level;
3. ``--soak-minutes M``: a fresh ``gluonbert`` server, open loop at ``--soak-fraction``
   (0.7) of the peak measured above (or ``--soak-rate`` requests/s) for M minutes after a
   ``--soak-warmup`` at the same rate; the server's VmRSS (/proc/PID/status) after the
   warm-up, every ``--soak-every`` seconds, and at the end; errors; latency per interval.

Texts: the bundled reviews (``load_sample_reviews('train')`` and ``('test')``), 10-128
tokens. The load generator (httpx, asyncio, this process) shares the machine's cores with
the server.

    python benchmarks/bench_serve.py --model-dir runs/finetune/model
    python benchmarks/bench_serve.py --model-dir runs/finetune/model --soak-minutes 10
    python benchmarks/bench_serve.py --model-dir runs/finetune/model --seconds 2 --no-hf  # smoke
    python benchmarks/bench_serve.py --model-dir M -- --max-wait-ms 0   # flags for the server
"""
import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx

import gluonbert  # noqa: F401  (before MXNet: its thread count)
from gluonbert import fast
from gluonbert.data import load_sample_reviews
from gluonbert.model_dir import load_classifier
from gluonbert.serve.model import ServedModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATE = 0.010  # seconds behind schedule that make a request late

HF_SERVER = '''\
"""The server users write by hand: a Hugging Face pipeline in a FastAPI route."""
import os
from typing import List, Union

from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

classifier = pipeline('text-classification', model=os.environ['HF_MODEL_DIR'], top_k=None)
app = FastAPI()


class Request(BaseModel):
    inputs: Union[str, List[str]]


@app.post('/predict')
def predict(request: Request):
    return classifier(request.inputs)


@app.get('/ready')
def ready():
    return {'ready': True}
'''


def reviews():
    return list(load_sample_reviews('train').texts) + list(load_sample_reviews('test').texts)


def quantile(values, q):
    """Nearest-rank quantile, in ms (nan when empty)."""
    if not values:
        return float('nan')
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, max(0, int(round(q * len(values) + .5)) - 1))]


def direct(model_dir, texts, repeats):
    import mxnet as mx  # after gluonbert (its OpenMP thread count)
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
    del model, net
    return times


def vm_rss_kib(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return None


class Level:
    """One measured level: latencies of the 200 answers, errors by kind, late sends."""

    def __init__(self, name, offered=None):
        self.name, self.offered = name, offered
        self.latencies, self.errors, self.late, self.seconds = [], {}, 0, 0.0

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def throughput(self):
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def row(self):
        errors = sum(self.errors.values())
        kinds = ', '.join(f'{k} {v}' for k, v in sorted(self.errors.items()))
        offered = f'{self.offered:.1f}' if self.offered else ''
        return (f'| {self.name} | {offered} | {self.throughput:.1f} | '
                f'{quantile(self.latencies, .5):.1f} | {quantile(self.latencies, .9):.1f} | '
                f'{quantile(self.latencies, .99):.1f} | {errors}{f" ({kinds})" if kinds else ""}'
                f' | {self.late if self.offered else ""} |')

    def as_dict(self):
        return {'level': self.name, 'offered_rps': self.offered,
                'throughput_rps': self.throughput, 'answered': len(self.latencies),
                'p50_ms': quantile(self.latencies, .5), 'p90_ms': quantile(self.latencies, .9),
                'p99_ms': quantile(self.latencies, .99), 'errors': dict(self.errors),
                'late': self.late, 'seconds': self.seconds}


async def _post(http, url, text, level, since):
    try:
        response = await http.post(url + '/predict', json={'inputs': text})
    except httpx.TimeoutException:
        level.error('timeout')
        return
    except httpx.HTTPError as err:
        level.error(type(err).__name__)
        return
    if response.status_code == 200:
        level.latencies.append(time.perf_counter() - since)
    else:
        level.error(str(response.status_code))


async def closed_loop(url, texts, clients, seconds, timeout):
    level = Level(f'closed, concurrency {clients}')
    end = time.perf_counter() + seconds

    async def client(k):
        async with httpx.AsyncClient(timeout=timeout) as http:
            i = k
            while time.perf_counter() < end:
                await _post(http, url, texts[i % len(texts)], level, time.perf_counter())
                i += clients
    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    level.seconds = time.perf_counter() - start
    return level


async def open_loop(url, texts, rate, seconds, timeout, max_in_flight, name=None, level=None):
    """``rate`` requests/s on a fixed schedule for ``seconds`` (into ``level``)."""
    level = level or Level(name or f'open, {rate:.1f} req/s', offered=rate)
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    in_flight = 0

    async def one(text, scheduled):
        nonlocal in_flight
        try:
            await _post(http, url, text, level, scheduled)
        finally:
            in_flight -= 1

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        tasks, n = [], max(1, int(rate * seconds))
        start = time.perf_counter() + 0.01
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > LATE:
                level.late += 1
            if in_flight >= max_in_flight:
                level.error('not sent')
                continue
            in_flight += 1
            tasks.append(asyncio.create_task(one(texts[i % len(texts)], scheduled)))
        await asyncio.gather(*tasks)
        level.seconds = max(time.perf_counter() - start, n / rate)
    return level


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Server:
    """A server process on a loopback port; its stderr goes to a file (never a full pipe)."""

    def __init__(self, name, command, env, url=None, cwd=None):
        self.name = name
        self.log = tempfile.NamedTemporaryFile('w+', prefix=f'bench_serve_{name}_',
                                               suffix='.log', delete=False)
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env, cwd=cwd)
        self.url = url

    def wait_ready(self, limit=300):
        deadline = time.perf_counter() + limit
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f'{self.name} exited {self.process.returncode}: '
                                   f'{self.tail()}')
            if self.url is None:
                with open(self.log.name) as f:
                    for line in f:
                        if 'listening on ' in line:
                            self.url = line.split('listening on ')[1].split()[0]
            if self.url is not None:
                try:
                    if httpx.get(self.url + '/ready', timeout=5).status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f'{self.name} not ready in {limit} s: {self.tail()}')

    def tail(self, lines=5):
        with open(self.log.name) as f:
            return ' | '.join(f.read().strip().splitlines()[-lines:])

    def rss_mib(self):
        return vm_rss_kib(self.process.pid) / 1024

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        os.unlink(self.log.name)
        return code


def gluonbert_server(name, model_dir, flags):
    return Server(name, [sys.executable, '-m', 'gluonbert.cli.serve', '--model-dir', model_dir,
                         '--port', '0', *flags],
                  env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
                           os.environ.get('PYTHONPATH', '')))


def hf_available(python):
    try:
        return subprocess.run([python, '-c', 'import torch, transformers, fastapi, uvicorn'],
                              capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def export_hf(model_dir, workdir):
    out = os.path.join(workdir, 'hf_model')
    subprocess.run([sys.executable, '-m', 'gluonbert.cli', 'export', '--model-dir', model_dir,
                    '--format', 'hf', '--output', out], check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
                            os.environ.get('PYTHONPATH', '')))
    with open(os.path.join(workdir, 'hf_server.py'), 'w') as f:
        f.write(HF_SERVER)
    return out


def hf_server(python, workdir, hf_model):
    port = free_port()
    return Server('hf-pipeline',
                  [python, '-m', 'uvicorn', 'hf_server:app', '--app-dir', workdir, '--host',
                   '127.0.0.1', '--port', str(port), '--log-level', 'warning',
                   '--no-access-log'],
                  env=dict(os.environ, HF_MODEL_DIR=hf_model, TOKENIZERS_PARALLELISM='false',
                           HF_HUB_OFFLINE='1'),
                  url=f'http://127.0.0.1:{port}')


def batch_stats(url):
    try:
        text = httpx.get(url + '/metrics', timeout=10).text
    except httpx.HTTPError:
        return None
    sizes = [line for line in text.splitlines() if line.startswith('gluonbert_batch_size_')]
    try:
        count = float(next(s for s in sizes if '_count' in s).split()[-1])
        total = float(next(s for s in sizes if '_sum' in s).split()[-1])
    except StopIteration:
        return None
    return count, total / max(count, 1)


HEADER = ('| load | offered req/s | throughput req/s | p50 ms | p90 ms | p99 ms | errors | late |\n'
          '|---|---|---|---|---|---|---|---|')


def measure(server, texts, args):
    """Closed then open loop on a started server; its results."""
    ready = server.wait_ready()
    print(f'\n### {server.name}: ready in {ready:.2f} s (process start to /ready 200)',
          flush=True)
    asyncio.run(closed_loop(server.url, texts, 8, min(2.0, args.seconds), args.timeout))
    levels = []
    print(HEADER, flush=True)
    for clients in args.concurrency:
        level = asyncio.run(closed_loop(server.url, texts, clients, args.seconds, args.timeout))
        levels.append(level)
        print(level.row(), flush=True)
    peak = max(level.throughput for level in levels)
    for fraction in args.rates:
        level = asyncio.run(open_loop(server.url, texts, fraction * peak, args.seconds,
                                      args.timeout, args.max_in_flight,
                                      name=f'open, {fraction:.0%} of peak'))
        levels.append(level)
        print(level.row(), flush=True)
    result = {'server': server.name, 'ready_s': ready, 'peak_rps': peak,
              'levels': [level.as_dict() for level in levels], 'rss_mib': server.rss_mib()}
    stats = batch_stats(server.url) if server.name != 'hf-pipeline' else None
    if stats:
        result['batches'], result['mean_batch_size'] = stats
    print(f'peak (closed loop) {peak:.1f} req/s; server RSS after the run '
          f'{result["rss_mib"]:.0f} MiB'
          + (f'; {stats[0]:.0f} batches, mean size {stats[1]:.1f}' if stats else ''),
          flush=True)
    return result


def soak(model_dir, flags, texts, rate, args):
    server = gluonbert_server('soak', model_dir, flags)
    try:
        ready = server.wait_ready()
        print(f'\n### soak: gluonbert server ready in {ready:.2f} s; {rate:.1f} req/s open '
              f'loop, {args.soak_warmup:.0f} s warm-up, then {args.soak_minutes:g} min',
              flush=True)
        asyncio.run(open_loop(server.url, texts, rate, args.soak_warmup, args.timeout,
                              args.max_in_flight))
        rss = [(0.0, server.rss_mib())]
        print('| minutes | VmRSS MiB | answered | throughput req/s | p50 ms | p99 ms | errors '
              '|\n|---|---|---|---|---|---|---|', flush=True)
        print(f'| 0 (after warm-up) | {rss[0][1]:.1f} | | | | | |', flush=True)
        length = args.soak_minutes * 60

        async def run():
            # one schedule for the whole soak; VmRSS and the interval's figures read on the side
            task = asyncio.create_task(open_loop(server.url, texts, rate, length, args.timeout,
                                                 args.max_in_flight, name='soak', level=total))
            begun, seen, errors, tick = time.perf_counter(), 0, 0, 1
            while not task.done():
                due = tick * args.soak_every
                # the last reading when the schedule and its answers are done
                await asyncio.wait([task], timeout=(begun + due - time.perf_counter()
                                                    if due < length - 1 else None))
                tick += 1
                minutes = (time.perf_counter() - begun) / 60
                rss.append((minutes, server.rss_mib()))
                part = total.latencies[seen:]
                wrong = sum(total.errors.values())
                print(f'| {minutes:.1f} | {rss[-1][1]:.1f} | {len(part)} | '
                      f'{len(part) / max(1e-9, 60 * (minutes - rss[-2][0])):.1f} | '
                      f'{quantile(part, .5):.1f} | {quantile(part, .99):.1f} | '
                      f'{wrong - errors} |', flush=True)
                seen, errors = seen + len(part), wrong
            return task.result()

        total = Level('soak', offered=rate)
        asyncio.run(run())
        growth = 100 * (rss[-1][1] / rss[0][1] - 1)
        peak_growth = 100 * (max(r for _, r in rss) / rss[0][1] - 1)
        errors = sum(total.errors.values())
        print(f'soak: {len(total.latencies)} answered, {errors} errors {total.errors or ""}, '
              f'{total.late} late; throughput {total.throughput:.1f} req/s; p50 '
              f'{quantile(total.latencies, .5):.1f} ms, p90 {quantile(total.latencies, .9):.1f}'
              f' ms, p99 {quantile(total.latencies, .99):.1f} ms; VmRSS {rss[0][1]:.1f} -> '
              f'{rss[-1][1]:.1f} MiB ({growth:+.2f}%, highest {peak_growth:+.2f}%)', flush=True)
        return {'rate_rps': rate, 'minutes': args.soak_minutes, 'rss_mib': rss,
                'rss_growth_pct': growth, 'rss_peak_growth_pct': peak_growth,
                **total.as_dict()}
    finally:
        print(f'soak server exit status after SIGTERM: {server.stop()}', flush=True)


def targets(results, soak_result):
    by = {r['server']: r for r in results}
    lines = []

    def level(server, name):
        return next((lv for lv in by[server]['levels'] if lv['level'] == name), None)

    mine = level('gluonbert', 'closed, concurrency 32') if 'gluonbert' in by else None
    for other, factor in (('unbatched', 3), ('hf-pipeline', 2)):
        theirs = level(other, 'closed, concurrency 32') if other in by else None
        if mine and theirs:
            ratio = mine['throughput_rps'] / max(theirs['throughput_rps'], 1e-9)
            lines.append(f'concurrency 32: {mine["throughput_rps"]:.1f} vs {other} '
                         f'{theirs["throughput_rps"]:.1f} req/s = {ratio:.2f}x (target >= '
                         f'{factor}x): {"met" if ratio >= factor else "NOT met"}')
    half = level('gluonbert', 'open, 50% of peak') if 'gluonbert' in by else None
    if half:
        ratio = half['p99_ms'] / half['p50_ms']
        lines.append(f'half the peak ({half["offered_rps"]:.1f} req/s): p99 {half["p99_ms"]:.1f}'
                     f' ms / p50 {half["p50_ms"]:.1f} ms = {ratio:.2f}x (target <= 3x): '
                     f'{"met" if ratio <= 3 else "NOT met"}')
    if soak_result:
        errors = sum(soak_result['errors'].values())
        ok = errors == 0 and soak_result['rss_growth_pct'] < 5
        lines.append(f'soak {soak_result["minutes"]:g} min at {soak_result["rate_rps"]:.1f} '
                     f'req/s: {errors} errors, RSS {soak_result["rss_growth_pct"]:+.2f}% '
                     f'(target: 0 errors, < 5%): {"met" if ok else "NOT met"}')
    return lines


def numbers(text, kind):
    return [kind(x) for x in text.split(',') if x.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model-dir', required=True)
    parser.add_argument('--concurrency', default='1,8,32,64',
                        help='closed-loop levels (clients)')
    parser.add_argument('--rates', default='0.25,0.5,0.7,0.9',
                        help="open-loop levels, fractions of each server's closed-loop peak")
    parser.add_argument('--seconds', type=float, default=10.0, help='per level')
    parser.add_argument('--timeout', type=float, default=30.0, help="the client's, seconds")
    parser.add_argument('--max-in-flight', type=int, default=256,
                        help='open loop: outstanding requests at most')
    parser.add_argument('--repeats', type=int, default=100, help='direct calls')
    parser.add_argument('--servers', default='gluonbert,unbatched,hf-pipeline')
    parser.add_argument('--hf-python', default=sys.executable,
                        help='a Python with torch, transformers, fastapi and uvicorn')
    parser.add_argument('--no-hf', action='store_true', help='skip the Hugging Face server')
    parser.add_argument('--soak-minutes', type=float, default=0.0,
                        help='then an open-loop soak of the gluonbert server (0: none)')
    parser.add_argument('--soak-fraction', type=float, default=0.7)
    parser.add_argument('--soak-rate', type=float, default=None,
                        help="requests/s (default: --soak-fraction of the gluonbert server's "
                             'peak in this run)')
    parser.add_argument('--soak-warmup', type=float, default=30.0, help='seconds')
    parser.add_argument('--soak-every', type=float, default=60.0,
                        help='seconds between VmRSS readings')
    parser.add_argument('--json', default=None, help='also write the results here')
    parser.add_argument('server_flags', nargs=argparse.REMAINDER,
                        help='after --: flags for gluonbert-serve')
    args = parser.parse_args()
    args.concurrency = numbers(args.concurrency, int)
    args.rates = numbers(args.rates, float)
    servers = [s.strip() for s in args.servers.split(',') if s.strip()]
    flags = [f for f in args.server_flags if f != '--']
    texts = reviews()
    print(f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; load average '
          f'{" ".join(f"{x:.2f}" for x in os.getloadavg())}; {len(texts)} reviews; '
          f'{args.seconds:g} s a level; server flags {flags or "(defaults)"}', flush=True)
    times = direct(args.model_dir, texts, args.repeats)
    print(f'direct call, one review: p50 {quantile(times, .5):.1f} ms, p90 '
          f'{quantile(times, .9):.1f} ms', flush=True)

    workdir = tempfile.mkdtemp(prefix='bench_serve_')
    results, soak_result = [], None
    try:
        if 'hf-pipeline' in servers and (args.no_hf or not hf_available(args.hf_python)):
            why = ('--no-hf' if args.no_hf else
                   f'{args.hf_python} lacks torch, transformers, fastapi or uvicorn')
            print(f'hf-pipeline: skipped ({why})')
            servers.remove('hf-pipeline')
        hf_model = export_hf(args.model_dir, workdir) if 'hf-pipeline' in servers else None
        for name in servers:
            if name == 'gluonbert':
                server = gluonbert_server(name, args.model_dir, flags)
            elif name == 'unbatched':
                server = gluonbert_server(name, args.model_dir, flags + ['--max-batch-size', '1'])
            elif name == 'hf-pipeline':
                server = hf_server(args.hf_python, workdir, hf_model)
            else:
                parser.error(f'unknown server {name!r}')
            try:
                results.append(measure(server, texts, args))
            finally:
                print(f'{name} exit status after SIGTERM: {server.stop()}', flush=True)
        if args.soak_minutes > 0:
            rate = args.soak_rate
            if rate is None:
                peak = next((r['peak_rps'] for r in results if r['server'] == 'gluonbert'), None)
                if peak is None:
                    parser.error('--soak-minutes needs the gluonbert server measured, or '
                                 '--soak-rate')
                rate = args.soak_fraction * peak
            soak_result = soak(args.model_dir, flags, texts, rate, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print('\n### targets')
    for line in targets(results, soak_result):
        print(line)
    print(f'end: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; load average '
          f'{" ".join(f"{x:.2f}" for x in os.getloadavg())}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'soak': soak_result, 'flags': flags,
                       'seconds': args.seconds}, f, indent=1)


if __name__ == '__main__':
    main()
