"""``gluonbert-ops [build|status]``: gluonbert's fused CPU operators (:mod:`gluonbert.ops`).

    gluonbert-ops build    # build if needed (or rebuild a damaged one), load, say where
    gluonbert-ops status   # loaded from where, or why not
"""
import argparse
import sys

from .. import ops

__all__ = ['PROG_OPS', 'build_ops_parser', 'main']

PROG_OPS = 'gluonbert-ops'


def build_ops_parser():
    """The ``argparse`` parser of ``gluonbert-ops``."""
    parser = argparse.ArgumentParser(
        prog=PROG_OPS, description="gluonbert's fused CPU operators: build them once per "
                                   "machine (about 5 s), or show their status.")
    parser.add_argument('action', nargs='?', choices=('build', 'status'), default='build')
    return parser


def main(argv=None):
    """Entry point of ``gluonbert-ops``: build (if needed) and load the library, or say
    whether it is loaded; exit status 1 when it is not usable."""
    args = build_ops_parser().parse_args(argv)
    if args.action == 'build':
        try:
            ops.build(quiet=True)
        except RuntimeError as err:
            print(f'{PROG_OPS}: error: {err}', file=sys.stderr)
            return 1
    ok = ops.load()
    print(f'gluonbert fused CPU operators: {ops.status()}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
