"""Benchmark worker processes: ``bench_suite.py --worker KIND``, driven over stdin/stdout
with one JSON object per line. They run what cannot share the main process: Hugging Face
(another interpreter) and gluonbert's bfloat16 training (MXNet's AMP is process-wide)."""
import json
import os
import subprocess
import sys
import tempfile
import time

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
ENTRY = os.path.join(BENCHMARKS, 'bench_suite.py')  # the command line; it serves --worker


class Worker:
    """A benchmark process driven over stdin/stdout with one JSON object per line."""

    def __init__(self, python, kind, threads):
        env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH',)}
        if kind == 'mx-amp':
            env['PYTHONPATH'] = ROOT
        env['OMP_NUM_THREADS'] = str(threads)
        self.log = tempfile.TemporaryFile(mode='w+')  # the worker's stderr, for its last words
        self.proc = subprocess.Popen([python, ENTRY, '--worker', kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env)
        self.hello = self.call({'cmd': 'hello'})

    def call(self, request):
        try:
            self.proc.stdin.write(json.dumps(request) + '\n')
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ''
        if not line:
            self.proc.wait()
            self.log.seek(0)
            last = [ln.strip() for ln in self.log.read().splitlines() if ln.strip()][-1:]
            return {'error': f'worker exited (status {self.proc.returncode})'
                             f'{": " + last[0] if last else ""}'}
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.call({'cmd': 'quit'})
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def serve(make_handlers):
    """Serve requests: setup a variant, time it, free it. stdout carries the protocol only.

    ``make_handlers()`` returns ``{'hello': f(), kind: f(request) -> run(iters), ...}``; it is
    called once stdout is set aside, so that what its imports print goes to stderr.
    """
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not corrupt the protocol
    variants = {}
    handlers = make_handlers()
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request['cmd']
        try:
            if cmd == 'quit':
                out.write('{}\n')
                out.flush()
                return
            if cmd == 'hello':
                reply = handlers['hello']()
            elif cmd == 'setup':
                variants[request['name']] = handlers[request['kind']](request)
                reply = {'ok': True}
            elif cmd == 'time':
                run = variants[request['name']]
                start = time.perf_counter()
                run(request.get('iters', 1))
                reply = {'seconds': time.perf_counter() - start}
            elif cmd == 'free':
                variants.pop(request['name'], None)
                import gc
                gc.collect()
                reply = {'ok': True}
            else:
                reply = {'error': f'unknown command {cmd}'}
        except Exception as err:  # pylint: disable=broad-except
            reply = {'error': f'{type(err).__name__}: {err}'[:300]}
        out.write(json.dumps(reply) + '\n')
        out.flush()
