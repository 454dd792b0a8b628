"""Hugging Face transformers (PyTorch) rows: the worker's side, which runs in ``--hf-python``
(an interpreter with torch and transformers, not necessarily MXNet), and this side's
:class:`HFRunner` and inference/training variants."""
import json
import os
import sys

from .harness import Variant, setup_remote
from .inputs import minilm_dir, preset_config
from .workers import Worker


# -------------------------------------------------------------- in the worker process
def worker_handlers():
    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '0')) or torch.get_num_threads())

    def hello():
        return {'torch': torch.__version__, 'transformers': transformers.__version__,
                'threads': torch.get_num_threads()}

    models = {}  # one model per shape and mode: the fp32 and bf16-autocast rows share it

    def model(request, mode):
        key = (json.dumps(request['config'], sort_keys=True), request.get('weights'), mode)
        if key in models:
            return models[key]
        cfg = request['config']
        weights = request.get('weights')
        if weights:
            net = BertForSequenceClassification.from_pretrained(weights, num_labels=2)
        else:
            torch.manual_seed(0)
            net = BertForSequenceClassification(BertConfig(
                vocab_size=cfg['vocab_size'], hidden_size=cfg['units'],
                num_hidden_layers=cfg['num_layers'], num_attention_heads=cfg['num_heads'],
                intermediate_size=cfg['hidden_size'],
                max_position_embeddings=cfg['max_length'], num_labels=2))
        net = net.eval() if mode == 'inference' else net.train()
        optimizer = (torch.optim.AdamW(net.parameters(), lr=5e-5, weight_decay=0.01)
                     if mode == 'training' else None)
        models.clear()  # keep one model (and optimizer) alive at a time
        models[key] = (net, optimizer)
        return models[key]

    def tensors(request):
        import numpy as np
        cfg = request['config']
        batch_size, seq_len = request['batch']
        rng = np.random.RandomState(0)
        valid = rng.randint(seq_len // 2, seq_len + 1, batch_size)
        valid[0] = seq_len
        ids = torch.tensor(rng.randint(1, cfg['vocab_size'], (batch_size, seq_len)))
        mask = torch.tensor((np.arange(seq_len)[None, :] < valid[:, None]).astype('int64'))
        segments = torch.zeros((batch_size, seq_len), dtype=torch.long)
        labels = torch.tensor(rng.randint(0, 2, batch_size))
        return ids, mask, segments, labels

    def autocast(request):
        if request['dtype'] == 'bfloat16':
            return torch.autocast('cpu', dtype=torch.bfloat16)
        import contextlib
        return contextlib.nullcontext()

    def inference(request):
        net, _ = model(request, 'inference')
        ids, mask, segments, _ = tensors(request)

        def run(iters):
            with torch.inference_mode(), autocast(request):
                for _ in range(iters):
                    _ = net(input_ids=ids, attention_mask=mask, token_type_ids=segments).logits
        return run

    def training(request):
        net, optimizer = model(request, 'training')
        ids, mask, segments, labels = tensors(request)

        def run(iters):
            for _ in range(iters):
                with autocast(request):
                    loss = net(input_ids=ids, attention_mask=mask, token_type_ids=segments,
                               labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return run

    def tokenization(request):
        from transformers import BertTokenizerFast
        tokenizer = BertTokenizerFast(vocab_file=request['vocab'], do_lower_case=True)
        texts = request['texts']

        def run(iters):
            for _ in range(iters):
                tokenizer(texts, add_special_tokens=False)['input_ids']
        return run

    return {'hello': hello, 'inference': inference, 'training': training,
            'tokenization': tokenization}


# ------------------------------------------------------------------ in the suite's process
class HFRunner:
    """The Hugging Face worker, or why there is none."""

    def __init__(self, python, threads):
        self.worker, self.missing = None, None
        if python == 'none':
            self.missing = 'not installed (skipped: --hf-python none)'
            return
        if python is None:
            import importlib.util
            if not (importlib.util.find_spec('torch') and
                    importlib.util.find_spec('transformers')):
                self.missing = ('not installed (torch/transformers not importable here; pass '
                                '--hf-python PYTHON)')
                return
            python = sys.executable
        worker = Worker(python, 'hf', threads)
        if 'error' in worker.hello:
            self.missing = f'not installed ({python}: {worker.hello["error"]})'
            worker.close()
            return
        self.worker = worker
        self.versions = worker.hello
        self._minilm = minilm_dir()

    def weights(self, size):
        return self._minilm if size == 'minilm_6_384_12' else None

    def close(self):
        if self.worker is not None:
            self.worker.close()


def hf_variants(group, unit, size, batch, hf, keep, flops=None):
    """The Hugging Face fp32 and bf16-autocast variants of ``group`` ('inference' or
    'training'), run by the HF worker (or marked missing)."""
    batch_size, seq_len = batch
    cfg = preset_config(size)
    variants = []
    for dtype, short in (('float32', 'fp32'), ('bfloat16', 'bf16 autocast')):
        name = f'HF transformers {short}'
        if not keep(name):
            continue
        variant = Variant(group, f'{name} ({size} {batch_size}x{seq_len})', unit, batch_size,
                          flops=flops, peak=dtype if flops else None)
        if hf.worker is None:
            variant.error = hf.missing
        else:
            setup_remote(hf.worker, variant, {
                'kind': group, 'config': cfg, 'batch': [batch_size, seq_len],
                'dtype': dtype, 'weights': hf.weights(size)})
        variants.append(variant)
    return variants
