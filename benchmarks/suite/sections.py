"""Sections (the GEMM peak, inference or training per size, tokenization, padding): their
run order, one measured in this process, or one in a fresh interpreter of its own."""
import json
import os
import subprocess
import sys

from .gemm import gemm_group
from .harness import as_row
from .hf import HFRunner
from .inference import inference_group
from .padding import padding_group
from .tokenization import tokenization_group
from .training import training_group
from .workers import ENTRY, ROOT, Worker

RESULTS_MARK = 'BENCH-SUITE-RESULTS '


def sections_for(groups, sizes):
    """Sections in run order. Each inference section also times the GEMM peak, in the same
    rounds as its models, for the share-of-peak notes."""
    # inference sections time the GEMM peak themselves; alone only when asked without them
    sections = ['gemm'] if 'gemm' in groups and 'inference' not in groups else []
    sections += [f'inference:{size}' for size in sizes if 'inference' in groups]
    sections += [f'training:{size}' for size in sizes if 'training' in groups]
    sections += [g for g in ('tokenization', 'padding') if g in groups]
    return sections


def run_section(section, settings, args, threads, keep):
    """Measure one section in this process; returns result rows."""
    group, _, size = section.partition(':')
    needs_hf = group in ('inference', 'training', 'tokenization')
    hf = HFRunner(args.hf_python if needs_hf else 'none', threads)
    amp = {}

    def amp_worker():
        if 'worker' not in amp:
            amp['worker'] = Worker(sys.executable, 'mx-amp', threads)
        return amp['worker']
    try:
        if group == 'gemm':
            variants = gemm_group(settings, settings['repeats'])
        elif group == 'inference':
            variants = inference_group(size, settings, hf, keep)
        elif group == 'training':
            variants = training_group(size, settings, hf, keep, amp_worker)
        elif group == 'tokenization':
            variants = tokenization_group(settings, hf, keep)
        else:
            variants = padding_group(settings, keep)
    finally:
        hf.close()
        if 'worker' in amp:
            amp['worker'].close()
    rows = [dict(as_row(v), section=section) for v in variants]
    return rows, (hf.versions if hf.worker is not None else None)


def run_isolated(section, argv, threads):
    """Run one section in a fresh interpreter (all its memory is returned at exit)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.setdefault('MXNET_SUBGRAPH_VERBOSE', '0')
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    proc = subprocess.run([sys.executable, ENTRY, *argv, '--section', section],
                          stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULTS_MARK):
            payload = json.loads(line[len(RESULTS_MARK):])
            return payload['rows'], payload['hf']
    why = ('killed (out of memory?)' if proc.returncode in (-9, 137)
           else f'exit status {proc.returncode}')
    group, _, size = section.partition(':')
    return [{'group': {'gemm': 'GEMM peak', 'padding': 'padding waste'}.get(group, group),
             'name': f'all variants ({size or group})', 'unit': '', 'speeds': [],
             'error': f'section {section} failed: {why}', 'note': '', 'flops': None,
             'peak': None}], None
