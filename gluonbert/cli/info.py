"""``gluonbert-info``: the environment report to paste into a bug report
(:mod:`gluonbert.sysinfo`): gluonbert, MXNet and the CPU's features, MXNet's build, GPUs,
the fused operators, the inference paths this machine runs and the one ``--fast`` takes.

    gluonbert-info          # text
    gluonbert-info --json   # the same as JSON
"""
import argparse
import json
import sys

from ..sysinfo import format_report, report

__all__ = ['PROG_INFO', 'build_info_parser', 'main']

PROG_INFO = 'gluonbert-info'


def build_info_parser():
    """The ``argparse`` parser of ``gluonbert-info``."""
    parser = argparse.ArgumentParser(
        prog=PROG_INFO, description='Print the environment report: versions, CPU features, '
                                    "MXNet's build, GPUs, gluonbert's fused operators and "
                                    'fast paths.')
    parser.add_argument('--json', action='store_true', help='as JSON')
    return parser


def main(argv=None, stdout=None):
    """Entry point of ``gluonbert-info``; exit status 0."""
    args = build_info_parser().parse_args(argv)
    stdout = stdout or sys.stdout
    info = report()
    stdout.write((json.dumps(info, indent=2) if args.json else format_report(info)) + '\n')
    stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main())
