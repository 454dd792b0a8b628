"""``gluonbert-serve``: a fine-tuned classifier over HTTP (Hugging Face TEI's ``/predict``,
probes, Prometheus metrics; :mod:`gluonbert.serve`), with dynamic batching.

    gluonbert-serve --model-dir runs/finetune/model --port 8080
    curl -s localhost:8080/predict -H 'content-type: application/json' \\
         -d '{"inputs": "a wonderful film"}'

The socket is bound first (a busy port is one line and exit 2), then the model loads and
warms up on the inference thread while ``/health`` answers and ``/ready`` says 503. A
model that fails to load is one line and exit 2. SIGTERM or SIGINT drains: ``/ready``
turns 503, the socket closes, every accepted request is answered, exit 0 within
``--drain-timeout``. ``--workers N`` runs N processes on the one socket, each with its
share of the cores (OpenMP threads set before MXNet is imported in each). docs/serving.md
has the figures and a deployment.
"""
import argparse
import dataclasses
import multiprocessing
import os
import signal
import socket
import sys
import time

from ..errors import EnvironmentProblem, UsageError
from ..hardware import require_bf16
from .runner import console_entry, exit_now, run_command

__all__ = ['PROG_SERVE', 'build_serve_parser', 'serve_cli', 'serve_main', 'serve_entry']

PROG_SERVE = 'gluonbert-serve'


def build_serve_parser():
    """The ``argparse`` parser of ``gluonbert-serve``."""
    parser = argparse.ArgumentParser(
        prog=PROG_SERVE,
        description='Serve a fine-tuned classifier over HTTP: POST /predict (Hugging Face '
                    'TEI compatible), GET /health, /ready, /info, /metrics, /openapi.json.')
    parser.add_argument('--model-dir', required=True,
                        help='a gluonbert-finetune model (or adapter) directory, or a Hugging '
                             'Face BertForSequenceClassification directory')
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8080, help='0: any free port (printed)')
    parser.add_argument('--workers', type=int, default=1,
                        help='model processes on the one port, each with cores // N threads')
    batching = parser.add_argument_group('dynamic batching')
    batching.add_argument('--max-batch-size', type=int, default=32, help='inputs per batch')
    batching.add_argument('--max-wait-ms', type=float, default=5.0,
                          help='how long a batch waits for more inputs after its first')
    batching.add_argument('--max-batch-tokens', type=int, default=16384,
                          help='padded tokens per batch (one input always fits alone)')
    batching.add_argument('--max-queue', type=int, default=512,
                          help='inputs waiting at most; beyond, 429 with Retry-After')
    limits = parser.add_argument_group('limits')
    limits.add_argument('--max-inputs', type=int, default=64, help='inputs per request (413)')
    limits.add_argument('--max-body-bytes', type=int, default=1 << 20,
                        help='request body size (413)')
    limits.add_argument('--request-timeout', type=float, default=30.0,
                        help='seconds from a request to its answer (504 past it)')
    limits.add_argument('--drain-timeout', type=float, default=30.0,
                        help='seconds to answer accepted requests after SIGTERM/SIGINT')
    path = parser.add_argument_group('CPU fast paths (as gluonbert-predict)')
    path.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
    path.add_argument('--quantize', choices=('int8',), default=None)
    path.add_argument('--calib-file', default=None,
                      help="int8 calibration texts (default: the model's own)")
    path.add_argument('--fast', action='store_true',
                      help='the fastest path that keeps float32\'s answers on this CPU')
    # --backend (the inference backends, a separate issue) goes here: _load_model is the
    # one place that builds what the inference thread runs.
    return parser


def _settings(args):
    """The :class:`~gluonbert.serve.app.Settings` of ``args``, checked (UsageError)."""
    from ..serve.app import Settings
    for name in ('workers', 'max_batch_size', 'max_batch_tokens', 'max_queue', 'max_inputs',
                 'max_body_bytes'):
        if getattr(args, name) < 1:
            raise UsageError(f'--{name.replace("_", "-")} must be >= 1, got '
                             f'{getattr(args, name)}')
    for name in ('max_wait_ms', 'request_timeout', 'drain_timeout'):
        value = getattr(args, name)
        if not value >= 0 or value == float('inf'):
            raise UsageError(f'--{name.replace("_", "-")} must be a finite number >= 0, got '
                             f'{value}')
    if not 0 <= args.port <= 65535:
        raise UsageError(f'--port must be 0-65535, got {args.port}')
    threads = max(1, min(4, _total_threads() // args.workers))
    return Settings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                    max_queue=args.max_queue, max_batch_tokens=args.max_batch_tokens,
                    max_inputs=args.max_inputs, max_body_bytes=args.max_body_bytes,
                    request_timeout=args.request_timeout, tokenizer_threads=threads,
                    workers=args.workers)


def _path(args):
    """``(dtype, quantize)`` that --dtype / --quantize / --fast choose (UsageError)."""
    from ..sysinfo import fastest_path
    dtype, quantize = args.dtype, args.quantize
    if args.fast:
        if quantize or dtype != 'float32':
            raise UsageError('--fast picks the CPU path itself; drop --dtype or --quantize')
        choice, why = fastest_path()
        print(f'{PROG_SERVE}: --fast: {choice} ({why})', file=sys.stderr, flush=True)
        dtype, quantize = ('float32', 'int8') if choice == 'int8' else (choice, None)
    if quantize and dtype != 'float32':
        raise UsageError(f'--quantize {quantize} and --dtype {dtype} do not combine; pick one')
    if args.calib_file and not quantize:
        raise UsageError('--calib-file is for --quantize int8')
    if dtype == 'bfloat16':
        require_bf16('--dtype bfloat16', 'use --dtype float32, or --fast')
    return dtype, quantize


def _total_threads():
    from .._env import default_num_threads
    return default_num_threads()


def _load_model(args, dtype, quantize):
    """The :class:`~gluonbert.serve.model.ServedModel` the inference thread runs: loaded,
    converted to the chosen path (gluonbert.fast) and warmed up."""
    import mxnet as mx

    from .. import fast
    from ..kernels import KernelChoice
    from ..model_dir import load_classifier
    from ..serve.model import ServedModel
    started = time.perf_counter()
    ctx = mx.cpu()
    net, vocab, tokenizer = load_classifier(args.model_dir, ctx=ctx)
    config = getattr(net, 'config', None)
    kernels = (dataclasses.asdict(KernelChoice.from_fields(**config.kernel_choices()))
               if config is not None else None)
    net.hybridize(static_alloc=True)
    calib = (fast.calibration_batches(net, vocab, tokenizer, args.calib_file,
                                      batch_size=min(32, args.max_batch_size), ctx=ctx)
             if quantize else None)
    # float32 too: the folded, oneDNN-fused copy gluonbert-predict runs beyond one batch
    net = fast.prepare(net, quantize or dtype, calib_batches=calib, ctx=ctx)
    model = ServedModel(net, vocab, tokenizer, ctx, {
        'backend': 'mxnet', 'dtype': quantize or dtype, 'kernels': kernels,
        'omp_threads': _total_threads(), 'pid': os.getpid()})
    model.warm_up(args.max_batch_size, args.max_batch_tokens)
    print(f'{PROG_SERVE}: ready in {time.perf_counter() - started:.2f} s (pid {os.getpid()}, '
          f'{quantize or dtype})', file=sys.stderr, flush=True)
    return model


def _bind(host, port):
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        raise UsageError(f'cannot listen on {host}:{port}: {err.strerror or err}') from None
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server that marks the app draining on SIGTERM/SIGINT and then exits 0
        (uvicorn itself would re-raise the signal once drained)."""

        def handle_exit(self, sig, frame):
            self.config.app.state.serving.draining = True
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return DrainingServer


def _run_worker(args, sock, dtype, quantize):
    """Serve on ``sock`` until a signal (or a model that fails to load: its error
    raised here)."""
    import uvicorn

    from ..serve.app import create_app
    settings = _settings(args)
    failure = []

    def on_load_error(err):
        failure.append(err)
        server.should_exit = True

    app = create_app(lambda: _load_model(args, dtype, quantize), settings,
                     on_load_error=on_load_error)
    config = uvicorn.Config(app, lifespan='on', log_level='warning', access_log=False,
                            timeout_graceful_shutdown=args.drain_timeout)
    server = _server_class()(config)
    server.run(sockets=[sock])
    if failure:
        raise failure[0]


def _worker_process(args, sock, dtype, quantize):
    """A ``--workers`` child (spawned: MXNet was imported with its share of threads)."""
    code = run_command(PROG_SERVE, lambda a: _run_worker(a, sock, dtype, quantize), args)
    exit_now(code)


def _supervise(args, sock, dtype, quantize):
    """Run ``--workers`` children on ``sock``; forward SIGTERM/SIGINT; the exit status."""
    threads = max(1, _total_threads() // args.workers)
    os.environ['OMP_NUM_THREADS'] = str(threads)  # read by each child's first MXNet import
    context = multiprocessing.get_context('spawn')
    children = [context.Process(target=_worker_process, args=(args, sock, dtype, quantize),
                                name=f'gluonbert-serve-{i}') for i in range(args.workers)]
    stopping = []

    def forward(sig, _frame):
        stopping.append(sig)
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children:
            child.start()
        sock.close()  # the children have theirs: once they close, connections are refused
        print(f'{PROG_SERVE}: {args.workers} workers, {threads} threads each',
              file=sys.stderr, flush=True)
        code = 0
        while any(child.is_alive() for child in children):
            for child in children:
                child.join(0.2)
                if child.exitcode not in (None, 0) and not stopping:
                    code = code or child.exitcode
                    forward(signal.SIGTERM, None)  # one failed: stop the others
        return code or max(abs(child.exitcode or 0) for child in children)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SERVE_PACKAGES = ('fastapi', 'uvicorn', 'prometheus_client')


def require_serve_extra():
    """Raise a one-line EnvironmentProblem naming the ``serve`` extra where one of the
    packages the server is built on does not import."""
    import importlib
    for name in SERVE_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise EnvironmentProblem(f"{PROG_SERVE} needs the {name} package, which is not "
                                     f"installed: pip install 'gluonbert[serve]'") from None


def serve_cli(args):
    """``gluonbert-serve``: returns the exit status of the worker processes (0 when they
    drained after a signal); user errors raise (one line and exit 2 in :func:`serve_main`)."""
    require_serve_extra()
    _settings(args)
    dtype, quantize = _path(args)
    if not os.path.isdir(args.model_dir):
        raise UsageError(f'no such model directory: {args.model_dir}')
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f'{PROG_SERVE}: listening on http://{host}:{port} (model {args.model_dir})',
          file=sys.stderr, flush=True)
    if args.workers > 1:
        return _supervise(args, sock, dtype, quantize)
    _run_worker(args, sock, dtype, quantize)
    return 0


def serve_main(argv=None):
    """Entry point of ``gluonbert-serve``: parse ``argv``, serve, return the exit status."""
    args = build_serve_parser().parse_args(argv)
    outcome = {}
    code = run_command(PROG_SERVE, lambda a: outcome.update(code=serve_cli(a)), args)
    return code or outcome.get('code', 0)


serve_entry = console_entry(serve_main)

if __name__ == '__main__':
    serve_entry()
