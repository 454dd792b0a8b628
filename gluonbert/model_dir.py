"""The classifier directories that ``gluonbert-finetune`` writes, read back as one thing:
a model directory (:func:`gluonbert.pretrained.save_pretrained`'s format: ``gluonbert.json``,
``model.params``, ``vocab.txt``, each checked before use) or a LoRA adapter directory
(:func:`gluonbert.lora.save_lora`'s, merged into its base), or a Hugging Face
``BertForSequenceClassification`` directory (:mod:`gluonbert.hf_classifier`).

Here, above both, because :mod:`gluonbert.lora` writes its adapters with
:mod:`gluonbert.pretrained`'s directory writer and checks: the reader of either kind must
import both. ``gluonbert-predict`` and ``gluonbert-export`` load their models here.
"""
import os

from .errors import ModelError
from .hf_classifier import require_hf_sentence_classifier
from .lora import ADAPTER_MANIFEST, load_lora, merge_lora
from .pretrained import MANIFEST, load_pretrained

__all__ = ['load_classifier']


def load_classifier(model_dir, ctx=None):
    """``(classifier, vocab, tokenizer)`` from a ``gluonbert-finetune`` model directory, a
    LoRA adapter directory (merged into its base: the plain model's speed) or a Hugging
    Face ``BertForSequenceClassification`` directory (another Hugging Face architecture is
    refused before its weights are read).

    Raises
    ------
    ModelError
        One line: no such directory, a damaged one (a PretrainedError naming the file), or
        a model that is not a sentence classifier.
    """
    if not os.path.isdir(model_dir):
        raise ModelError(f'no such model directory: {model_dir}')
    if os.path.exists(os.path.join(model_dir, ADAPTER_MANIFEST)):
        net, vocab, tokenizer = load_lora(model_dir, ctx=ctx)
        merge_lora(net)
    else:
        if os.path.exists(os.path.join(model_dir, 'config.json')) and not os.path.exists(
                os.path.join(model_dir, MANIFEST)):  # a Hugging Face directory
            require_hf_sentence_classifier(model_dir)
        net, vocab, tokenizer = load_pretrained(model_dir, ctx=ctx)
    if getattr(net, 'task', None) != 'sequence_classification':
        raise ModelError(f'{model_dir} holds a {type(net).__name__}, not a fine-tuned '
                         f'sentence classifier (export and predict take those only)')
    return net, vocab, tokenizer
