"""The command-line tools, one module per command:

- ``gluonbert-finetune`` (:mod:`.finetune`), ``gluonbert-predict`` (:mod:`.predict`),
  ``gluonbert-evaluate`` (:mod:`.evaluate`),
  ``gluonbert-pretrain-data`` (:mod:`.pretrain_data`), ``gluonbert-pretrain``
  (:mod:`.pretrain`), ``gluonbert-export`` (:mod:`.export`),
  ``gluonbert-ops`` (:mod:`.ops`), ``gluonbert-launch`` (:mod:`.launch`) and
  ``gluonbert-serve`` (:mod:`.serve`, the HTTP server: :mod:`gluonbert.serve`);
- :mod:`.runner`: exit statuses (a user error is one line and exit 2, Ctrl-C 130, a bug
  its traceback and exit 1) and the fast exit of console scripts;
- :mod:`.common`: devices, process groups, default learning rates.

``python -m gluonbert.cli COMMAND [flags]`` runs a command without its console script.
The library never imports this package.
"""
from .common import default_lr
from .evaluate import build_evaluate_parser, evaluate_cli, evaluate_entry, evaluate_main
from .export import build_export_parser, export_cli, export_entry, export_main
from .finetune import build_finetune_parser, finetune_entry, finetune_main
from .predict import build_predict_parser, predict_cli, predict_entry, predict_main
from .pretrain import build_pretrain_parser, pretrain_entry, pretrain_main
from .pretrain_data import (build_pretrain_data_parser, pretrain_data_entry,
                            pretrain_data_main)
from .runner import console_entry, exit_now, run_command

# the modules' own `finetune`, `pretrain` and `pretrain_data` functions are not
# re-exported: their names are the modules'
__all__ = ['finetune_main', 'predict_main', 'pretrain_main', 'pretrain_data_main',
           'export_main', 'build_finetune_parser', 'build_predict_parser',
           'build_pretrain_parser', 'build_pretrain_data_parser', 'build_export_parser',
           'predict_cli', 'export_cli', 'run_command', 'exit_now', 'console_entry',
           'finetune_entry', 'predict_entry', 'pretrain_entry', 'pretrain_data_entry',
           'export_entry', 'default_lr', 'evaluate_main', 'evaluate_cli',
           'build_evaluate_parser', 'evaluate_entry']
