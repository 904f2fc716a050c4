"""The pinned stack: the Makefile installs requirements.lock with --no-deps, so the lock must hold every
dependency of what it installs; pip's own check of the installed environment says whether it does."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# requirements-nodeps.txt's packages are installed without their declared dependencies, on purpose (the file says why)
KNOWN = {"tensorflow-empirical-privacy": "tf-models-official"}


def _pinned(path):
    return {line.split("==")[0].strip().lower().replace("_", "-")
            for line in (ROOT / path).read_text().splitlines() if "==" in line and not line.startswith("#")}


def test_the_lock_holds_every_dependency_of_the_installed_stack():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    problems = [line for line in out.splitlines()
                if line.strip() and not line.startswith("No broken requirements")
                and not any(line.lower().startswith(f"{pkg} ") and f"requires {dep}," in line
                            for pkg, dep in KNOWN.items())]
    assert not problems, "requirements.lock misses dependencies (pip check):\n" + "\n".join(problems)


def test_the_lock_and_the_nodeps_file_pin_disjoint_packages():
    nodeps = _pinned("requirements-nodeps.txt")
    assert set(KNOWN) <= nodeps and not nodeps & _pinned("requirements.lock")
