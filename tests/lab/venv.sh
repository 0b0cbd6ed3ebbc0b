#!/bin/sh
# Builds the lab's two venvs (lab.mk calls it under a lock): DEPS, the pinned dependencies of pyproject.toml
# (moto, boto3, pytest, ruff; big, one per set of pins, shared by checkouts), and LAB, the lab itself installed
# on top of them (small, one per version of its sources). Each gets its .complete marker only once whole.
# Building either one also removes the venvs of other pins or sources that no build has touched for
# STALE_DAYS (lab.mk's lab-deps touches the markers of the venvs it uses, each time): old checkouts'
# venvs would otherwise pile up, 350 MB per set of pins.
# usage: venv.sh LAB_DIR DEPS_VENV LAB_VENV PIN...
set -eu
lab_dir=$1 deps=$2 lab=$3
shift 3
pip_quiet="-q --disable-pip-version-check"
# A week: a checkout idle longer rebuilds its lab venv in seconds, its dependencies in about a minute.
STALE_DAYS=7

# The other venvs of the cache (same naming as DEPS and LAB) whose marker is older than STALE_DAYS.
prune_stale() {
  cache=$(dirname "$lab")
  for marker in "$cache"/deps-*/.complete "$cache"/lab-*/.complete; do
    [ -f "$marker" ] || continue
    dir=$(dirname "$marker")
    [ "$dir" = "$deps" ] || [ "$dir" = "$lab" ] && continue
    if [ -n "$(find "$marker" -mtime +"$STALE_DAYS")" ]; then
      echo "lab: removing $dir (unused for more than $STALE_DAYS days)"
      rm -rf "$dir"
    fi
  done
}

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
  prune_stale
fi
