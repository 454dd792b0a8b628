"""``gluonbert-launch``: start a parameter-server training job (MXNet's ``dist_*`` kvstores).

::

    gluonbert-launch -n 2 -s 1 -- gluonbert-finetune --kvstore dist_sync --model tiny
    gluonbert-launch -n 4 -s 2 --hosts hosts.txt --timeout 7200 -- \\
        gluonbert-finetune --kvstore dist_sync --gpus 0,1,2,3 --output-dir runs/dist

A job is one *scheduler*, ``-s`` *servers* (they hold the summed gradients) and ``-n``
*workers* (which run the command after ``--``). Every process gets MXNet's environment:
``DMLC_ROLE`` (scheduler, server or worker), ``DMLC_PS_ROOT_URI``/``DMLC_PS_ROOT_PORT``
(where the scheduler listens), ``DMLC_NUM_SERVER`` and ``DMLC_NUM_WORKER``. Scheduler and
servers are ``python -c "import mxnet"``: MXNet runs their loop on import.

Without ``--hosts`` everything runs on this machine, on 127.0.0.1 and a free port. With
``--hosts FILE`` (one host name or address per line, ``#`` comments) the processes are
started over ssh (``ssh -tt HOST 'cd DIR && exec env DMLC_...=... CMD'``; passwordless ssh
and the same Python environment and working directory on every host are needed): the
scheduler on the first host, servers and workers round-robin over the hosts.

Each process runs in its own process group. The launcher waits for the workers; when one
exits non-zero (or a server or the scheduler fails, or ``--timeout`` passes, or the launcher
gets Ctrl-C / SIGTERM), it stops every process (SIGTERM to each group, SIGKILL after
``--grace`` seconds), prints one line naming what failed and exits non-zero: the failed
worker's exit code, 124 after a timeout, 130 after Ctrl-C. The workers' output is prefixed
with ``[worker N]`` (N is the launch order; the training rank is assigned by the scheduler),
or written to ``--log-dir``.
"""
import argparse
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from .._io import write_text
from ..errors import UsageError

__all__ = ['main', 'build_parser', 'launch', 'read_hosts']

PROG = 'gluonbert-launch'
# With DMLC_ROLE=server/scheduler, `import mxnet` serves right away, from inside the import.
# A dist_async server unpickles the workers' optimizer (gluonbert's AdamW and schedule),
# which imports gluonbert, and that fails against a half-imported mxnet: so the role is
# hidden while gluonbert and mxnet are imported, then the server loop is started.
SERVER_CODE = ('import os, importlib.util; role = os.environ.pop("DMLC_ROLE"); import mxnet; '
               'importlib.util.find_spec("gluonbert") and __import__("gluonbert"); '
               'os.environ["DMLC_ROLE"] = role; '
               'from mxnet.kvstore.kvstore_server import _init_kvstore_server_module as serve; '
               'serve()')
# Exec'd in front of each local child: it dies with the launcher even if the launcher is
# SIGKILLed (Linux PR_SET_PDEATHSIG, kept across exec).
_PDEATHSIG_SHIM = ('import ctypes, os, signal, sys\n'
                   'ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n'
                   'if os.getppid() != int(sys.argv[1]):\n'
                   '    sys.exit(137)\n'
                   'os.execvp(sys.argv[2], sys.argv[2:])\n')


class LaunchError(UsageError):
    """A problem with the launcher's arguments; reported as one line."""


class _Stop(Exception):
    """SIGTERM/SIGHUP to the launcher."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _Process:
    def __init__(self, role, index, host, popen):
        self.role, self.index, self.host, self.popen = role, index, host, popen
        self.pid = popen.pid
        self.exit_time = None

    @property
    def label(self):
        return self.role if self.role == 'scheduler' else f'{self.role} {self.index}'


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Start a distributed training job on MXNet parameter servers: a '
                    'scheduler, SERVERS servers and WORKERS workers that run COMMAND (e.g. '
                    'gluonbert-finetune --kvstore dist_sync ...). Locally on 127.0.0.1, or '
                    'on the machines of --hosts over ssh.',
        usage=f'{PROG} -n WORKERS [-s SERVERS] [--hosts FILE] [--timeout SECONDS] [--port P] '
              f'[options] -- COMMAND [ARG ...]')
    parser.add_argument('-n', '--num-workers', type=int, required=True, metavar='WORKERS')
    parser.add_argument('-s', '--num-servers', type=int, default=1, metavar='SERVERS',
                        help='parameter servers (default 1; about one per worker machine '
                             'spreads the traffic)')
    parser.add_argument('--hosts', metavar='FILE',
                        help='one host per line; processes are started there with ssh')
    parser.add_argument('--timeout', type=float, default=0, metavar='SECONDS',
                        help='stop the whole job after this long (default: no limit)')
    parser.add_argument('--port', type=int, default=0,
                        help="the scheduler's port (default: a free one locally, a random "
                             "one in 20000-40000 with --hosts)")
    parser.add_argument('--grace', type=float, default=5, metavar='SECONDS',
                        help='between SIGTERM and SIGKILL when stopping (default 5)')
    parser.add_argument('--log-dir', metavar='DIR',
                        help="write each process's output to DIR/worker-N.log, "
                             "DIR/server-N.log, DIR/scheduler.log instead of prefixing it")
    parser.add_argument('--env', action='append', default=[], metavar='NAME=VALUE',
                        help='extra environment variable for every process (repeatable)')
    parser.add_argument('--python', default=sys.executable,
                        help='Python that runs the scheduler and servers (default: this one)')
    parser.add_argument('--workdir', default=os.getcwd(),
                        help='working directory on the hosts (default: the current one)')
    parser.add_argument('--ssh', default='ssh -o BatchMode=yes',
                        help="ssh command for --hosts (default: 'ssh -o BatchMode=yes')")
    parser.add_argument('--pid-file', metavar='FILE',
                        help='write the JSON list of started processes (role, index, pid)')
    parser.add_argument('--dry-run', action='store_true',
                        help='print the command of every process and exit')
    parser.add_argument('command', nargs=argparse.REMAINDER,
                        help='the worker command, after --')
    return parser


def read_hosts(path):
    """Host names from a file: one per line, blank lines and ``#`` comments ignored."""
    try:
        with open(path, 'rb') as f:
            raw_lines = f.read().split(b'\n')
    except OSError as err:
        raise LaunchError(f'cannot read --hosts {path}: {err.strerror}') from err
    hosts = []
    for number, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode('utf-8')
        except UnicodeDecodeError as err:
            raise LaunchError(f'--hosts {path}: line {number} is not UTF-8 text (byte '
                              f'{err.start + 1}, 0x{raw[err.start]:02x})') from None
        hosts.append(line.lstrip('\ufeff') if number == 1 else line)
    hosts = [line.split('#', 1)[0].strip() for line in hosts]
    hosts = [h for h in hosts if h]
    if not hosts:
        raise LaunchError(f'--hosts {path} lists no host')
    for host in hosts:
        # a name like '-oProxyCommand=...' would be read by ssh as an option
        if host.startswith('-') or any(c.isspace() for c in host):
            raise LaunchError(f'--hosts {path}: {host!r} is not a host name (host names '
                              f'cannot begin with "-" or contain spaces)')
    return hosts


def _free_port(host='127.0.0.1'):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _parse_env(pairs):
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition('=')
        if not sep or not name:
            raise LaunchError(f'--env takes NAME=VALUE, got {pair!r}')
        env[name] = value
    return env


def _describe_exit(code):
    if code < 0:
        try:
            return f'was killed by {signal.Signals(-code).name}'
        except ValueError:
            return f'was killed by signal {-code}'
    return f'exited with code {code}'


class _Job:
    def __init__(self, args, command):
        self.args, self.command = args, command
        self.hosts = read_hosts(args.hosts) if args.hosts else None
        self.processes = []
        self.threads = []
        self.lock = threading.Lock()
        self.logs = []

    # ------------------------------------------------------------------ starting
    def environment(self, port):
        root = self.hosts[0] if self.hosts else '127.0.0.1'
        return {'DMLC_PS_ROOT_URI': root, 'DMLC_PS_ROOT_PORT': str(port),
                'DMLC_NUM_SERVER': str(self.args.num_servers),
                'DMLC_NUM_WORKER': str(self.args.num_workers)}

    def plan(self):
        """(role, index, host, argv) for every process, scheduler first."""
        python_code = [self.args.python, '-c', SERVER_CODE]
        plan = [('scheduler', 0, self.hosts[0] if self.hosts else None, python_code)]
        for i in range(self.args.num_servers):
            plan.append(('server', i, self.hosts[i % len(self.hosts)] if self.hosts else None,
                         python_code))
        for i in range(self.args.num_workers):
            plan.append(('worker', i, self.hosts[i % len(self.hosts)] if self.hosts else None,
                         self.command))
        return plan

    def commands(self, port, extra_env):
        """(role, index, host, argv, env) of every process: with --hosts, argv is the ssh
        command (which carries the environment) and env is empty."""
        common = {**self.environment(port), **extra_env}
        commands = []
        for role, index, host, argv in self.plan():
            env = {**common, 'DMLC_ROLE': role, 'GLUONBERT_LAUNCH_ROLE': role,
                   'GLUONBERT_LAUNCH_INDEX': str(index)}
            if host is not None:
                env['DMLC_NODE_HOST'] = host
                remote = ' '.join(shlex.quote(a) for a in
                                  ['env', *(f'{k}={v}' for k, v in env.items()), *argv])
                # -tt: the remote command gets SIGHUP when its ssh is stopped
                argv = [*shlex.split(self.args.ssh), '-tt', '--', host,
                        f'cd {shlex.quote(self.args.workdir)} && exec {remote}']
                env = {}
            commands.append((role, index, host, argv, env))
        return commands

    def start(self, port, extra_env):
        for role, index, host, argv, env in self.commands(port, extra_env):
            if host is None and sys.platform.startswith('linux'):
                argv = [sys.executable, '-c', _PDEATHSIG_SHIM, str(os.getpid()), *argv]
            label = role if role == 'scheduler' else f'{role}-{index}'
            if self.args.log_dir:
                log = open(os.path.join(self.args.log_dir, f'{label}.log'), 'wb')
                self.logs.append(log)
                stdout = log
            else:
                stdout = subprocess.PIPE
            popen = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                     stdout=stdout, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            self.processes.append(_Process(role, index, host, popen))
        # readers start once every child is forked (no threads while forking)
        for process in self.processes:
            if process.popen.stdout is not None:
                thread = threading.Thread(target=self._relay, args=(process,), daemon=True)
                thread.start()
                self.threads.append(thread)

    def _relay(self, process):
        prefix = f'[{process.label}] '.encode()
        out = sys.stdout.buffer
        for line in iter(process.popen.stdout.readline, b''):
            with self.lock:
                out.write(prefix + line.rstrip(b'\r\n') + b'\n')
                out.flush()

    def write_pid_file(self, path):
        records = [{'role': p.role, 'index': p.index, 'host': p.host, 'pid': p.pid}
                   for p in self.processes]
        write_text(path, json.dumps({'launcher': os.getpid(), 'processes': records}))

    # ------------------------------------------------------------------ waiting
    def wait(self, deadline):
        """None when every worker exited 0; otherwise (message, exit status)."""
        workers = [p for p in self.processes if p.role == 'worker']
        while True:
            now = time.monotonic()
            for process in self.processes:
                if process.exit_time is None and process.popen.poll() is not None:
                    process.exit_time = now
            failed = [p for p in self.processes
                      if p.exit_time is not None and p.popen.returncode != 0]
            if failed:
                first = min(failed, key=lambda p: (p.exit_time, p.role != 'worker', p.index))
                code = first.popen.returncode
                status = code if 0 < code < 256 else 128 + (-code if code < 0 else 1)
                return f'{first.label} {_describe_exit(code)}', status
            if all(p.exit_time is not None for p in workers):
                return None
            # servers leave once every worker has said goodbye, maybe before the last worker
            # process ends; one that left long before the workers did was lost
            early = [p for p in self.processes if p.role != 'worker' and p.exit_time is not None
                     and now - p.exit_time > self.args.grace + 30]
            if early:
                return f'{early[0].label} exited while workers were still running', 1
            if deadline is not None and now >= deadline:
                running = [str(p.index) for p in workers if p.exit_time is None]
                return (f'timed out after {self.args.timeout:g} s (worker(s) '
                        f'{", ".join(running)} still running)', 124)
            time.sleep(0.05)

    def wait_servers(self, seconds):
        """After the workers: the scheduler and servers exit by themselves."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(p.popen.poll() is not None for p in self.processes):
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------------ stopping
    def _signal_groups(self, signum):
        for process in self.processes:
            try:
                os.killpg(process.pid, signum)  # its group: pgid == pid (own session)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self):
        """SIGTERM every process group, SIGKILL what is left after --grace; reap all."""
        # a second Ctrl-C or SIGTERM must not cut the clean-up short
        saved = {s: signal.signal(s, signal.SIG_IGN)
                 for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self._signal_groups(signal.SIGTERM)
            deadline = time.monotonic() + self.args.grace
            while time.monotonic() < deadline and any(p.popen.poll() is None
                                                      for p in self.processes):
                time.sleep(0.05)
            self._signal_groups(signal.SIGKILL)  # also any grandchild left in a group
            for process in self.processes:
                process.popen.wait()
            self.close()
        finally:
            for signum, handler in saved.items():
                signal.signal(signum, handler)

    def close(self):
        for thread in self.threads:
            thread.join(timeout=2)
        for log in self.logs:
            log.close()


def launch(args):
    """Run the job for parsed arguments; returns the launcher's exit status."""
    command = list(args.command)
    if command and command[0] == '--':
        command = command[1:]
    if not command:
        raise LaunchError('give the worker command after --, e.g. '
                          f'{PROG} -n 2 -- gluonbert-finetune --kvstore dist_sync')
    if args.num_workers < 1:
        raise LaunchError(f'-n must be >= 1, got {args.num_workers}')
    if args.num_servers < 1:
        raise LaunchError(f'-s must be >= 1, got {args.num_servers}')
    if args.timeout < 0 or args.grace < 0:
        raise LaunchError('--timeout and --grace must be >= 0')
    extra_env = _parse_env(args.env)
    if not args.hosts and not args.dry_run and shutil.which(command[0]) is None:
        raise LaunchError(f'command not found: {command[0]}')
    job = _Job(args, command)
    port = args.port or (_free_port() if not job.hosts else random.randint(20000, 40000))
    if args.dry_run:
        for role, index, host, argv, env in job.commands(port, extra_env):
            label = role if role == 'scheduler' else f'{role} {index}'
            shown = shlex.join(argv) if host else shlex.join(
                ['env', *(f'{k}={v}' for k, v in env.items()), *argv])
            print(f'[{label}] {shown}')
        return 0
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.timeout if args.timeout else None

    def on_signal(signum, _frame):
        raise _Stop(signum)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C stops the job even where SIGINT came ignored (a shell's background job without
    # job control passes SIG_IGN on, and Python then installs no KeyboardInterrupt handler)
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        try:
            job.start(port, extra_env)
            if args.pid_file:
                job.write_pid_file(args.pid_file)
            where = ', '.join(job.hosts) if job.hosts else '127.0.0.1'
            print(f'{PROG}: scheduler on {job.environment(port)["DMLC_PS_ROOT_URI"]}:{port}, '
                  f'{args.num_servers} server(s), {args.num_workers} worker(s) on {where}'
                  + (f'; logs in {args.log_dir}' if args.log_dir else ''),
                  file=sys.stderr, flush=True)
            failure = job.wait(deadline)
        except KeyboardInterrupt:
            failure = ('interrupted', 130)
        except _Stop as stop:
            failure = (f'stopped by {signal.Signals(stop.signum).name}', 128 + stop.signum)
        if failure is None:
            if not job.wait_servers(args.grace + 10):
                print(f'{PROG}: the workers finished but the servers did not exit; stopping '
                      f'them', file=sys.stderr, flush=True)
            job.stop()  # reaps, and cleans up anything a worker left behind
            print(f'{PROG}: all {args.num_workers} worker(s) finished in '
                  f'{time.monotonic() - started:.1f} s', file=sys.stderr, flush=True)
            return 0
        message, status = failure
        alive = sum(p.popen.poll() is None for p in job.processes)
        job.stop()
        print(f'{PROG}: error: {message}; stopped the job ({alive} process(es) were still '
              f'running)', file=sys.stderr, flush=True)
        return status
    finally:
        if job.processes and any(p.popen.poll() is None for p in job.processes):
            job.stop()  # an unexpected error: never leave processes behind
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv=None):
    """Entry point of ``gluonbert-launch``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return launch(args)
    except LaunchError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
