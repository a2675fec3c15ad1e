#!/usr/bin/env bash
# The `full` campaign on a GPU machine lent for minutes (CONTRIBUTING.md, "The `full` campaign"), in two halves:
#
#   bash scripts/loan.sh prepare [DATASETS]   here, before the loan: fills the git-ignored folder .loan/ (listed in
#                                             .git/info/exclude) with the offline data, this commit's id and
#                                             whether tracked files differ from it (the records' git_dirty);
#                                             DATASETS defaults to ../shared/datasets
#   bash scripts/loan.sh run SECONDS [TASK...] there, in one command that carries .loan/: stages the data, then
#                                             spends SECONDS on the named tasks in order (each `campaign.py run`
#                                             with the seconds left, skipping a task whose shortest useful slice
#                                             no longer fits), or on `campaign.py next` when no task is named
#
# After each task the new records (results/), the slices' logs and state.json are packed into $OUT/results.tgz and
# $OUT/logs.tgz, so a command stopped at its limit still returns what finished. Unpack results.tgz in the
# repository root, commit the records unedited, run scripts/update_readme.py.
#
# Runs that outlast a loan: every unfinished run's state folder (checkpoints, kept side runs, state.json) is packed
# too, into $OUT/state.tgz.part-00, -01, ... (parts of LOAN_PART_MIB, default 15 MiB: what comes back is at most 8
# files of 16 MiB, 64 MiB in all, so at most 5 parts beside gpu.txt and the two archives, and at most LOAN_BACK_MIB,
# default 60, of parts: 4 of 15 MiB, the rest of the 64 left to the archives). Fetch them, then
# `LOAN_STATE=<folder holding the parts> bash scripts/loan.sh prepare` puts them into .loan/state/, and the next
# loan's `run` unpacks them before its first task, so `campaign.py` resumes those runs. What travels there is the
# repository, .loan's data and the state together: at most 64 MiB.
#
#   bash scripts/loan.sh pack-state ROOT OUT     the packing alone (run calls it): ROOT's unfinished runs -> OUT
#   bash scripts/loan.sh unpack-state PARTS ROOT  the unpacking alone (run calls it with .loan/state)
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${LOAN_TMP:-/tmp}  # where `run` stages data, state and packages: a test's own folder (tests/test_loan.py)
part_mib=${LOAN_PART_MIB:-15}
back_mib=${LOAN_BACK_MIB:-60}  # MiB of parts that can come back: 64 MiB in all, less the results and logs archives
pack_state() {  # ROOT OUT: one tar.gz of ROOT's unfinished run folders, cut into parts; nothing when none is unfinished
  local root=$1 out=$2 runs=() d tmp mib
  local most=$(( back_mib / part_mib < 5 ? back_mib / part_mib : 5 ))  # 8 files in all; 64 MiB in all
  for d in "$root"/*/; do
    [ -f "$d/state.json" ] || continue
    python3 -c "import json, sys; sys.exit(json.load(open(sys.argv[1]))['finished'])" "$d/state.json" || continue
    mib=$(du -sm --exclude=notebook.py "$d" | cut -f1)
    if (( 4 * mib > 5 * most * part_mib )); then  # float checkpoints gzip by a tenth at best: not worth compressing,
      # and packed beside the others it would keep them all from coming back
      echo "warning: $(basename "$d"): $mib MiB before packing, more than the $(( most * part_mib )) MiB of parts that come back: this state cannot travel and stays here"
      continue
    fi
    runs+=("$(basename "$d")")
  done
  if [ ${#runs[@]} -eq 0 ]; then rm -f "$out"/state.tgz.part-*; return 0; fi
  tmp=$(mktemp -d)  # parts appear in OUT only once all are written: a command killed meanwhile leaves none
  local ok=1
  tar czf - -C "$root" --exclude=notebook.py "${runs[@]}" | split -b "${part_mib}M" -d -a 2 - "$tmp/state.tgz.part-" \
    || ok=0  # more parts than two-digit names: far too many anyway
  local n; n=$(ls "$tmp"/state.tgz.part-* | wc -l)
  echo "state of ${runs[*]}: $(du -ch "$tmp"/state.tgz.part-* | tail -1 | cut -f1) in $n part(s) of at most $part_mib MiB"
  if (( ok && n <= most )); then
    rm -f "$out"/state.tgz.part-* && mv "$tmp"/state.tgz.part-* "$out"/ && rmdir "$tmp"
  else  # kept out of OUT: too many bytes there could cost the records and logs that must come back
    rm -f "$out"/state.tgz.part-* && rm -rf "$tmp"
    echo "warning: $n parts: at most $most of $part_mib MiB come back (8 files and 64 MiB in all); this state cannot travel and stays here"
  fi
}
unpack_state() {  # PARTS ROOT: once per machine for the same parts, so a later command keeps the progress made since
  ls "$1"/state.tgz.part-* >/dev/null 2>&1 || return 0
  local mark; mark="$2/.unpacked-$(cat "$1"/state.tgz.part-* | sha256sum | cut -c1-16)"
  if [ -e "$mark" ]; then echo "resumable state already unpacked on this machine: $(ls "$2")"; return 0; fi
  mkdir -p "$2" && cat "$1"/state.tgz.part-* | tar xzf - -C "$2" && touch "$mark" \
    && echo "resumable state unpacked: $(ls "$2")"
}
pack_all() {  # OUT: this loan's new records, the slices' logs and the unfinished runs' state, into OUT
  # each archive replaces the last one only once whole: a command killed while packing keeps the earlier one
  find results -newer "$stage/loan_t0" -name '*.json' | tar czf "$1/.results.tgz.tmp" -T - && mv "$1/.results.tgz.tmp" "$1/results.tgz"
  (cd "$stage/loan_state" && tar czf "$1/.logs.tgz.tmp" --exclude=checkpoints --exclude=notebook.py .) \
    && mv "$1/.logs.tgz.tmp" "$1/logs.tgz"
  pack_state "$stage/loan_state" "$1"
}
case "${1:-}" in
pack-all) pack_all "${2:?the out folder}" ;;  # what `run` calls after every slice, also from campaign.py next
pack-state) pack_state "${2:?the state root folder}" "${3:?the out folder}" ;;
unpack-state) unpack_state "${2:?the parts folder}" "${3:?the state root folder}" ;;
prepare)
  src=${2:-../shared/datasets}
  grep -qx '/.loan/' .git/info/exclude 2>/dev/null || echo '/.loan/' >>.git/info/exclude
  rm -rf .loan && mkdir -p .loan/data .loan/fashion-mnist
  for f in mnist.npz tinyshakespeare.txt; do cp "$src/$f" .loan/data/; done
  [ -d "$src/planetoid" ] && cp -r "$src/planetoid" .loan/data/
  if [ "${LOAN_FASHION:-1}" = 1 ]; then  # 30 MB: LOAN_FASHION=0 leaves room for CIFAR-10 and a resumed state
    cp /usr/share/datasets/fashion-mnist/*.gz .loan/fashion-mnist/ 2>/dev/null \
      || echo "no Fashion-MNIST (apt-get install dataset-fashion-mnist): the MLP, VAE and training-deep-nets runs need it"
  fi
  if [ "${LOAN_CIFAR:-0}" = 1 ]; then cp "$src/cifar10-jpeg.tar.gz" "$src/build_cifar10_full.py" .loan/data/; fi
  # Python packages the machine lacks (it has torch, numpy, matplotlib, tqdm; no internet): the seq2seq notebook's
  # num2words (pure Python; its docopt is needed by its command-line tool only)
  python3 -m pip download -q --no-deps -d .loan/wheels "num2words==0.5.14" || echo "warning: no num2words wheel"
  if [ "${LOAN_RL:-0}" = 1 ]; then  # reinforcement_learning/dqn_ppo: gymnasium and its pure-Python dependencies, and
    # pygame (its renderer; a binary wheel for the machine's Python, 3.12 at the last loan: LOAN_PY to change it)
    python3 -m pip download -q --no-deps -d .loan/wheels "gymnasium==1.4.0" cloudpickle farama-notifications \
      || echo "warning: no gymnasium wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${LOAN_PY:-3.12}" \
      --platform manylinux2014_x86_64 -d .loan/wheels pygame || echo "warning: no pygame wheel"
  fi
  if [ -n "${LOAN_STATE:-}" ]; then  # parts fetched from an earlier loan's $OUT: the runs it left unfinished
    mkdir -p .loan/state && cp "$LOAN_STATE"/state.tgz.part-* .loan/state/ || echo "warning: no state parts in $LOAN_STATE"
  fi
  git rev-parse HEAD >.loan/commit
  # whether tracked files differ from that commit (what a record's git_dirty means): the records made there say so
  if [ -z "$(git status --porcelain --untracked-files=no)" ]; then echo false; else echo true; fi >.loan/dirty
  [ -z "$(git status --porcelain)" ] || echo "warning: uncommitted changes or untracked files travel, but the records name $(cat .loan/commit): commit first"
  tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1); loan=$(du -sb .loan | cut -f1)
  echo "travels: $(( (tree + loan) / 1048576 )) MiB of at most 64 (the repository $(( tree / 1048576 )), .loan $(( loan / 1048576 )))"
  if (( tree + loan > 64 * 1048576 )); then  # the device tool would refuse the call: say what to leave out now
    echo "error: over the 64 MiB a loan carries: LOAN_FASHION=0 leaves out Fashion-MNIST (30 MB), and a state of"
    echo "more than about 45 MiB (with the small datasets) cannot travel at all"
    exit 1
  fi
  echo "carry [\".loan\"]; command: bash scripts/loan.sh run 540 [TASK ...]  (LOAN_CIFAR=1 adds CIFAR-10, 20 MB; LOAN_RL=1 the gymnasium and pygame wheels)"
  ;;
run)
  budget=${2:?seconds}; shift 2
  end=$(( $(date +%s) + budget ))
  device=${LOAN_DEVICE:-cuda} preset=${LOAN_PRESET:-full}  # cpu and smoke: the test of this whole path on a CPU
  export LOAN_TMP=$stage  # for the pack-all that campaign.py calls after each slice
  export DL_GIT_COMMIT=$(cat .loan/commit) DL_GIT_DIRTY=$(cat .loan/dirty 2>/dev/null) PYTHONPATH=$PWD PYTHONUNBUFFERED=1
  if ls .loan/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$stage/loan_site" .loan/wheels/*.whl \
      && export PYTHONPATH=$PWD:$stage/loan_site
  fi
  out=${OUT:-$stage/loan_out}; mkdir -p "$out" "$stage/loan_state"
  unpack_state .loan/state "$stage/loan_state"
  data=$stage/loan_data; mkdir -p $data && cp -r .loan/data/. $data/
  if ls .loan/fashion-mnist/*.gz >/dev/null 2>&1; then
    mkdir -p /usr/share/datasets/fashion-mnist && cp .loan/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/
  fi
  [ -f $data/build_cifar10_full.py ] && [ ! -f $data/cifar10.npz ] && (cd $data && python3 build_cifar10_full.py .)  # once a machine
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  # the version without importing torch: a cold first import on a fresh machine takes seconds the first task needs
  python3 -c "import importlib.metadata as m; print('torch', m.version('torch'))" | tee -a "$out/gpu.txt"
  touch "$stage/loan_t0"
  if [ $# -eq 0 ]; then  # packed after every slice, so a command killed at its limit still returns what finished
    python3 scripts/campaign.py next --budget $(( end - $(date +%s) )) --root "$stage/loan_state" --data-dir $data \
      --device "$device" --after-slice "bash scripts/loan.sh pack-all $out"
    pack_all "$out"
  fi
  for task in "$@"; do
    left=$(( end - $(date +%s) ))
    need=$(python3 scripts/campaign.py need "$task" --root "$stage/loan_state")  # a tail or a whole run that cannot travel
    [ -n "$need" ] || { echo "skip $task: campaign.py need failed (see above)"; continue; }
    if (( left < need )); then echo "skip $task: $left s left, its next slice needs $need s in one command"; continue; fi
    echo "=== $task with $left s left ($(date -u +%T))"
    python3 scripts/campaign.py run "$task" --seconds $left --state "$stage/loan_state/${task//\//__}" --data-dir $data \
      --device "$device" --preset "$preset"
    pack_all "$out"
  done
  (cd "$stage/loan_state" && du -sh ./*/checkpoints 2>/dev/null)
  ;;
*) sed -n 2,24p "$0"; exit 2 ;;
esac
