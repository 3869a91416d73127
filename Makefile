# seglosses: the two commands a new user needs, and a few for developers.
#
#   make demo   train a small affinity network on synthetic EM data (BCE vs BCE + MALIS + Dice)
#   make test   run the test suite
#
# Both create .venv (torch==2.13.0 and the packages of requirements-dev.txt) and build the
# extension in place first. Set PYTHON to choose the interpreter that creates the venv.

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: demo test build cuda-check install-check bench clean

# The venv is rebuilt when the requirements change.
$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet $(TORCH)
	$(VPY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# In-place build of seglosses._C against the venv's torch (ninja rebuilds only what changed).
build: $(VENV)/.installed
	$(VPY) setup.py --quiet build_ext --inplace

test: build
	$(VPY) -m pytest tests -q

demo: build
	$(VPY) examples/train_affinities.py

# Compile every csrc/cuda/*.cu with nvcc (no GPU needed).
cuda-check: $(VENV)/.installed
	tools/check_cuda.sh $(VPY)

# `pip install --no-build-isolation .` into the venv, then import it from outside the source tree.
install-check: $(VENV)/.installed
	$(VPY) -m pip install --quiet --no-build-isolation .
	cd /tmp && $(CURDIR)/$(VPY) -c "import seglosses, torch; x = torch.randn(1, 2, 4, 4, requires_grad=True); seglosses.DiceLoss()(x, torch.zeros(1, 4, 4, dtype=torch.long)).backward(); print('installed seglosses', seglosses.__version__, 'from', seglosses.__file__)"
	$(VPY) -m pip uninstall --quiet --yes seglosses

bench: build
	$(VPY) bench/dice.py
	$(VPY) bench/malis.py

clean:
	rm -rf build dist *.egg-info seglosses/_C*.so .cuda-check
