"""The timing harness: a timed variant, warm-up and interleaved rounds, the results table
(minimum and median per variant, inference rows' share of the GEMM peak) and the line that
says where and how the numbers were taken."""
import statistics
import time

PAUSE = 0.2  # seconds before each timed round: lets other processes' OpenMP threads sleep


class Variant:
    """A timed thing: ``seconds(iters)``; ``items`` per iteration; a remote or local run."""

    def __init__(self, group, name, unit, items, run=None, worker=None, flops=None,
                 peak=None, note=''):
        self.group, self.name, self.unit, self.items = group, name, unit, items
        self.run, self.worker, self.flops, self.peak, self.note = run, worker, flops, peak, note
        self.speeds, self.error = [], None

    def seconds(self, iters):
        if self.worker is not None:
            reply = self.worker.call({'cmd': 'time', 'name': self.key, 'iters': iters})
            if 'error' in reply:
                raise RuntimeError(reply['error'])
            return reply['seconds']
        start = time.perf_counter()
        self.run(iters)
        return time.perf_counter() - start

    @property
    def key(self):
        return f'{self.group}:{self.name}'


def failure(err, limit=200):
    """An exception as a variant's error text."""
    return f'{type(err).__name__}: {err}'[:limit]


def setup_remote(worker, variant, request):
    """Create ``variant`` in ``worker``; on failure mark it with the error."""
    reply = worker.call({'cmd': 'setup', 'name': variant.key, **request})
    if 'error' in reply:
        variant.error = reply['error']
    variant.worker = worker
    return variant


def measure(variants, repeats, warmup, iters=1):
    """Warm up every variant, then time them round-robin ``repeats`` times."""
    live = [v for v in variants if v.error is None]
    for variant in live:
        try:
            for _ in range(warmup):
                variant.seconds(iters)
        except Exception as err:  # pylint: disable=broad-except
            variant.error = failure(err)
    live = [v for v in live if v.error is None]
    for _ in range(repeats):
        for variant in live:
            time.sleep(PAUSE)
            try:
                seconds = variant.seconds(iters)
            except Exception as err:  # pylint: disable=broad-except
                variant.error = failure(err)
                continue
            variant.speeds.append(variant.items * iters / seconds)
    for variant in variants:
        variant.run = None  # free the models
        if variant.worker is not None and variant.error is None:
            variant.worker.call({'cmd': 'free', 'name': variant.key})


def as_row(variant):
    return {'group': variant.group, 'name': variant.name, 'unit': variant.unit,
            'speeds': variant.speeds, 'error': variant.error, 'note': variant.note,
            'flops': variant.flops, 'peak': variant.peak}


# ------------------------------------------------------------------------------ report
def fmt(value):
    if value >= 100:
        return f'{value:.0f}'
    if value >= 10:
        return f'{value:.1f}'
    return f'{value:.2f}'


def table(rows):
    """Markdown table of result rows (dicts); inference rows get their share of the peak."""
    peaks = {}  # (section, dtype) -> GFLOP/s; a section's own GEMM rows first
    for r in rows:
        if r['group'] == 'GEMM peak' and r['speeds']:
            peaks[(r.get('section'), r['peak'])] = statistics.median(r['speeds'])
            peaks.setdefault((None, r['peak']), peaks[(r.get('section'), r['peak'])])
    lines = ['| benchmark | variant | unit | min | median | notes |',
             '|---|---|---|---:|---:|---|']
    for r in rows:
        if not r['speeds']:
            reason = r['error'] or 'no measurement'
            cell = 'not installed' if reason.startswith('not installed') else 'n/a'
            lines.append(f"| {r['group']} | {r['name']} | {r['unit']} | {cell} | {cell} | "
                         f"{reason} |")
            continue
        median = statistics.median(r['speeds'])
        notes = [r['note']] if r['note'] else []
        if r['flops'] and r['peak'] and r['group'] != 'GEMM peak':
            achieved = median * r['flops'] / 1e9
            peak = peaks.get((r.get('section'), r['peak']), peaks.get((None, r['peak'])))
            share = f' = {achieved / peak:.0%} of the {r["peak"]} GEMM peak' if peak else ''
            notes.append(f'{achieved:.0f} GFLOP/s{share}')
        if r['error']:
            notes.append(f"partly failed: {r['error']}")
        lines.append(f"| {r['group']} | {r['name']} | {r['unit']} | {fmt(min(r['speeds']))} | "
                     f"{fmt(median)} | {'; '.join(notes)} |")
    return '\n'.join(lines)


def environment_line(threads, hf_versions, rounds, quick, seconds):
    """Versions, the CPU, threads, bf16, the fused operators, rounds and the run's time."""
    import gluonbert  # (imported first, as everywhere: it sets MXNet's thread count)
    import mxnet as mx
    from gluonbert.hardware import bf16_support, cpu_info
    cpu = cpu_info().describe()
    bf16, why_not = bf16_support()
    versions = (f", torch {hf_versions['torch']}, transformers {hf_versions['transformers']}"
                if hf_versions else '')
    return (f'gluonbert {gluonbert.__version__}, mxnet {mx.__version__}{versions}; '
            f'{cpu}, {threads} threads (OMP_NUM_THREADS); '
            f'bf16 {"native" if bf16 else "rows skipped: " + why_not}; '
            f'fused CPU operators {"on" if gluonbert.ops.load() else "off"}; '
            f'{rounds} interleaved rounds per variant'
            f'{" (--quick)" if quick else ""}; {seconds:.0f} s')
