"""``gluonbert-info``: the environment report to paste into a bug report
(:mod:`gluonbert.sysinfo`): gluonbert, MXNet and the CPU's features, MXNet's build, GPUs,
the fused operators, the inference paths this machine runs and the one ``--fast`` takes.

    gluonbert-info          # text
    gluonbert-info --json   # the same as JSON
    gluonbert-info --model-dir DIR   # and the backend --backend auto picked for DIR here
"""
import argparse
import json
import os
import sys

from ..backends import backend_report, format_backend_report
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
    parser.add_argument('--model-dir', default=None,
                        help='also show the backend and precision gluonbert-predict '
                             '--backend auto recorded for this model on this CPU')
    return parser


def main(argv=None, stdout=None):
    """Entry point of ``gluonbert-info``; exit status 0."""
    args = build_info_parser().parse_args(argv)
    stdout = stdout or sys.stdout
    if args.model_dir is not None and not os.path.isdir(args.model_dir):
        print(f'{PROG_INFO}: error: no such model directory: {args.model_dir}',
              file=sys.stderr)
        return 2
    info = report()
    info['backends'] = backend_report(args.model_dir)
    text = '\n'.join([format_report(info)] + format_backend_report(info['backends']))
    stdout.write((json.dumps(info, indent=2) if args.json else text) + '\n')
    stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main())
