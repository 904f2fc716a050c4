"""The architecture CONTRIBUTING.md describes: the library never imports the reproduction."""
import ast
import os
import subprocess
import sys

import dpact_tf

PKG = os.path.dirname(dpact_tf.__file__)


def _library_modules():
    for root, dirs, files in os.walk(PKG):
        dirs[:] = [d for d in dirs if d not in ("repro", "__pycache__")]
        for f in files:
            if f.endswith(".py") and f != "__main__.py":  # command-line entry points sit above both floors
                yield os.path.join(root, f)


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name


def test_library_never_imports_the_reproduction():
    offenders = {os.path.relpath(p, PKG): m for p in _library_modules() for m in _imports(p)
                 if m == "dpact_tf.repro" or m.startswith("dpact_tf.repro.")}
    assert not offenders, f"library modules import dpact_tf.repro: {offenders}"
    assert any(p.endswith("split.py") for p in _library_modules())  # the walk really saw the library


def test_importing_the_library_loads_no_reproduction_module():
    code = ("import sys, dpact_tf, dpact_tf.layers, dpact_tf.split, dpact_tf.vggface, dpact_tf.data, "
            "dpact_tf.accounting, dpact_tf.attacks, dpact_tf.deploy.convert, dpact_tf.deploy.runtime, dpact_tf.edge.server, "
            "dpact_tf.edge.cli\n"
            "bad = [m for m in sys.modules if m.startswith('dpact_tf.repro')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_protocol_knows_no_layer_names_and_writes_no_files():
    src = open(os.path.join(PKG, "split.py")).read()
    for forbidden in ('"fc8"', "write_json", "print(", "tqdm"):
        assert forbidden not in src, f"split.py contains {forbidden}"
