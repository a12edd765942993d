"""The packages' layering, read from the source with ``ast``: no module of
the server imports a console script.

``presence/cli/`` holds the console programs (``presence-client``,
``presence-handset``, ``presence-sip-bridge``); what they share with the
server (``HeartbeatClient``, ``TreqHTTP``, the event-stream parser) lives
in ``presence/client/``.  Every import is checked, those inside functions
included."""

from __future__ import annotations

import ast
from pathlib import Path

import presence

ROOT = Path(presence.__file__).parent


def imported_modules(path: Path, root: Path = ROOT) -> set:
    """Every module ``path`` (under the package directory ``root``) imports,
    absolute, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(("presence",) + path.relative_to(root).parent.parts)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            # "from presence import cli" imports presence.cli
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def imports_cli(names: set) -> list:
    return sorted(n for n in names if n == "presence.cli" or n.startswith("presence.cli."))


def test_no_module_outside_presence_cli_imports_a_console_script():
    offenders = {}
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] == "cli":
            continue
        found = imports_cli(imported_modules(path))
        if found:
            offenders[str(path.relative_to(ROOT.parent))] = found
    assert offenders == {}


def test_the_check_sees_every_form_of_import(tmp_path):
    fake = tmp_path / "presence"
    (fake / "wireless").mkdir(parents=True)
    forms = {
        "a.py": "import presence.cli.client\n",
        "b.py": "from presence.cli.client import TreqHTTP\n",
        "c.py": "from presence import cli\n",
        "d.py": "def f():\n    from presence.cli import handset\n",
        "wireless/e.py": "from ..cli.client import TreqHTTP\n",
    }
    for name, text in forms.items():
        (fake / name).write_text(text)
        assert imports_cli(imported_modules(fake / name, fake)), name
    (fake / "ok.py").write_text("from presence.client.heartbeat import TreqHTTP\n"
                                "import presence.clinic\n")
    assert imports_cli(imported_modules(fake / "ok.py", fake)) == []


def test_the_console_scripts_are_built_on_presence_client():
    for name in ("client.py", "handset.py", "sip_bridge.py"):
        names = imported_modules(ROOT / "cli" / name)
        assert any(n.startswith("presence.client.") for n in names), name


def test_every_package_and_its_files_are_installed():
    """``pip install .`` (not editable) installs what setup.cfg lists: every
    package of the server must be there, and every file that is not Python
    must be package data, else an installed server fails to start (the
    suite itself imports the source tree and would not notice)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT.parent / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    data = config["options.package_data"]
    packages = {".".join(("presence",) + p.parent.relative_to(ROOT).parts)
                for p in ROOT.rglob("__init__.py")}
    assert packages - listed == set()
    for path in ROOT.rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".pyc"):
            package = ".".join(("presence",) + path.parent.relative_to(ROOT).parts)
            owner, rest = package, ""
            while owner not in packages:
                owner, _, last = owner.rpartition(".")
                rest = last + "/" + rest
            patterns = data.get(owner, "").split()
            relative = rest + path.name
            assert any(Path(relative).match(p) for p in patterns), relative


def test_test_modules_have_unique_names():
    """pytest imports test modules by their base name (no packages here):
    two ``test_x.py`` in different folders stop the whole suite at
    collection, which a run of one folder at a time never shows."""
    tests = Path(__file__).parent
    seen: dict = {}
    for path in sorted(tests.rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path
