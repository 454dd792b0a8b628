"""Where does a run's time go: wall seconds per named phase (``gluonbert-finetune --profile``).

MXNet's engine is asynchronous: a Python call returns before its work is done, so a plain
stopwatch around ``net(x)`` measures almost nothing. :class:`PhaseTimer` drains the engine
(``mx.nd.waitall()``) at the end of every phase, so that each phase is charged with the
work it issued. That removes the little overlap there was between phases, so a profiled
run is slightly slower than an unprofiled one.
"""
import contextlib
import time

import mxnet as mx

__all__ = ['PhaseTimer', 'COMPUTE_PHASES']

# The phases that are forward and backward passes (of training and of evaluation).
COMPUTE_PHASES = ('forward_backward', 'evaluate')


class PhaseTimer:
    """Accumulates wall seconds per phase name.

    >>> timer = PhaseTimer()
    >>> with timer('load'):
    ...     pass
    >>> sorted(timer.seconds)
    ['load']
    """

    def __init__(self):
        self.seconds = {}
        self.counts = {}

    @contextlib.contextmanager
    def __call__(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            mx.nd.waitall()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.counts[name] = self.counts.get(name, 0) + 1

    @property
    def total(self):
        return sum(self.seconds.values())

    def share_outside(self, wall, compute=COMPUTE_PHASES):
        """Fraction of ``wall`` seconds spent outside the ``compute`` phases."""
        if wall <= 0:
            raise ValueError(f'wall time must be > 0, got {wall}')
        inside = sum(self.seconds.get(name, 0.0) for name in compute)
        return max(0.0, wall - inside) / wall

    def to_dict(self, wall=None):
        """``{'phases': {name: seconds}, 'calls': {...}}``, plus ``wall_seconds`` and
        ``unaccounted_seconds`` (wall minus the phases) when ``wall`` is given."""
        result = {'phases': {k: round(v, 4) for k, v in self.seconds.items()},
                  'calls': dict(self.counts)}
        if wall is not None:
            result['wall_seconds'] = round(wall, 4)
            result['unaccounted_seconds'] = round(max(0.0, wall - self.total), 4)
        return result

    def table(self, wall=None):
        """The phases, longest first, as aligned text lines with their share of ``wall``
        (default: the sum of the phases)."""
        wall = wall if wall is not None else self.total
        rows = sorted(self.seconds.items(), key=lambda item: -item[1])
        if wall > self.total:
            rows.append(('(not in a phase)', wall - self.total))
        width = max([len(name) for name, _ in rows] + [5])
        lines = [f'{name:<{width}}  {seconds:8.2f} s  {seconds / wall:6.1%}'
                 for name, seconds in rows]
        lines.append(f'{"total":<{width}}  {wall:8.2f} s')
        return lines


class _NoTimer:
    """A PhaseTimer that does nothing (the default: no engine syncs)."""

    def __call__(self, name):  # pylint: disable=unused-argument
        return contextlib.nullcontext()


NO_TIMER = _NoTimer()
