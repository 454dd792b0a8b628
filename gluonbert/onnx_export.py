"""``gluonbert-export --format onnx``: a classifier as one ONNX file that onnxruntime (and
Optimum's ``ORTModelForSequenceClassification``) runs without gluonbert or MXNet::

    import onnxruntime as ort
    from transformers import AutoTokenizer          # or any WordPiece tokenizer of vocab.txt
    session = ort.InferenceSession(DIR + '/model.onnx')
    enc = AutoTokenizer.from_pretrained(DIR)(['a wonderful film'], return_tensors='np')
    logits = session.run(['logits'], dict(enc))[0]  # (batch, num_labels)

The directory holds ``model.onnx`` and the files of a Hugging Face export without its
weights (:mod:`gluonbert.hf_export`): ``config.json``, whose ``id2label``/``label2id`` name
the classes (where onnxruntime users find them: Optimum and the Hugging Face pipelines
read that file), ``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``.

Inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 ``(batch, sequence)``,
both axes dynamic; output ``logits``: float32 ``(batch, num_labels)``.

How the graph is made: written node by node with ``onnx.helper`` from the model's config
and its weights in Hugging Face's names (:func:`gluonbert.hf_export.hf_tensors`), not
converted from MXNet's traced symbol. MXNet 1.9.1's converter (``mx.onnx.export_model``)
fails on the traced graph (it imports ``onnx.mapping``, gone from onnx 1.15, and with
older onnx refuses MXNet's special reshape codes such as -3), and converting MXNet's fused
attention operators one by one would reproduce their layout tricks. BERT is a short, fixed
recipe: embeddings (Gather, added), LayerNormalization (opset 17), MatMul + Add
projections, attention with the mask as an additive bias, Softmax, the configured
activation (erf GELU, tanh GELU, ...), the tanh pooler on [CLS] and the classifier. Each
step reads as the Hugging Face implementation does, with only ONNX-defined shape rules
(Reshape's 0 = "keep this dimension", -1 = "the rest").

Checked at export: the file runs in onnxruntime on texts of the model's own task and must
give gluonbert's float32 logits within :func:`~gluonbert.hf_export.logit_tolerance`;
otherwise nothing is written. ``dtype='int8'`` also writes ``model_int8.onnx``
(onnxruntime's dynamic quantization of the MatMul weights), measured against the float32
file (label agreement, largest probability change) and reported, not required.
"""
import logging
import os

import numpy as np

from .errors import EnvironmentProblem, ModelError

__all__ = ['export_onnx', 'build_graph', 'require_onnx', 'ONNX_OPSET', 'MASKED_BIAS']

ONNX_OPSET = 17             # LayerNormalization is an ONNX operator from opset 17
MASKED_BIAS = -1e9          # added to the scores of padded keys: exp() of it is 0 in float32
INSTALL_HINT = "pip install 'gluonbert[onnx]' (onnx and onnxruntime)"


def require_onnx():
    """``(onnx, onnxruntime)``, or an EnvironmentProblem saying what to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise EnvironmentProblem(f'--format onnx needs the onnx and onnxruntime packages '
                                 f'({err.name} is missing): {INSTALL_HINT}') from err
    return onnx, onnxruntime


class _Graph:
    """Nodes and initializers under construction, with fresh names for intermediates."""

    def __init__(self, onnx):
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes, self.initializers, self._count, self._named = [], [], 0, {}

    def constant(self, name, value, dtype=np.float32):
        """An initializer (once per name: a second call must give the same value)."""
        array = np.asarray(value, dtype=dtype)
        if name in self._named:
            if not np.array_equal(self._named[name], array):
                raise RuntimeError(f'two values for the initializer {name}')
            return name
        self._named[name] = array
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type, *inputs, **attributes):
        self._count += 1
        output = f'{op_type.lower()}_{self._count}'
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output],
                                                name=f'{op_type}_{self._count}', **attributes))
        return output

    def linear(self, x, tensors, prefix):
        """``x @ W^T + b`` of a Hugging Face Linear: ``W`` stored transposed ``(in, out)``
        as ``PREFIX.weight.T``, so MatMul reads it without a Transpose node."""
        weight = self.constant(f'{prefix}.weight.T', tensors[f'{prefix}.weight'].T)
        bias = self.constant(f'{prefix}.bias', tensors[f'{prefix}.bias'])
        return self.op('Add', self.op('MatMul', x, weight), bias)

    def layer_norm(self, x, tensors, prefix, epsilon):
        return self.op('LayerNormalization', x,
                       self.constant(f'{prefix}.weight', tensors[f'{prefix}.weight']),
                       self.constant(f'{prefix}.bias', tensors[f'{prefix}.bias']),
                       axis=-1, epsilon=float(epsilon))


def _activation(graph, x, name):
    """The FFN activation ``name`` (a :data:`gluonbert.config.ACTIVATIONS` value)."""
    if name == 'gelu':  # 0.5 x (1 + erf(x / sqrt 2)), BERT's exact form
        scaled = graph.op('Div', x, graph.constant('sqrt_2', np.sqrt(2.0)))
        one_plus = graph.op('Add', graph.op('Erf', scaled), 'one')
        return graph.op('Mul', graph.op('Mul', x, one_plus), 'half')
    if name == 'gelu_tanh':  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = graph.op('Mul', graph.op('Mul', x, x), x)
        inner = graph.op('Add', x, graph.op('Mul', cube, graph.constant('gelu_c', 0.044715)))
        inner = graph.op('Mul', inner, graph.constant('sqrt_2_pi', np.sqrt(2.0 / np.pi)))
        one_plus = graph.op('Add', graph.op('Tanh', inner), 'one')
        return graph.op('Mul', graph.op('Mul', x, one_plus), 'half')
    ops = {'relu': 'Relu', 'tanh': 'Tanh', 'sigmoid': 'Sigmoid', 'softrelu': 'Softplus'}
    return graph.op(ops[name], x)


def _attention(graph, x, bias, tensors, prefix, config):
    """Self-attention of one layer: ``(B, L, U) -> (B, L, U)``; ``bias`` ``(B, 1, 1, L)``
    is 0 for real keys and :data:`MASKED_BIAS` for padding."""
    heads, width = config.num_heads, config.head_units
    split = graph.constant('heads_shape', [0, 0, heads, width], np.int64)  # (B, L, N, D)

    def project(part, perm):
        y = graph.linear(x, tensors, f'{prefix}.attention.self.{part}')
        return graph.op('Transpose', graph.op('Reshape', y, split), perm=perm)
    query = project('query', [0, 2, 1, 3])                                # (B, N, L, D)
    key = project('key', [0, 2, 3, 1])                                    # (B, N, D, L)
    value = project('value', [0, 2, 1, 3])                                # (B, N, L, D)
    scale = graph.constant('attention_scale', 1.0 / np.sqrt(width))
    scores = graph.op('Mul', graph.op('MatMul', query, key), scale)       # (B, N, L, L)
    weights = graph.op('Softmax', graph.op('Add', scores, bias), axis=-1)
    context = graph.op('Transpose', graph.op('MatMul', weights, value),
                       perm=[0, 2, 1, 3])                                 # (B, L, N, D)
    merged = graph.op('Reshape', context,
                      graph.constant('units_shape', [0, 0, config.units], np.int64))
    return graph.linear(merged, tensors, f'{prefix}.attention.output.dense')


def build_graph(config, tensors, num_labels):
    """The ONNX ``ModelProto`` of a BERT sentence classifier with ``config``
    (:class:`~gluonbert.BERTConfig`) and Hugging Face named ``tensors``."""
    onnx, _ = require_onnx()
    helper, graph = onnx.helper, _Graph(onnx)
    graph.constant('one', 1.0)
    graph.constant('half', 0.5)
    eps = config.layer_norm_eps
    ids, mask, segments = 'input_ids', 'attention_mask', 'token_type_ids'

    def table(name):
        return graph.constant(name, tensors[name])
    words = graph.op('Gather', table('bert.embeddings.word_embeddings.weight'), ids)
    types = graph.op('Gather', table('bert.embeddings.token_type_embeddings.weight'), segments)
    # the first L rows of the position table: (L, U), broadcast over the batch
    length = graph.op('Shape', ids, start=1, end=2)                       # [L]
    positions = graph.op('Slice', table('bert.embeddings.position_embeddings.weight'),
                         graph.constant('zero_1d', [0], np.int64), length,
                         graph.constant('axis_0', [0], np.int64))
    x = graph.op('Add', graph.op('Add', words, types), positions)        # (B, L, U)
    x = graph.layer_norm(x, tensors, 'bert.embeddings.LayerNorm', eps)

    # attention_mask (B, L) 1/0 -> additive bias (B, 1, 1, L): 0 or MASKED_BIAS
    padding = graph.op('Sub', 'one', graph.op('Cast', mask, to=onnx.TensorProto.FLOAT))
    bias = graph.op('Mul', padding, graph.constant('masked_bias', MASKED_BIAS))
    bias = graph.op('Unsqueeze', bias, graph.constant('axes_1_2', [1, 2], np.int64))

    for i in range(config.num_layers):
        prefix = f'bert.encoder.layer.{i}'
        attended = _attention(graph, x, bias, tensors, prefix, config)
        x = graph.layer_norm(graph.op('Add', x, attended), tensors,
                             f'{prefix}.attention.output.LayerNorm', eps)
        hidden = _activation(graph, graph.linear(x, tensors, f'{prefix}.intermediate.dense'),
                             config.activation)
        out = graph.linear(hidden, tensors, f'{prefix}.output.dense')
        x = graph.layer_norm(graph.op('Add', x, out), tensors, f'{prefix}.output.LayerNorm',
                             eps)

    first = graph.op('Gather', x, graph.constant('cls_index', 0, np.int64), axis=1)  # (B, U)
    pooled = graph.op('Tanh', graph.linear(first, tensors, 'bert.pooler.dense'))
    logits = graph.linear(pooled, tensors, 'classifier')
    graph.nodes.append(helper.make_node('Identity', [logits], ['logits'], name='logits'))

    dims = ['batch', 'sequence']
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.INT64, dims)
              for n in (ids, mask, segments)]
    outputs = [helper.make_tensor_value_info('logits', onnx.TensorProto.FLOAT,
                                             ['batch', num_labels])]
    body = helper.make_graph(graph.nodes, 'bert_sequence_classification', inputs, outputs,
                             graph.initializers)
    model = helper.make_model(body, opset_imports=[helper.make_opsetid('', ONNX_OPSET)],
                              producer_name='gluonbert')
    model.ir_version = min(model.ir_version, 8)  # readable by onnxruntime >= 1.10
    onnx.checker.check_model(model, full_check=True)
    return model


def run_onnx(path, inputs):
    """Logits of the ONNX file at ``path`` on ``inputs`` (the int64 arrays), in onnxruntime
    on the CPU."""
    _, ort = require_onnx()
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(['logits'], dict(inputs))[0]


def _quantize(source, target):
    """onnxruntime's dynamic int8 quantization of ``source`` into ``target``: weights int8
    per channel, activations quantized per batch. ``reduce_range`` (7-bit weights) where
    the CPU lacks VNNI, whose absence makes the 8-bit products saturate."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from .hardware import cpu_info
    vnni = any(cpu_info().has(f) for f in ('avx512_vnni', 'avx_vnni'))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process (shape inference) first
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=not vnni, op_types_to_quantize=['MatMul'])
    finally:
        root.setLevel(level)
    return not vnni


def export_onnx(net, vocab, tokenizer, directory, texts, *, dtype='float32', max_len=None):
    """Write ``net`` (a sentence classifier, LoRA merged) as ``DIRECTORY/model.onnx`` with
    its tokenizer and label files, and check it in onnxruntime on ``texts``.

    Returns a dict: ``directory``, ``files``, ``check`` (``batch_shape``,
    ``max_abs_logit_diff``, ``max_abs_prob_diff``, ``tolerance``) and, for int8,
    ``int8`` (``reduce_range``, ``label_agreement``, ``max_abs_prob_diff`` to the float32
    file).
    """
    from .hf_export import (check_output_dir, encode_inputs, gluonbert_logits, hf_tensors,
                            logit_tolerance, softmax, staged_directory, write_shared_files)
    from .predict import label_names_of
    if dtype not in ('float32', 'int8'):
        raise ModelError(f'--format onnx writes float32 or int8, not {dtype}')
    onnx, _ = require_onnx()
    directory = check_output_dir(directory, 'an ONNX export')
    model = build_graph(net.config, hf_tensors(net), len(label_names_of(net)))
    inputs = encode_inputs(net, vocab, tokenizer, texts, max_len)
    reference = gluonbert_logits(net, inputs)
    result = {'directory': directory}
    with staged_directory(directory) as staging:
        path = os.path.join(staging, 'model.onnx')
        onnx.save_model(model, path)
        got = run_onnx(path, inputs)
        diff, tolerance = float(np.abs(got - reference).max()), logit_tolerance(reference)
        result['check'] = {'batch_shape': list(inputs['input_ids'].shape),
                           'max_abs_logit_diff': diff, 'tolerance': tolerance,
                           'max_abs_prob_diff': float(np.abs(softmax(got) -
                                                             softmax(reference)).max())}
        if not diff <= tolerance:
            raise ModelError(f'onnxruntime computes logits {diff:.3g} away from gluonbert\'s '
                             f'(tolerance {tolerance:.3g}, from the logits\' magnitude); '
                             f'the export was not written')
        write_shared_files(staging, net, vocab, tokenizer, max_len)
        if dtype == 'int8':
            quantized = os.path.join(staging, 'model_int8.onnx')
            reduced = _quantize(path, quantized)
            low = run_onnx(quantized, inputs)
            result['int8'] = {'reduce_range': reduced,
                              'label_agreement': float((low.argmax(1) == got.argmax(1)).mean()),
                              'max_abs_prob_diff': float(np.abs(softmax(low) -
                                                                softmax(got)).max())}
        result['files'] = sorted(os.listdir(staging))
    return result
