"""`make bench`, part one: `bake validate` of each example, which renders every image with the
template bounds on; asserts each stays under 50 ms (median of runs) and writes
bench/validate.json. Needs no lab."""
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAKE = ROOT / "target" / "debug" / "bake"
RESULTS = ROOT / "bench" / "validate.json"
RUNS = 20
LIMIT = 0.050  # seconds, median per example


def time_validate(example):
    """Wall times of RUNS runs of `bake -c EXAMPLE validate` (each must succeed)."""
    walls = []
    for _ in range(RUNS):
        start = time.perf_counter()
        result = subprocess.run([str(BAKE), "-c", str(example), "validate"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"bake validate {example} failed ({result.returncode}):\n{result.stderr}")
    return walls


def main():
    examples = sorted((ROOT / "examples").glob("*.toml"))
    rows, checks = {}, {}
    for example in examples:
        walls = time_validate(example)
        name = example.relative_to(ROOT).as_posix()
        rows[name] = {"median": statistics.median(walls), "max": max(walls), "runs": RUNS}
        checks[f"bake validate {name} median < {LIMIT * 1000:.0f} ms"] = rows[name]["median"] < LIMIT
    RESULTS.write_text(json.dumps({"validate": rows, "checks": checks}, indent=2) + "\n")
    print("| example | median | max |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['median'] * 1000:.1f} ms | {r['max'] * 1000:.1f} ms |")
    print()
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
