"""What several commands share: devices (``--gpus``), process groups (``--kvstore``),
the default learning rates, and the metrics file."""
import json
import os
import shutil

import mxnet as mx

from .._io import write_text
from ..config import PRESETS
from ..distributed import KVSTORES, get_group
from ..engine.checkpoint import held_checkpoint
from ..errors import UsageError
from ..hardware import require_gpu_kernels
from ..pretrained import MINILM_NAME, ZOO_MODELS

__all__ = ['KVSTORES', 'KVSTORE_HELP', 'DEFAULT_LRS', 'default_lr', 'model_kind', 'format_lr',
           'parse_contexts', 'join_group', 'workers_note', 'write_metrics', 'check_at_least',
           'claim_run', 'RUN_OUTPUTS']

KVSTORE_HELP = ("device (default) or local: one process, data parallel over --gpus; "
                "dist_sync, dist_device_sync, dist_async: parameter servers, start the job with "
                "gluonbert-launch; horovod: start it with horovodrun. With several workers "
                "--batch-size is per worker and only rank 0 writes OUTPUT_DIR")

# Peak learning rates when --lr is not given, by the kind of starting weights and what is
# trained. A preset starts from random weights and takes large steps. MiniLM is small: a
# full fine-tune takes 3e-4 (0.93 on the bundled reviews, README). LoRA trains few
# parameters, from zero: it wants a step about 10x larger. Further pre-training keeps
# pretrained weights close to where they are.
DEFAULT_LRS = {
    #              full    LoRA   pre-training
    'preset':     (1e-3,   1e-3,  1e-3),
    'minilm':     (3e-4,   5e-3,  5e-5),
    'pretrained': (5e-5,   1e-3,  5e-5),
}


def model_kind(model, *, pretraining=False):
    """What ``--model`` starts from: ``'preset'`` (a config preset, random weights),
    ``'minilm'`` (the embedded model) or ``'pretrained'`` (a zoo name or a model directory).

    ``bert_12_768_12`` and ``bert_24_1024_16`` are both GluonNLP zoo models and presets:
    fine-tuning starts from the zoo's weights, pre-training from scratch (as the commands'
    help says).
    """
    if model in PRESETS and not (model in ZOO_MODELS and not pretraining):
        return 'preset'
    return 'minilm' if model == MINILM_NAME else 'pretrained'


def default_lr(model, lora=False, *, pretraining=False):
    """The peak learning rate a command uses when ``--lr`` is not given.

    Parameters
    ----------
    model : str
        The ``--model`` value: a preset, ``'minilm'``, a zoo name or a directory.
    lora : bool, default False
        Fine-tuning LoRA adapters (and the head) rather than every weight.
    pretraining : bool, default False
        ``gluonbert-pretrain`` (masked LM + next sentence) rather than fine-tuning.

    Returns
    -------
    float
        From :data:`DEFAULT_LRS`.
    """
    if lora and pretraining:
        raise ValueError('pre-training has no LoRA mode')
    full, with_lora, pretrain = DEFAULT_LRS[model_kind(model, pretraining=pretraining)]
    return pretrain if pretraining else with_lora if lora else full


def format_lr(lr):
    """``lr`` as help texts write it: ``3e-4``, ``5e-5``, ``0.001`` -> ``1e-3``."""
    mantissa, exponent = f'{lr:e}'.split('e')
    return f'{float(mantissa):g}e{int(exponent)}'


def parse_contexts(gpus):
    """``--gpus`` (comma-separated GPU ids; empty for CPU) as a list of MXNet contexts,
    each checked to run MXNet's kernels (:func:`gluonbert.hardware.require_gpu_kernels`: a
    wheel without kernels for the GPU's compute capability fails here, in one line)."""
    if gpus is None or gpus.strip() == '':
        return [mx.cpu()]
    try:
        ids = [int(g) for g in gpus.split(',') if g.strip()]
    except ValueError as err:
        raise UsageError(f'--gpus takes comma-separated GPU ids, e.g. 0 or 0,1; got {gpus!r}') \
            from err
    available = mx.context.num_gpus()
    missing = [i for i in ids if i >= available]
    if missing:
        raise UsageError(f'GPU {missing[0]} requested but this MXNet sees {available} GPU(s) '
                         f'(is a CUDA build of MXNet, e.g. mxnet-cu117, installed?)')
    contexts = [mx.gpu(i) for i in ids]
    for ctx in contexts:
        require_gpu_kernels(ctx)
    return contexts


def join_group(kvstore, contexts):
    """``(group, contexts)``: the distributed group of ``--kvstore``; under Horovod each
    process keeps GPU LOCAL_RANK of ``--gpus``."""
    group = get_group(kvstore)
    if kvstore == 'horovod' and len(contexts) > 1:
        if group.local_rank >= len(contexts):
            raise UsageError(f'horovod local rank {group.local_rank} has no GPU in --gpus '
                             f'(give one GPU id per process on this machine)')
        contexts = [contexts[group.local_rank]]
    return group, contexts


def workers_note(group, kvstore, batch_size):
    """', N workers (KVSTORE, global batch B)' for a distributed job, else ''."""
    if not group.is_distributed:
        return ''
    return (f', {group.num_workers} workers ({kvstore}, global batch '
            f'{batch_size * group.num_workers})')


def check_at_least(args, minimum, *flags):
    """A UsageError unless each ``--flag`` given (not None) is at least ``minimum``."""
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value < minimum:
            raise UsageError(f'--{flag.replace("_", "-")} must be >= {minimum}, got {value}')


def write_metrics(output_dir, metrics):
    """Write ``OUTPUT_DIR/metrics.json`` (atomically)."""
    write_text(os.path.join(output_dir, 'metrics.json'),
               json.dumps(metrics, indent=2, allow_nan=False) + '\n')


# what a run writes in OUTPUT_DIR besides its checkpoints (--overwrite removes them)
RUN_OUTPUTS = ('model', 'adapter', 'base', 'metrics.json', 'metrics.jsonl', 'history.png',
               'report.json', 'confusion.png', 'reliability.png')


def claim_run(output_dir, kind, *, resume, overwrite):
    """One run per ``OUTPUT_DIR`` (rank 0, once the directory is locked): a new run is
    refused where another run's checkpoints are (an unfinished run: ``--resume``
    continues it) or its model is (a finished run); ``--overwrite`` removes what that run
    wrote first. ``kind`` is the checkpoints' ('epoch' or 'step')."""
    if resume and overwrite:
        raise UsageError('--resume continues the run in --output-dir, --overwrite replaces '
                         'it: give one of them')
    if resume:
        return
    held = held_checkpoint(os.path.join(output_dir, 'checkpoints'), kind)
    finished = os.path.exists(os.path.join(output_dir, 'model'))
    if not overwrite:
        if finished:
            raise UsageError(f'{output_dir} holds a finished run (its model is in '
                             f'{os.path.join(output_dir, "model")}); --overwrite replaces '
                             f'it, or choose another --output-dir')
        if held is not None:
            raise UsageError(f'{output_dir} holds an unfinished run (checkpoint {held}); '
                             f'--resume continues it, --overwrite replaces it')
        return
    for name in RUN_OUTPUTS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
