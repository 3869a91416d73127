# seglosses: the two commands a new user needs, and a few for developers.
#
#   make demo   train a small affinity network on real EM, FIB-25 (BCE vs BCE + MALIS + Dice)
#   make test   run the test suite
#
# Both create .venv (torch==2.13.0 and the packages of requirements-dev.txt) and build the
# extension in place first. Set PYTHON to choose the interpreter that creates the venv.

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: demo test build cuda-check cuda-build-check install-check bench clean

# The venv is rebuilt when the requirements change.
$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet $(TORCH)
	$(VPY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# In-place build of seglosses._C against the venv's torch (ninja rebuilds only what changed;
# setup.py prints "building the C++ extension (about N min)..." when there is something to compile).
build: $(VENV)/.installed
	$(VPY) setup.py --quiet build_ext --inplace

test: build
	$(VPY) -m pytest tests -q

demo: build
	$(VPY) examples/train_affinities.py

# Compile every csrc/cuda/*.cu with nvcc (no GPU needed).
cuda-check: $(VENV)/.installed
	tools/check_cuda.sh $(VPY)

# The real CUDA build with a CUDA torch, no GPU needed (not in CI: such a torch is ~5 GB).
#   make cuda-build-check CUDA_PYTHON=/work/cuda-venv/bin/python
cuda-build-check:
	tools/cuda_build_check.sh $(CUDA_PYTHON)

# Plain `pip install .` explains itself; `pip install --no-build-isolation .` into the venv works
# from outside the source tree and ships no debug info.
install-check: $(VENV)/.installed
	tools/install_check.sh $(VPY)

bench: build
	$(VPY) bench/dice.py
	$(VPY) bench/malis_weights.py

clean:
	rm -rf build dist *.egg-info seglosses/_C*.so .cuda-check
