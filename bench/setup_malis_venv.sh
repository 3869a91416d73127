#!/usr/bin/env bash
# Create bench/.malis-venv with the PyPI package malis==1.0, the peer of bench/malis_weights.py.
#
# Usage:
#     bash bench/setup_malis_venv.sh          # idempotent: a working venv is left as it is
#     PYTHON=python3.11 bash bench/setup_malis_venv.sh
#     FORCE=1 bash bench/setup_malis_venv.sh  # delete the venv and build it again
#
# malis 1.0 (2016) is a Cython + C++ (boost) package with a legacy setup.py, so it gets its own
# virtual environment, kept apart from the project's torch venv:
#   1. a venv made with $PYTHON (default: python3);
#   2. pip<24 (the last pip that runs a legacy `setup.py install`), wheel, numpy<2, cython, scipy;
#   3. Debian's libboost-dev (apt-get install -y, only if boost/pending/disjoint_sets.hpp is missing);
#   4. pip install --no-build-isolation --no-use-pep517 malis==1.0 (its setup.py imports numpy, and
#      build isolation would fetch numpy 2 into a temporary environment);
#   5. an import check. malis 1.0 does `from scipy.misc import comb`, which modern SciPy no longer
#      has, so every importer must first run
#          import scipy.misc, scipy.special; scipy.misc.comb = scipy.special.comb
#      (bench/malis_weights.py does; the check below does the same).
# Exits non-zero with a message naming the step that failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.malis-venv"
PYTHON="${PYTHON:-python3}"
LOG="$VENV/setup.log"   # inside the (git-ignored) venv

die() {
    echo "setup_malis_venv.sh: ERROR: $*" >&2
    echo "setup_malis_venv.sh: malis 1.0 is NOT installed; bench/malis_weights.py will skip it." >&2
    exit 1
}

# The import check shared by the idempotence test and the final verification.
CHECK='
import sys, types, warnings
warnings.simplefilter("ignore", DeprecationWarning)   # scipy.misc is deprecated
try:
    import scipy.misc
except ImportError:          # SciPy >= 1.15 removed scipy.misc: give malis a stand-in module
    scipy_misc = types.ModuleType("scipy.misc")
    sys.modules["scipy.misc"] = scipy_misc
    import scipy
    scipy.misc = scipy_misc
import scipy.special
scipy.misc.comb = scipy.special.comb
import malis, numpy
print("malis", getattr(malis, "__version__", "1.0"), "from", malis.__file__, "numpy", numpy.__version__)
'

if [[ "${FORCE:-0}" == "1" && -d "$VENV" ]]; then
    echo "setup_malis_venv.sh: FORCE=1: removing $VENV"
    rm -rf "$VENV"
fi

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1; then
    echo "setup_malis_venv.sh: $VENV already works:"
    "$VENV/bin/python" -c "$CHECK"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH (set PYTHON=...)"
command -v g++ >/dev/null 2>&1 || die "no g++ on PATH: install a C++ compiler (apt-get install -y g++)"

echo "setup_malis_venv.sh: step 1/5: venv $VENV with $("$PYTHON" --version 2>&1)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || die "step 1: '$PYTHON -m venv $VENV' failed (Debian: apt-get install -y python3-venv)"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "setup_malis_venv.sh: step 2/5: pip<24, wheel, numpy<2, cython, scipy"
"${PIP[@]}" install -q "pip<24" || die "step 2: could not install pip<24"
"${PIP[@]}" install -q wheel "numpy<2" cython scipy || die "step 2: could not install wheel, numpy<2, cython, scipy"

echo "setup_malis_venv.sh: step 3/5: boost headers"
if [[ -f /usr/include/boost/pending/disjoint_sets.hpp ]]; then
    echo "  boost headers already present"
else
    command -v apt-get >/dev/null 2>&1 || die "step 3: boost headers missing and no apt-get: install boost (libboost-dev) by hand"
    SUDO=()
    if [[ "$(id -u)" != "0" ]]; then
        command -v sudo >/dev/null 2>&1 || die "step 3: need root or sudo to apt-get install libboost-dev"
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! "${SUDO[@]}" apt-get install -y -q libboost-dev >>"$LOG" 2>&1; then
        "${SUDO[@]}" apt-get update -q >>"$LOG" 2>&1 || true
        "${SUDO[@]}" apt-get install -y -q libboost-dev >>"$LOG" 2>&1 \
            || die "step 3: apt-get install -y libboost-dev failed (log: $LOG)"
    fi
    [[ -f /usr/include/boost/pending/disjoint_sets.hpp ]] || die "step 3: libboost-dev installed but boost headers not found"
fi

echo "setup_malis_venv.sh: step 4/5: pip install --no-build-isolation --no-use-pep517 malis==1.0 (log: $LOG)"
if ! "${PIP[@]}" install --no-build-isolation --no-use-pep517 --no-cache-dir "malis==1.0" >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "step 4: building malis==1.0 failed (full log: $LOG)"
fi

echo "setup_malis_venv.sh: step 5/5: import check"
"$VENV/bin/python" -c "$CHECK" || die "step 5: malis==1.0 installed but does not import"
echo "setup_malis_venv.sh: done: $VENV/bin/python can import malis 1.0"
