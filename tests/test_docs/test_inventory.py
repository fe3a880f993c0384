"""Every documented command is run by a named test (the inventory).

``INVENTORY`` lists each command the docs document (extracted by
``commands.documented_commands``: bash blocks, inline command spans,
config header comments) with the test that runs it exactly as written, or
with the reason it is not run by the test suite. A command added to a doc
without an entry here, an entry whose command left the docs, and an entry
naming a test that does not exist all fail ``test_inventory_is_complete``.
"""

import os.path as osp
import re

from .commands import REPO_ROOT, bash_block_commands, documented_commands

README = 'README.md'
CFG_README = 'configs/gpusq/README.md'
BENCH = 'bench/README.md'
DEMO = 'configs/gpusq/demo'

CONFIGS_TEST = 'tests/test_configs/test_gpusq_configs.py'
FLAG_TEST = 'tests/test_tools/test_gpusq_flag.py'
DEMO_CMDS_TEST = 'tests/test_tools/test_demo_config_commands.py'
DEPLOY_TEST = 'tests/test_deploy/test_readme_deploy.py'
BENCH_TEST = 'tests/test_tools/test_demo.py'
THIS = 'tests/test_docs/test_inventory.py'

_SETUP = (
    f'NOT RUN (installs from package registries): the manual equivalent of '
    f'tools/setup_env.sh; {THIS}::test_manual_setup_pins_match_setup_env '
    'checks its versions against the script'
)
_BENCH = (
    'NOT RUN: a benchmark of the full-size Swin-T (minutes per run, the '
    "numbers are the point); bench/README.md: 'not tests'"
)

#: (doc, command) -> 'test file::test name', 'CI: ...' or 'NOT RUN: ...'
INVENTORY = {
    (README, 'bash tools/setup_env.sh'): (
        f'CI: .ci/run, checked by {THIS}::test_ci_runs_the_readme_commands'
    ),
    (
        README,
        'pip download --no-deps --no-binary :all: --no-build-isolation '
        'mmcv==2.1.0',
    ): _SETUP,
    (README, 'tar xzf mmcv-2.1.0.tar.gz && cd mmcv-2.1.0'): _SETUP,
    (README, "sed -i 's/-std=c++17/-std=c++20/' setup.py"): _SETUP,
    (
        README,
        'MMCV_WITH_OPS=1 pip wheel --no-deps --no-build-isolation '
        '--no-cache-dir -w dist .',
    ): _SETUP,
    (README, 'pip install dist/mmcv-2.1.0-*.whl'): _SETUP,
    (README, 'pip install torch==2.14.1 torchvision==0.29.1'): _SETUP,
    (README, "pip install 'setuptools<70' wheel ninja mmengine"): _SETUP,
    (
        README,
        'pip install mmdet==3.3.0 mmsegmentation==1.2.2 mmpretrain==1.2.0 '
        'pytorch-quantization==2.1.3 ftfy regex onnx onnxruntime pycocotools',
    ): _SETUP,
    (README, 'pip install -e .'): _SETUP,
    (README, '.venv/bin/python tools/demo.py --work-dir work_dirs/demo'): (
        'NOT RUN: the full demo takes ~35 min on 2 CPU cores; its --quick '
        f'form (same stages, fewer iterations) runs in {BENCH_TEST}::'
        'test_demo_quick_writes_all_rows'
    ),
    (README, '.venv/bin/python -m pytest tests'): (
        f'CI: .ci/run, checked by {THIS}::test_ci_runs_the_readme_commands'
    ),
    (
        README,
        'python tools/train.py configs/gpusq/demo/swin_cls_tiny_dense.py '
        '--gpusq work_dirs/swin_cls_tiny_dense/epoch_24.pth',
    ): f'{FLAG_TEST}::test_readme_gpusq_commands',
    (
        README,
        'python tools/test.py configs/gpusq/demo/swin_cls_tiny_dense.py '
        'work_dirs/swin_cls_tiny_dense_gpusq/student_final.pth --gpusq',
    ): f'{FLAG_TEST}::test_readme_gpusq_commands',
    (
        README,
        'python tools/deploy/export_onnx.py '
        'configs/gpusq/demo/swin_cls_tiny_gpusq.py '
        'work_dirs/demo/cls/gpusq/student_final.pth '
        '--out work_dirs/demo/cls/student.onnx --shape 1x3x56x56',
    ): f'{DEPLOY_TEST}::test_readme_deploy_commands',
    (
        README,
        'python tools/analysis/report.py '
        'configs/gpusq/demo/swin_cls_tiny_gpusq.py '
        'work_dirs/demo/cls/gpusq/student_final.pth '
        '--onnx work_dirs/demo/cls/student.onnx '
        '--out work_dirs/demo/cls/report --shape 1x3x56x56',
    ): f'{DEPLOY_TEST}::test_readme_deploy_commands',
    (
        README,
        'python tools/deploy/eval_onnx.py '
        'configs/gpusq/demo/swin_cls_tiny_gpusq.py '
        'work_dirs/demo/cls/gpusq/student_final.pth '
        'work_dirs/demo/cls/student.onnx',
    ): f'{DEPLOY_TEST}::test_readme_deploy_commands',
    (
        README,
        'python tools/deploy/build_trt.py work_dirs/demo/cls/student.onnx',
    ): (f'{DEPLOY_TEST}::test_readme_deploy_commands'),
    (
        README,
        'python tools/analysis/compare_runs.py work_dirs/demo/cls/nokd.py '
        'work_dirs/demo/cls/sparse24_nokd/epoch_2.pth '
        'work_dirs/demo/cls/gpusq/epoch_2.pth '
        '--config-b work_dirs/demo/cls/gpusq.py',
    ): f'{DEPLOY_TEST}::test_readme_compare_runs_command',
    (
        README,
        'python tools/train.py '
        'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py --gpusq dense.pth',
    ): f'{CONFIGS_TEST}::test_upstream_config_with_the_gpusq_flag',
    (README, 'bash tools/dist_train.sh CONFIG GPUS --gpusq dense.pth'): (
        f'{FLAG_TEST}::test_readme_dist_train_gpusq_template'
    ),
    (
        CFG_README,
        'python tools/train.py configs/gpusq/swin_maskrcnn_coco.py '
        '--cfg-options model.teacher.checkpoint=dense.pth',
    ): f'{CONFIGS_TEST}::test_coco_block_of_the_configs_readme',
    (
        CFG_README,
        'bash tools/dist_train.sh configs/gpusq/swin_maskrcnn_coco.py 8 '
        '--cfg-options model.teacher.checkpoint=dense.pth',
    ): f'{CONFIGS_TEST}::test_coco_block_of_the_configs_readme',
    (
        CFG_README,
        'python tools/test.py configs/gpusq/swin_maskrcnn_coco.py '
        'work_dirs/swin_maskrcnn_coco/student_final.pth',
    ): f'{CONFIGS_TEST}::test_coco_block_of_the_configs_readme',
    (
        CFG_README,
        'python tools/analysis/check_sparsity.py '
        'configs/gpusq/swin_maskrcnn_coco.py '
        'work_dirs/swin_maskrcnn_coco/student_final.pth',
    ): f'{CONFIGS_TEST}::test_coco_block_of_the_configs_readme',
    (CFG_README, 'python tools/train.py UPSTREAM_CONFIG --gpusq DENSE.pth'): (
        f'{CONFIGS_TEST}::test_upstream_config_with_the_gpusq_flag'
    ),
    (BENCH, '.venv/bin/python bench/bench_mask_upkeep.py'): _BENCH,
    (
        BENCH,
        '.venv/bin/python bench/bench_qat_step.py --steps 5 --threads 1',
    ): _BENCH,
    (BENCH, '.venv/bin/python bench/bench_deploy.py --no-gpu'): _BENCH,
}
for _threads in ('', ' --threads 1'):
    INVENTORY[
        (
            BENCH,
            '.venv/bin/python bench/bench_deploy.py --no-gpu --seg '
            'work_dirs/demo/seg/gpusq.py '
            f'work_dirs/demo/seg/gpusq/student_final.pth{_threads} --runs 30',
        )
    ] = 'tests/test_deploy/test_ort_opt.py::test_bench_seg_commands'
for _name in (
    'detr_r50_coco',
    'dino_swin_coco',
    'swin_tiny_in1k',
    'upernet_swin_ade20k',
):
    INVENTORY[
        (
            f'configs/gpusq/{_name}.py',
            f'python tools/train.py configs/gpusq/{_name}.py '
            '--cfg-options model.teacher.checkpoint=dense.pth',
        )
    ] = f'{CONFIGS_TEST}::test_header_command'
INVENTORY[
    (
        'configs/gpusq/swin_maskrcnn_coco.py',
        'python tools/train.py configs/gpusq/swin_maskrcnn_coco.py '
        '--cfg-options model.teacher.checkpoint=dense.pth',
    )
] = f'{CONFIGS_TEST}::test_coco_block_of_the_configs_readme'
for _task, _stem in (
    ('cls', 'swin_cls_tiny'),
    ('det', 'swin_maskrcnn_tiny'),
    ('seg', 'swin_upernet_tiny'),
):
    INVENTORY[
        (
            f'{DEMO}/{_stem}_dense.py',
            f'python tools/generate_data.py --out data/gpusq_demo --tasks '
            f'{_task}',
        )
    ] = f'{DEMO_CMDS_TEST}::test_generate_data_commands'
    INVENTORY[
        (
            f'{DEMO}/{_stem}_gpusq.py',
            f'python tools/train.py {DEMO}/{_stem}_gpusq.py '
            '--cfg-options model.teacher.checkpoint=DENSE.pth',
        )
    ] = f'{DEMO_CMDS_TEST}::test_gpusq_header_command'
for _command in bash_block_commands(BENCH):
    INVENTORY[(BENCH, _command)] = (
        f'{BENCH_TEST}::test_demo_quick_writes_all_rows'
    )


def test_inventory_is_complete():
    documented = documented_commands()
    assert len(set(documented)) == len(documented), 'a command listed twice'
    missing = [d for d in documented if d not in INVENTORY]
    stale = [k for k in INVENTORY if k not in documented]
    assert not missing, f'documented commands without a test: {missing}'
    assert not stale, f'inventoried commands no doc documents: {stale}'
    for key, where in INVENTORY.items():
        if where.startswith(('CI:', 'NOT RUN')):
            continue
        path, name = where.split('::')
        with open(osp.join(REPO_ROOT, path)) as f:
            assert re.search(rf'^def {name}\(', f.read(), re.M), (key, where)


def test_ci_runs_the_readme_commands():
    """``.ci/run`` runs the README's setup and test commands verbatim."""
    with open(osp.join(REPO_ROOT, '.ci', 'run')) as f:
        lines = [line.strip() for line in f]
    readme = [c for d, c in documented_commands() if d == README]
    for command in (
        'bash tools/setup_env.sh',
        '.venv/bin/python -m pytest tests',
    ):
        assert command in readme, command
        assert command in lines, command


def test_manual_setup_pins_match_setup_env():
    """Every version the README's manual setup pins is the one
    ``tools/setup_env.sh`` (or the requirements files it installs)
    uses."""
    with open(osp.join(REPO_ROOT, README)) as f:
        text = f.read()
    setup = text.split('\n## Setup', 1)[1].split('\n## ', 1)[0]
    pins = set(re.findall(r'([A-Za-z][\w-]*)(==|<)([\d.]+)', setup))
    assert len(pins) >= 8, pins
    sources = [osp.join(REPO_ROOT, 'tools', 'setup_env.sh')]
    sources += [
        osp.join(REPO_ROOT, 'requirements', n)
        for n in ('runtime.txt', 'optional.txt', 'tests.txt')
    ]
    script = ''
    for path in sources:
        if osp.isfile(path):
            with open(path) as f:
                script += f.read()
    script = script.replace('MMCV_VERSION=2.1.0', 'mmcv==2.1.0')
    for name, op, version in sorted(pins):
        assert f'{name}{op}{version}' in script, f'{name}{op}{version}'


def test_constraints_pin_the_requirements():
    """``requirements/constraints.txt`` pins (``==``) every package the
    requirements files name, leaves torch / torchvision / mmcv to
    ``tools/setup_env.sh``, and the script applies it to every pip call."""
    path = osp.join(REPO_ROOT, 'requirements', 'constraints.txt')
    with open(path) as f:
        lines = [x.strip() for x in f if x.strip() and x[0] != '#']
    pins = {}
    for line in lines:
        m = re.fullmatch(r'([A-Za-z0-9][\w.-]*)==([\w.]+)', line)
        assert m, f'{path}: not an exact pin: {line!r}'
        pins[m.group(1).lower().replace('_', '-')] = m.group(2)
    for name in ('torch', 'torchvision', 'mmcv'):
        assert name not in pins, f'{path} must not pin {name}'
    named = set()
    for n in ('runtime.txt', 'optional.txt', 'tests.txt'):
        with open(osp.join(REPO_ROOT, 'requirements', n)) as f:
            for x in f:
                m = re.match(r'\s*([A-Za-z0-9][\w.-]*)', x)
                if m and not x.lstrip().startswith('#'):
                    named.add(m.group(1).lower().replace('_', '-'))
    missing = sorted(named - set(pins) - {'mmcv'})
    assert not missing, f'{path} does not pin {missing}'
    with open(osp.join(REPO_ROOT, 'tools', 'setup_env.sh')) as f:
        script = f.read()
    assert 'install -c "$ROOT/requirements/constraints.txt"' in script
    # every install goes through INSTALL (its definition is the one use)
    assert script.count('"${PIP[@]}" install') == 1
