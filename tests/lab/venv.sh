#!/bin/sh
# Builds the lab's two venvs (lab.mk calls it under a lock): DEPS, the pinned dependencies of pyproject.toml
# (moto, boto3, pytest, ruff; big, one per set of pins, shared by checkouts), and LAB, the lab itself installed
# on top of them (small, one per version of its sources). Each gets its .complete marker only once whole.
# usage: venv.sh LAB_DIR DEPS_VENV LAB_VENV PIN...
set -eu
lab_dir=$1 deps=$2 lab=$3
shift 3
pip_quiet="-q --disable-pip-version-check"

if [ ! -f "$deps/.complete" ]; then
  rm -rf "$deps"
  echo "lab: creating $deps"
  /usr/bin/python3 -m venv "$deps"
  # shellcheck disable=SC2086
  "$deps/bin/pip" install $pip_quiet "$@"
  touch "$deps/.complete"
fi

if [ ! -f "$lab/.complete" ]; then
  rm -rf "$lab"
  echo "lab: installing $lab_dir into $lab"
  /usr/bin/python3 -m venv --without-pip "$lab"
  purelib='import sysconfig; print(sysconfig.get_path("purelib"))'
  # The dependencies come from DEPS: its site-packages joins LAB's (after it) at every start.
  echo "import site; site.addsitedir('$("$deps/bin/python" -c "$purelib")')" \
    >"$("$lab/bin/python" -c "$purelib")/bake_lab_deps.pth"
  # Built from a copy, so the build's files (egg-info, build/) stay out of the checkout.
  src=$(mktemp -d)
  cp -r "$lab_dir/pyproject.toml" "$lab_dir/README.md" "$lab_dir/src" "$src/"
  # shellcheck disable=SC2086
  "$deps/bin/pip" --python "$lab/bin/python" install $pip_quiet --no-deps "$src"
  rm -rf "$src"
  touch "$lab/.complete"
fi
