"""``python -m gluonbert.cli COMMAND [flags]``: a console command without its installed
entry point (COMMAND: finetune, predict, evaluate, pretrain-data, pretrain, export, launch,
ops, info, serve)."""
import sys

from . import (evaluate_main, export_main, finetune_main, predict_main, pretrain_data_main,
               pretrain_main)
from .info import main as info_main
from .launch import main as launch_main
from .ops import main as ops_main
from .runner import exit_now
from .serve import serve_main

COMMANDS = {'finetune': finetune_main, 'predict': predict_main, 'evaluate': evaluate_main,
            'pretrain-data': pretrain_data_main, 'pretrain': pretrain_main,
            'export': export_main, 'launch': launch_main, 'ops': ops_main, 'info': info_main,
            'serve': serve_main}

if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f'usage: python -m gluonbert.cli {{{",".join(COMMANDS)}}} [flags]')
    exit_now(COMMANDS[sys.argv[1]](sys.argv[2:]))
