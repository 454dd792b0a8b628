"""gluonbert: BERT on Apache MXNet Gluon, for learning and for fine-tuning.

Import order matters for speed: gluonbert sets MXNet's OpenMP thread count before
MXNet is first imported (see :mod:`gluonbert._env`).
"""
import sys

if sys.version_info < (3, 8) or sys.version_info >= (3, 12):
    raise ImportError(
        f'gluonbert supports Python 3.8 to 3.11 (MXNet 1.9.1 does not run on newer Pythons); '
        f'this is Python {sys.version_info.major}.{sys.version_info.minor}')

from . import _env  # noqa: E402  (thread defaults, before mxnet is imported)
from ._env import apply_thread_defaults, default_num_threads  # noqa: E402

_env.require_mxnet()

from .config import BERTConfig, PRESETS  # noqa: E402
from .errors import GluonbertError  # noqa: E402
from . import ops  # noqa: E402
from . import kernels  # noqa: E402
from .layers import (PositionalEncoding, LearnedPositionalEncoding, MultiHeadAttention,  # noqa: E402
                     Dropout, LayerNorm, AddNorm, PositionWiseFFN, EncoderBlock, Activation)
from .heads import MLMDecoder, NSClassifier  # noqa: E402
from .model import (BERTEncoder, BERTModel, TaskModel, BERTClassifier,  # noqa: E402
                    BERTForPretraining, ClassifierInfo, with_kernels)
# task models register themselves in gluonbert.model.TASK_MODELS when their module loads
from .token_classification import BERTForTokenClassification  # noqa: E402
from .convert import from_gluonnlp  # noqa: E402
from .params import count_parameters, parameter_counts  # noqa: E402
from .tokenizer import Vocab, BERTTokenizer  # noqa: E402
from .pretrained import load_pretrained, save_pretrained  # noqa: E402
from .lora import (LoRADense, apply_lora, merge_lora, save_lora, load_lora,  # noqa: E402
                   lora_parameter_counts)
from .data import BERTTransform, make_dataloader, load_dataset  # noqa: E402
from .engine.runconfig import TrainConfig, PretrainConfig  # noqa: E402
from .train import train_loop, evaluate_accuracy  # noqa: E402
from .predict import predict_sentiment, predict, Prediction  # noqa: E402
from .pretrain import PretrainingData, pretrain_loop  # noqa: E402

# the fused CPU operators, if built and intact (scripts/bootstrap.sh or `gluonbert-ops build`
# builds them; nothing is compiled here or later)
ops.load()

from ._version import __version__  # noqa: E402

__all__ = ['BERTConfig', 'PRESETS', 'ops', 'kernels', 'with_kernels', 'PositionalEncoding',
           'LearnedPositionalEncoding',
           'MultiHeadAttention', 'Dropout', 'LayerNorm', 'AddNorm', 'PositionWiseFFN',
           'EncoderBlock', 'Activation', 'MLMDecoder', 'NSClassifier', 'BERTEncoder', 'BERTModel',
           'TaskModel', 'BERTClassifier', 'BERTForPretraining', 'BERTForTokenClassification',
           'from_gluonnlp', 'count_parameters',
           'parameter_counts', 'Vocab', 'BERTTokenizer', 'load_pretrained', 'save_pretrained',
           'LoRADense', 'apply_lora', 'merge_lora', 'save_lora', 'load_lora',
           'lora_parameter_counts', 'BERTTransform', 'make_dataloader', 'load_dataset',
           'train_loop', 'TrainConfig', 'PretrainConfig', 'evaluate_accuracy',
           'predict_sentiment', 'predict', 'Prediction',
           'PretrainingData', 'pretrain_loop', 'GluonbertError', 'ClassifierInfo',
           'apply_thread_defaults', 'default_num_threads', '__version__']
