"""The package's shape, enforced: module sizes, the two training loops' lengths, and
imports that only go down the layers docs/layout.md names (so no cycles), function-level
imports included. Read from the source with ``ast``; nothing is imported. Also the README's
length (a front door, not a notebook) and that the docs/ files it links exist."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'gluonbert')
MAX_MODULE_LINES = 600
MAX_LOOP_LINES = 80
README = os.path.join(ROOT, 'README.md')
MAX_README_LINES = 300

# Lowest first; a module may import from its own layer and the layers below (docs/layout.md
# is this table in words). Inside a layer, imports must not form a cycle.
LAYERS = [
    ('base', ['errors', '_env', '_io', '_net', '_version', 'config', 'hardware', 'timing',
              'params', 'schema']),
    ('native operators', ['ops', 'amp']),
    ('core', ['kernels', 'layers', 'heads', 'model', 'token_classification',
              'tokenizer', 'convert', 'model_files', 'hf_checkpoint', 'hf_classifier',
              'pretrained',
              'lora_files', 'lora', 'model_dir']),
    ('data', ['data']),
    ('inference', ['predict', 'evaluation']),
    ('process groups', ['distributed']),
    ('training engine', ['engine', 'train', 'pretrain']),
    ('fast paths and export', ['fast', 'export', 'hf_export', 'onnx_export', 'sysinfo',
                               'backends']),
    ('serving', ['serve']),
    ('commands', ['cli']),
]
LAYER_OF = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}


def modules():
    """{dotted name: path} of every module of the package (its __init__ excluded)."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
                if dotted != 'gluonbert.__init__':
                    found[dotted.replace('.__init__', '')] = path
    return found


def top_unit(dotted):
    """The layer unit of a module: its first name under gluonbert (a module or package)."""
    return dotted.split('.')[1]


def imported_modules(dotted, path):
    """Modules of the package that ``dotted`` imports, anywhere in the file."""
    tree = ast.parse(open(path, encoding='utf-8').read(), path)
    package = dotted if path.endswith('__init__.py') else dotted.rsplit('.', 1)[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.startswith('gluonbert'))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ''
            if not module.startswith('gluonbert'):
                continue
            if module == 'gluonbert' or node.module is None:
                # `from . import x` / `from gluonbert import x`: x is a module, or a name
                # of the package root (which imports everything: a cycle)
                for alias in node.names:
                    candidate = f'{module}.{alias.name}'
                    targets.add(candidate if candidate.split('.')[1] in LAYER_OF
                                or module != 'gluonbert' else 'gluonbert')
            else:
                targets.add(module)
    return targets


def test_every_module_is_in_a_layer():
    units = {top_unit(d) for d in modules()}
    assert units - set(LAYER_OF) == set(), 'add new modules to LAYERS (and docs/layout.md)'


@pytest.mark.parametrize('dotted', sorted(modules()))
def test_module_is_at_most_600_lines(dotted):
    with open(modules()[dotted], encoding='utf-8') as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_MODULE_LINES, f'{dotted} has {lines} lines'


def test_imports_only_go_down_the_layers():
    wrong = []
    for dotted, path in modules().items():
        own = LAYER_OF[top_unit(dotted)]
        for target in imported_modules(dotted, path):
            if target == 'gluonbert':
                wrong.append(f'{dotted} imports the package root (a cycle)')
            elif LAYER_OF.get(top_unit(target), -1) > own:
                wrong.append(f'{dotted} ({LAYERS[own][0]}) imports {target} '
                             f'({LAYERS[LAYER_OF[top_unit(target)]][0]})')
    assert wrong == []


def test_no_import_cycles():
    graph = {d: {t for t in imported_modules(d, p) if t in modules() or
                 t.rsplit('.', 1)[0] in modules()} for d, p in modules().items()}
    graph = {d: {t if t in graph else t.rsplit('.', 1)[0] for t in ts} - {d}
             for d, ts in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 'done'
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def _function_lines(path, name):
    tree = ast.parse(open(path, encoding='utf-8').read(), path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node.end_lineno - node.lineno + 1
    raise AssertionError(f'{name} not found in {path}')


@pytest.mark.parametrize('module, function', [('train', 'train_loop'),
                                              ('pretrain', 'pretrain_loop')])
def test_training_loops_are_short(module, function):
    lines = _function_lines(os.path.join(PACKAGE, f'{module}.py'), function)
    assert lines <= MAX_LOOP_LINES, f'{function} has {lines} lines'


# The task models (gluonbert.model.TaskModel's subclasses): code outside their own modules
# asks the base class, the task or the registry, never for a concrete class.
TASK_MODEL_CLASSES = ('BERTClassifier', 'BERTForPretraining', 'BERTForTokenClassification')
TASK_MODEL_HOMES = ('gluonbert.model', 'gluonbert.token_classification')


def _type_checks(tree):
    """Lines that test an object against a task model class: isinstance/issubclass with
    one of them, ``type(x) is C``, or a comparison with one's name as a string."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) in (
                'isinstance', 'issubclass') and len(node.args) == 2:
            names = {getattr(n, 'id', getattr(n, 'attr', None))
                     for n in ast.walk(node.args[1])}
            if names & set(TASK_MODEL_CLASSES):
                found.append(node.lineno)
        elif isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(isinstance(p, ast.Constant) and p.value in TASK_MODEL_CLASSES
                   for p in parts) or any(getattr(p, 'id', None) in TASK_MODEL_CLASSES
                                          for p in parts):
                found.append(node.lineno)
    return found


def test_no_concrete_task_model_is_checked_outside_its_module():
    wrong = []
    for dotted, path in modules().items():
        if dotted in TASK_MODEL_HOMES:
            continue
        tree = ast.parse(open(path, encoding='utf-8').read(), path)
        wrong += [f'{dotted}:{line}' for line in _type_checks(tree)]
    assert wrong == []


def test_the_type_check_finder_finds_them():
    tree = ast.parse('isinstance(net, (BERTModel, BERTClassifier))\n'
                     'kind == "BERTForPretraining"\ntype(net) is BERTForTokenClassification\n'
                     'isinstance(net, TaskModel)\n')
    assert _type_checks(tree) == [1, 2, 3]


def test_readme_is_at_most_300_lines():
    with open(README, encoding='utf-8') as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_README_LINES, f'README.md has {lines} lines: move details to docs/'


def test_docs_linked_from_the_readme_exist():
    with open(README, encoding='utf-8') as f:
        linked = set(re.findall(r'\]\((docs/[^)#\s]+\.md)', f.read()))
    assert linked, 'README.md links no docs/*.md file'
    missing = sorted(p for p in linked if not os.path.isfile(os.path.join(ROOT, p)))
    assert missing == []


def test_one_block_tree_walker():
    # gluonbert.params.walk_blocks is the one walker of block trees
    walkers = sorted(dotted for dotted, path in modules().items()
                     if '._children' in open(path, encoding='utf-8').read())
    assert walkers == ['gluonbert.params']


def test_predict_reads_model_directories_without_the_exporter():
    found = modules()
    imported = imported_modules('gluonbert.cli.predict', found['gluonbert.cli.predict'])
    assert 'gluonbert.model_dir' in imported and 'gluonbert.export' not in imported
    assert 'load_classifier' not in open(found['gluonbert.export'], encoding='utf-8').read()


def _teaching_blocks():
    """(module, class name, constructor parameter names) of every class in layers.py,
    heads.py and the task models (model.py's TaskModel family, token_classification.py)."""
    found = []
    for module in ('layers', 'heads', 'model', 'token_classification'):
        with open(os.path.join(PACKAGE, module + '.py'), encoding='utf-8') as f:
            tree = ast.parse(f.read())
        classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
        for name, node in classes.items():
            bases = {getattr(b, 'id', getattr(b, 'attr', None)) for b in node.bases}
            if module in ('model', 'token_classification') and not (
                    name == 'TaskModel' or 'TaskModel' in bases):
                continue
            init = next((item for item in node.body if isinstance(item, ast.FunctionDef)
                         and item.name == '__init__'), None)
            args = [] if init is None else [
                a.arg for a in init.args.args + init.args.kwonlyargs]
            found.append((module, name, args))
    return found


def test_teaching_blocks_take_no_kernel_choice():
    """The blocks say what they compute; the implementations come from gluonbert.kernels
    when they are built (a model's config names them), never from a constructor argument."""
    blocks = _teaching_blocks()
    names = {name for _, name, _ in blocks}
    assert {'MultiHeadAttention', 'Dropout', 'LayerNorm', 'EncoderBlock', 'MLMDecoder',
            'TaskModel', 'BERTClassifier', 'BERTForPretraining',
            'BERTForTokenClassification'} <= names
    offending = [f'{module}.{name}({arg}=...)' for module, name, args in blocks
                 for arg in args if arg in ('kernels', 'attention_mask') or
                 arg.endswith('_kernels')]
    assert not offending, offending
