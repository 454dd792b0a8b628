"""Token classification (named entities, part-of-speech tags, ...): a label per token.

As GluonNLP 0.x's NER fine-tuning (``BERTTagger``) and Hugging Face's
``BertForTokenClassification``: dropout and one Dense layer on every token's encoding.
Being a :class:`~gluonbert.model.TaskModel`, it saves, loads, takes LoRA adapters and is
tested by the shared task-model suite (``tests/test_task_models.py``) without code of its
own elsewhere::

    net = BERTForTokenClassification(bert, num_classes=9)   # e.g. CoNLL-2003's BIO tags
    logits = net(words, segments, valid_length)              # (B, L, 9)

A word split into several WordPieces gets a label per piece; training usually scores the
first piece of each word only (weight 0 on the others and on padding, as GluonNLP's NER
script does).
"""
from .model import TaskModel

__all__ = ['BERTForTokenClassification']


class BERTForTokenClassification(TaskModel):
    """Per-token classifier: dropout and a Dense layer on BERT's sequence output.

    Parameters
    ----------
    bert : BERTModel
    num_classes : int, default 2
        Labels per token (tags).
    dropout : float, default 0.1
    info : ClassifierInfo, optional
        The tag names (``label_names``) and max_len; default tags named '0', '1', ...

    Inputs:
        - **words**: ``(B, L)``
        - **segments**: ``(B, L)``
        - **valid_length**: ``(B,)`` or None

    Outputs:
        - **logits**: ``(B, L, num_classes)``; rows past ``valid_length`` are the head
          applied to the encoder's zeros there (ignore them).
    """
    task = 'token_classification'

    def __init__(self, bert, num_classes=2, dropout=0.1, prefix=None, params=None, *,
                 info=None):
        super().__init__(bert, num_classes, dropout, info=info, token_level=True,
                         prefix=prefix, params=params)
        # the pooler is not used: frozen, so that training neither needs its (zero)
        # gradients nor decays its weights
        for parameter in bert.pooler.collect_params().values():
            parameter.grad_req = 'null'

    def hybrid_forward(self, F, words, segments, valid_length=None):
        # pylint: disable=arguments-differ
        sequence, _ = self.bert(words, segments, valid_length)                 # (B, L, U)
        return self.classifier(sequence)                                       # (B, L, C)
