"""The shell commands the docs document, read from the docs themselves.

Tests run these commands exactly as written: they take the text from the
file at test time (so a changed doc changes what runs), replace only the
interpreter (``python`` / ``.venv/bin/python`` -> this interpreter) and,
where a test says so in its docstring, a placeholder or an appended
``--cfg-options`` for the length of the schedule.

Where commands are documented:

- fenced ```` ```bash ```` blocks of the markdown docs (``README.md``,
  ``configs/gpusq/README.md``, ``bench/README.md``, ``docs/*.md``): one
  command per line, ``\\`` continuations joined, ``#`` comments dropped;
- inline code spans of those docs that start like a command (``python``,
  ``.venv/bin/python``, ``bash``, ``nice``, ``pip``), line breaks inside
  the span read as spaces;
- the header comments of ``configs/gpusq/*.py`` and
  ``configs/gpusq/demo/*.py``: lines ``#   python ...`` / ``#   bash ...``
  and their ``\\`` continuation lines.
"""

import glob
import importlib.util
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: markdown files whose commands are inventoried
MARKDOWN = ('README.md', 'configs/gpusq/README.md', 'bench/README.md')
#: what a documented command starts with
STARTS = ('python ', '.venv/bin/python ', 'bash ', 'nice ', 'pip ')


def _read(rel: str) -> str:
    with open(osp.join(REPO_ROOT, rel)) as f:
        return f.read()


def _norm(command: str) -> str:
    return ' '.join(command.split())


def markdown_files() -> List[str]:
    """The inventoried markdown files, repository-relative."""
    docs = sorted(
        osp.relpath(p, REPO_ROOT)
        for p in glob.glob(osp.join(REPO_ROOT, 'docs', '*.md'))
    )
    return list(MARKDOWN) + docs


def config_files() -> List[str]:
    """``configs/gpusq/*.py`` and ``configs/gpusq/demo/*.py``."""
    found = []
    for pattern in ('configs/gpusq/*.py', 'configs/gpusq/demo/*.py'):
        found += sorted(glob.glob(osp.join(REPO_ROOT, pattern)))
    return [osp.relpath(p, REPO_ROOT) for p in found]


def _section(text: str, section: Optional[str]) -> str:
    if section is None:
        return text
    match = re.search(
        rf'^(#+) {re.escape(section)}\n(.*?)(?=^#{{1,2}} |\Z)',
        text,
        re.M | re.S,
    )
    assert match, f'no section {section!r}'
    return match.group(2)


def bash_block_commands(rel: str, section: Optional[str] = None) -> List[str]:
    """The commands of the ```` ```bash ```` blocks of a markdown file.

    Args:
        rel (str): the file, repository-relative.
        section (str, optional): only the blocks under this heading (up to
            the next heading of level 1 or 2).
    """
    text = _section(_read(rel), section)
    commands = []
    for match in re.finditer(r'^( *)```bash\n(.*?)^ *```', text, re.M | re.S):
        indent = len(match.group(1))
        body = match.group(2).replace('\\\n', ' ')
        for line in body.splitlines():
            line = line[indent:] if line[:indent].strip() == '' else line
            line = re.sub(r'(^|\s)#.*$', '', line).strip()
            if line:
                commands.append(_norm(line))
    return commands


def inline_commands(rel: str) -> List[str]:
    """Inline code spans of a markdown file that are commands."""
    text = re.sub(r'```.*?```', '', _read(rel), flags=re.S)
    found = []
    for match in re.finditer(r'`([^`]+)`', text):
        span = _norm(match.group(1))
        if span.startswith(STARTS):
            found.append(span)
    return found


def header_commands(rel: str) -> List[str]:
    """The commands in a config's leading comment block."""
    commands, current = [], None
    for line in _read(rel).splitlines():
        if not line.startswith('#'):
            break
        body = line[1:].strip()
        if current is not None:
            current += ' ' + body
        elif body.startswith(STARTS) and line.startswith('#   '):
            current = body
        else:
            continue
        if current.endswith('\\'):
            current = current[:-1]
        else:
            commands.append(_norm(current))
            current = None
    assert current is None, f'{rel}: unfinished command {current!r}'
    return commands


def documented_commands() -> List[Tuple[str, str]]:
    """Every documented command as ``(file, command)``, in file order."""
    found = []
    for rel in markdown_files():
        seen = set()
        for cmd in bash_block_commands(rel) + inline_commands(rel):
            if cmd not in seen:
                seen.add(cmd)
                found.append((rel, cmd))
    for rel in config_files():
        found += [(rel, cmd) for cmd in header_commands(rel)]
    return found


def one_command(commands: Sequence[str], startswith: str) -> str:
    """The one command in ``commands`` that starts with ``startswith``."""
    hits = [c for c in commands if c.startswith(startswith)]
    assert len(hits) == 1, (startswith, commands)
    return hits[0]


def argv_of(
    command: str, substitutions: Optional[Dict[str, str]] = None
) -> List[str]:
    """``shlex.split(command)`` with ``python`` -> this interpreter.

    ``substitutions`` replace whole arguments (placeholders) or the value
    after ``=`` of a ``key=PLACEHOLDER`` argument; each must be used.
    """
    argv = shlex.split(command)
    for i, arg in enumerate(argv):
        if arg in ('python', '.venv/bin/python'):
            argv[i] = sys.executable
    for old, new in (substitutions or {}).items():
        hits = 0
        for i, arg in enumerate(argv):
            if arg == old:
                argv[i], hits = new, hits + 1
            elif '=' in arg and arg.split('=', 1)[1] == old:
                argv[i], hits = arg.split('=', 1)[0] + '=' + new, hits + 1
        assert hits, f'placeholder {old!r} not in {command!r}'
    return argv


def link_repo(cwd, names: Sequence[str] = ('configs', 'tools')) -> None:
    """Link repository folders into a scratch working directory."""
    for name in names:
        os.symlink(osp.join(REPO_ROOT, name), osp.join(str(cwd), name))


def tool_main(path: str):
    """``main`` of ``tools/....py`` (tools/ is no package)."""
    spec = importlib.util.spec_from_file_location(
        '_doc_tool_' + osp.basename(path)[:-3], path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_in_process(argv: Sequence[str], cwd, monkeypatch, extra=()):
    """Run ``[python, tools/X.py, *args]`` as ``main(args + extra)`` in
    this process, in ``cwd``; returns what ``main`` returns."""
    assert argv[0] == sys.executable and argv[1].startswith('tools/'), argv
    monkeypatch.chdir(cwd)
    return tool_main(osp.join(str(cwd), argv[1]))(list(argv[2:]) + list(extra))


def env(**extra: str) -> Dict[str, str]:
    """The environment of a subprocess: this checkout importable and
    ``python`` on ``PATH`` being this interpreter (for ``bash`` scripts),
    plus ``extra``."""
    return dict(
        os.environ,
        PYTHONPATH=REPO_ROOT,
        PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
        **extra,
    )


def free_port() -> int:
    """A free TCP port (``PORT`` of ``tools/dist_*.sh``)."""
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_subprocess(argv: Sequence[str], cwd, timeout: int = 900, **kw):
    """Run ``argv`` in ``cwd``; fail with its output unless status 0."""
    proc = subprocess.run(
        list(argv),
        cwd=str(cwd),
        env=kw.pop('env', None) or env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    assert proc.returncode == 0, (
        ' '.join(argv) + '\n' + proc.stdout[-3000:] + proc.stderr[-5000:]
    )
    return proc


def short_schedule(config: str) -> List[str]:
    """``--cfg-options`` items that shorten a GPUSQ config's schedule to 2
    epochs / iterations (its own loop), the QAT stage (its GPUSQHook) from
    the second, one validation and one checkpoint at the end."""
    from mmengine.config import Config

    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    loop = 'iter' if 'max_iters' in cfg.train_cfg else 'epoch'
    hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
    index = hooks.index('gpusq_mm.GPUSQHook')
    return [
        f'train_cfg.max_{loop}s=2',
        'train_cfg.val_interval=2',
        f'custom_hooks.{index}.qat_begin_{loop}=1',
        'default_hooks.checkpoint.interval=2',
    ]
