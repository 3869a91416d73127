#!/usr/bin/env bash
# The install paths a user takes, on this machine's venv (make install-check; part of CI):
#   1. plain `pip install .` (build isolation) stops with the message that names the fix;
#   2. `pip install --no-build-isolation .` installs a working seglosses, imported here from
#      outside the source tree, whose _C carries no debug info;
#   3. it is uninstalled again.
# Usage: tools/install_check.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(cd "$(dirname "${1:-.venv/bin/python}")" && pwd)/$(basename "${1:-.venv/bin/python}")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "install_check: pip install . (with build isolation) must explain itself"
if "$PY" -m pip install --quiet . > "$OUT/isolated.log" 2>&1; then
  echo "install_check: FAIL: pip install . succeeded, but build isolation has no torch to compile against" >&2
  exit 1
elif grep -q "seglosses compiles against your installed torch: \`pip install --no-build-isolation .\`" "$OUT/isolated.log"; then
  echo "install_check: OK   it stops with: $(grep -m1 'seglosses compiles' "$OUT/isolated.log" | sed 's/^ *//')"
elif grep -qi "no matching distribution found for setuptools\|could not find a version that satisfies the requirement setuptools" "$OUT/isolated.log"; then
  echo "install_check: SKIP pip could not fetch setuptools for the isolated build (offline?)"
else
  echo "install_check: FAIL: pip install . failed without seglosses' message:" >&2
  cat "$OUT/isolated.log" >&2
  exit 1
fi

echo "install_check: pip install --no-build-isolation ."
"$PY" -m pip install --quiet --no-build-isolation .
cd "$OUT"
TOOLS="$OLDPWD/tools" "$PY" - <<'PY'
import os
import sys

import torch

import seglosses

sys.path.insert(0, os.environ["TOOLS"])
from seglosses_build import debug_sections

x = torch.randn(1, 2, 4, 4, requires_grad=True)
seglosses.DiceLoss()(x, torch.zeros(1, 4, 4, dtype=torch.long)).backward()
path = seglosses._C.__file__
assert "site-packages" in path, f"imported {path}, not the installed copy"
assert not debug_sections(path), f"{path} carries debug info: {debug_sections(path)}"
print(f"install_check: OK   installed seglosses {seglosses.__version__} from {path} "
      f"({os.path.getsize(path) / 2**20:.1f} MiB, no debug info)")
PY
cd - > /dev/null
"$PY" -m pip uninstall --quiet --yes seglosses
echo "install_check: OK   uninstalled"
