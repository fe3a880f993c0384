"""``tools/generate_data.py``: command line to generated folders."""

import importlib.util
import json
import os.path as osp

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (tools/ is no package)."""
    path = osp.join(REPO_ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_data_tool(tmp_path, capsys):
    main = load_tool('generate_data').main
    argv = ['--out', str(tmp_path), '--tasks', 'det', 'seg']
    argv += ['--num-train', '2', '--num-val', '1', '--seed', '5']
    roots = main(argv)
    assert set(roots) == {'det', 'seg'}
    ann = osp.join(roots['det'], 'annotations', 'instances_val2017.json')
    with open(ann) as f:
        assert len(json.load(f)['images']) == 1
    assert osp.isfile(
        osp.join(
            roots['seg'], 'annotations', 'training', 'gen_training_000001.png'
        )
    )
    assert main(argv) == roots  # second run: manifest hit
    assert 'det:' in capsys.readouterr().out
