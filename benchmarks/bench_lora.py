"""Full fine-tuning against LoRA on the embedded default (MiniLM, bundled reviews).

    python benchmarks/bench_lora.py                      # both, defaults of gluonbert-finetune
    python benchmarks/bench_lora.py --lora-epochs 8

Runs ``gluonbert-finetune`` twice in child processes and prints a markdown table of test
accuracy, trainable parameters, train samples/s, wall time and the child's peak resident
memory (from ``wait4``'s rusage), and the adapter's size against the full model's.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def run(flags, output_dir):
    """(metrics dict, peak RSS in MiB) of one gluonbert-finetune child process."""
    command = [sys.executable, '-m', 'gluonbert.cli', 'finetune', '--no-progress',
               '--output-dir', output_dir] + flags
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f'bench_lora: {" ".join(command)} failed')
    with open(os.path.join(output_dir, 'metrics.json'), encoding='utf-8') as f:
        metrics = json.load(f)
    return metrics, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=None, help='full fine-tuning epochs')
    parser.add_argument('--lora-epochs', type=int, default=8)
    parser.add_argument('--lora-rank', type=int, default=8)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        full_flags = ['--epochs', str(args.epochs)] if args.epochs else []
        lora_flags = ['--lora-rank', str(args.lora_rank), '--epochs', str(args.lora_epochs)]
        for name, flags in (('full', full_flags), (f'LoRA r={args.lora_rank}', lora_flags)):
            metrics, rss = run(flags, os.path.join(tmp, name.split()[0]))
            model_bytes = os.path.getsize(os.path.join(metrics['model_dir'], 'model.params'))
            rows.append((name, metrics, rss, model_bytes))
    print('| run | epochs | lr | test accuracy | trainable params | train samples/s | '
          'wall s | peak RSS MiB | saved |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name, m, rss, model_bytes in rows:
        saved = (f"adapter {m['adapter_bytes'] / 1e6:.2f} MB" if m.get('adapter_bytes')
                 else f'model {model_bytes / 1e6:.1f} MB')
        print(f"| {name} | {m['epochs']} | {m['lr']:g} | {m['test_accuracy']:.2f} | "
              f"{m['trainable_parameters']:,} ({m['trainable_fraction']:.2%}) | "
              f"{m['train_samples_per_second']:.1f} | {m['wall_seconds']:.0f} | {rss:.0f} | "
              f'{saved} |')


if __name__ == '__main__':
    main()
