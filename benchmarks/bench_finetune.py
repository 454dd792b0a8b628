"""End to end: where the embedded default fine-tune spends its wall time.

Runs ``gluonbert-finetune --profile`` (the embedded default: MiniLM on the bundled
reviews, unless other finetune flags follow ``--``) in a fresh interpreter, timing the
whole process from outside, and prints the phases as a markdown table with the share of
the wall time spent outside forward and backward passes (training and evaluation):
interpreter start and imports, model loading, reading and tokenizing, data batches,
optimizer updates, metric read-backs, checkpoints, saving and the final prediction.

    .venv/bin/python benchmarks/bench_finetune.py [--repeats 1] [-- --epochs 1 ...]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from gluonbert.timing import COMPUTE_PHASES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(extra_args):
    """(outside wall seconds, metrics dict) of one profiled fine-tune in a subprocess."""
    with tempfile.TemporaryDirectory(prefix='gluonbert-bench-') as tmp:
        command = [sys.executable, '-m', 'gluonbert.cli', 'finetune', '--profile',
                   '--no-progress', '--output-dir', tmp] + list(extra_args)
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join([ROOT] + ([env['PYTHONPATH']]
                                                      if env.get('PYTHONPATH') else []))
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f'bench_finetune: the fine-tune failed (exit {done.returncode})')
        with open(os.path.join(tmp, 'metrics.json'), encoding='utf-8') as f:
            return wall, json.load(f)


def summarise(wall, metrics):
    """Rows (phase, seconds) over the whole process, start-up included."""
    profile = metrics['profile']
    phases = dict(profile['phases'])
    # before finetune() started: interpreter start, imports, argument parsing
    phases['start-up (interpreter, imports)'] = max(0.0, wall - profile['wall_seconds'])
    phases['(not in a phase)'] = profile['unaccounted_seconds']
    return phases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--repeats', type=int, default=1, help='runs (medians are reported)')
    parser.add_argument('finetune_args', nargs='*',
                        help='gluonbert-finetune arguments, after --')
    args = parser.parse_args(argv)
    runs = [run_once(args.finetune_args) for _ in range(args.repeats)]
    rows = [summarise(wall, metrics) for wall, metrics in runs]
    walls = [wall for wall, _ in runs]
    wall = statistics.median(walls)
    names = sorted({name for row in rows for name in row},
                   key=lambda name: -statistics.median(row.get(name, 0.0) for row in rows))
    inside = statistics.median(sum(row.get(n, 0.0) for n in COMPUTE_PHASES) for row in rows)
    train_only = statistics.median(row.get('forward_backward', 0.0) for row in rows)
    metrics = runs[0][1]
    print(f"gluonbert-finetune --profile {' '.join(args.finetune_args)}".rstrip())
    print(f"model {metrics['model']}, {metrics['train_examples']} train / "
          f"{metrics['test_examples']} test examples, {metrics['epochs_run']} epochs, batch "
          f"{metrics['batch_size']}; test accuracy {metrics['test_accuracy']:.4f}; "
          f"{args.repeats} run(s), medians; fused CPU operators: "
          f"{metrics['profile'].get('fused_ops', 'unknown')}\n")
    print('| phase | seconds | share of wall |')
    print('|---|---:|---:|')
    for name in names:
        seconds = statistics.median(row.get(name, 0.0) for row in rows)
        print(f'| {name} | {seconds:.2f} | {seconds / wall:.1%} |')
    print(f'| **wall (whole process)** | **{wall:.2f}** | 100% |')
    print(f'\noutside forward/backward passes (training + evaluation): '
          f'{(wall - inside) / wall:.1%} of the wall time; outside training forward/backward '
          f'alone: {(wall - train_only) / wall:.1%}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
