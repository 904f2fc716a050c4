"""The pinned stack: the Makefile installs requirements.lock with --no-deps, so the lock must hold every
dependency of what it pins.  Checked on the lock itself (each pinned package's declared requirements, read from
its installed metadata) and by pip's own check of the installed environment."""
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# requirements-nodeps.txt's packages are installed without their declared dependencies, on purpose (the file says why)
KNOWN = {"tensorflow-empirical-privacy": "tf-models-official"}


def _pinned(path):
    return {canonicalize_name(line.split("==")[0].strip())
            for line in (ROOT / path).read_text().splitlines() if "==" in line and not line.startswith("#")}


def test_every_requirement_of_a_pinned_package_is_pinned():
    """The closure of the lock: a requirement that applies here (its marker holds, no extra asked) names a
    package of the lock or of requirements-nodeps.txt.  Independent of what else the venv holds."""
    lock, nodeps = _pinned("requirements.lock"), _pinned("requirements-nodeps.txt")
    missing = {}
    for name in sorted(lock):
        for text in importlib.metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) not in lock | nodeps:
                missing.setdefault(canonicalize_name(req.name), []).append(name)
    assert not missing, f"requirements.lock misses packages its pins require (needed by): {missing}"


def test_pip_check_finds_only_the_known_gaps():
    run = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert run.returncode in (0, 1) and not run.stderr.strip(), (run.returncode, run.stderr)
    problems = [line for line in lines if not any(
        canonicalize_name(line.split(" ")[0]) == pkg and f"requires {dep}," in line for pkg, dep in KNOWN.items())]
    if run.returncode == 0:
        assert lines == ["No broken requirements found."], lines
    else:
        assert lines and not problems, "requirements.lock misses dependencies (pip check):\n" + "\n".join(problems)


def test_the_lock_and_the_nodeps_file_pin_disjoint_packages():
    nodeps = _pinned("requirements-nodeps.txt")
    assert set(KNOWN) <= nodeps and not nodeps & _pinned("requirements.lock")
