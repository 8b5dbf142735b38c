#!/usr/bin/env bash
# Mutation testing (mutmut 3.x) of the modules that hold formulas and position logic.
# Slow: not part of CI. Each module is mutated in its own scratch copy of the repository and
# checked against only its relevant tests (mutmut then runs, per mutant, the tests that cover
# the mutated function).
#
#   scripts/mutation.sh                 # every module below
#   scripts/mutation.sh interventions fits   # a subset (names from the table below)
#
# Needs: pip install 'mutmut>=3.8,<4' into the venv. Results: one line per module
# ("module killed/total score") on stdout and in $OUT (default mutation-results/), plus each
# module's surviving mutants (`mutmut show` diffs) in $OUT/<module>.survivors.txt.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
MUTMUT="$(dirname "$PY")/mutmut"
OUT="${OUT:-$REPO/mutation-results}"
JOBS="${JOBS:-2}"  # mutmut children; 1 when sharing the machine
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

# module name -> "file(s) to mutate | test files (and pytest options such as -mfast)"
declare -A TARGET=(
  [interventions]="easyedit_split/interventions.py|tests/test_interventions.py tests/test_interventions_formula.py"
  [split]="easyedit_split/methods/split.py|tests/test_methods.py"
  [sft]="easyedit_split/methods/sft.py|tests/test_methods.py"
  [reps]="easyedit_split/methods/reps.py|tests/test_methods.py"
  [caa]="easyedit_split/methods/caa.py|tests/test_caa.py tests/test_capture_cache.py"
  [metrics]="easyedit_split/evaluation/metrics.py|tests/test_evaluation_metrics.py"
  # fits: only the fast tier (-mfast) of the fits tests: the paper-model recovery fits take minutes per mutant under load
  [fits]="easyedit_split/evaluation/fits.py|tests/test_evaluation_fits.py -mfast"
  [prompts]="easyedit_split/prompts.py|tests/test_prompts.py tests/test_positions.py"
  [replay]="easyedit_split/fastpath/replay.py|tests/test_replay.py"
  [training]="easyedit_split/training.py easyedit_split/prepared_pairs.py|tests/test_training.py tests/test_methods.py tests/test_training_losses.py"
  [packing]="easyedit_split/fastpath/packing.py|tests/test_packing.py"  # + test_evaluation_scoring: ~20 s per mutant
)
ORDER=(interventions split sft reps metrics fits caa prompts replay training packing)
[ "$#" -gt 0 ] && ORDER=("$@")

mkdir -p "$OUT"
for name in "${ORDER[@]}"; do
  spec="${TARGET[$name]:?unknown module '$name' (one of: ${!TARGET[*]})}"
  files="${spec%%|*}"; tests="${spec#*|}"
  existing=""
  for t in $tests; do { [ -f "$REPO/$t" ] || [ "${t#-}" != "$t" ]; } && existing="$existing $t"; done  # files and pytest options
  scratch="$(mktemp -d "${TMPDIR:-/tmp}/mutation-$name.XXXXXX")"
  # the working tree as it is now (tracked and new files), without caches or earlier runs
  (cd "$REPO" && git ls-files -co --exclude-standard -z | grep -zv '^mutation-results/' | xargs -0 cp --parents -t "$scratch")
  {
    echo "[mutmut]"
    echo "source_paths = easyedit_split/"
    echo "only_mutate ="; for f in $files; do echo "    $f"; done
    echo "pytest_add_cli_args_test_selection ="; for t in $existing; do echo "    $t"; done
    echo "pytest_add_cli_args = -p no:cacheprovider -q"
    echo "process_isolation = forkserver"
    echo "use_git_change_detection = false"
  } > "$scratch/setup.cfg"
  (cd "$scratch" && "$MUTMUT" run --max-children "$JOBS" > "$OUT/$name.log" 2>&1) || true
  (cd "$scratch" && "$MUTMUT" results --all true > "$OUT/$name.results.txt" 2>&1) || true
  "$PY" - "$name" "$OUT/$name.results.txt" <<'PYEOF' | tee -a "$OUT/scores.txt"
import collections, sys
name, path = sys.argv[1], sys.argv[2]
counts = collections.Counter()
for line in open(path, encoding="utf-8"):
    if ": " in line and "__mutmut_" in line:
        counts[line.rsplit(": ", 1)[1].strip()] += 1
total = sum(counts.values())
killed = counts["killed"] + counts["timeout"] + counts["segfault"]
score = 100.0 * killed / total if total else float("nan")
print(f"{name}\t{killed}/{total}\t{score:.1f}%\t{dict(counts)}")
PYEOF
  (cd "$scratch" && for m in $(grep -E ': (survived|no tests)$' "$OUT/$name.results.txt" | sed 's/:.*//'); do
     "$MUTMUT" show "$m"; echo; done > "$OUT/$name.survivors.txt" 2>&1) || true
  [ -n "${KEEP:-}" ] || rm -rf "$scratch"
done
