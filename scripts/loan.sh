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
#                                             (TASK@SEED: another seed, DL_SEED, for a notebook that reads it; its
#                                             state folder and results/TASK/seed_SEED/ are its own)
#
# After each task the new records (results/), the slices' logs and state.json are packed into $OUT/results.tgz and
# $OUT/logs.tgz, so a command stopped at its limit still returns what finished. Unpack results.tgz in the
# repository root, commit the records unedited, run scripts/update_readme.py.
#
# Runs that outlast a loan: every unfinished run's state folder (checkpoints, kept side runs, state.json) is packed
# too, into parts of LOAN_PART_MIB (default 15) MiB with a state.manifest (their number and checksum). What comes
# back from one command is at most 8 files of 16 MiB, 64 MiB in all, so each command returns the manifest and at most
# 4 parts (LOAN_BACK_MIB, default 60, of parts) beside the two archives; a bigger state stays packed on
# the machine, and each further call `bash scripts/loan.sh send-back K` (no carry, on the still-warm machine) returns
# the manifest and parts K to K+3. Then `LOAN_STATE=<the calls' folders, colon-separated> bash
# scripts/loan.sh prepare`: it checks the parts against the manifest and spreads them over .loan/state/ and, when
# they do not fit beside the repository and the data in the 64 MiB one call carries, over .loan_in/1/, .loan_in/2/,
# ...; it prints the calls: first one `bash scripts/loan.sh take .loan_in/K` per folder (carrying it), then `run`,
# whose unpacking gathers the parts from .loan/state and the taken ones and refuses (exit 3, before any training)
# while any is missing, so `campaign.py` resumes those runs, never starts them again. Each extra call costs about
# 10 s of the loan (measured 2026-11-29: 9 s between two calls on a warm H200, 49 MiB carried). LOAN_MAX_PARTS
# (default 16, 240 MiB) caps the parts of all runs together: a run that does not fit beside the others stays where
# it is, with a warning naming it.
#
#   bash scripts/loan.sh pack-state ROOT OUT     the packing alone (run calls it): ROOT's unfinished runs -> OUT
#   bash scripts/loan.sh send-back K [ROOT OUT]  parts K to K+3 of ROOT's last packing (default: run's) -> OUT
#   bash scripts/loan.sh take DIR                 parts carried in DIR, kept on this machine for the next `run`
#   bash scripts/loan.sh unpack-state PARTS ROOT [MORE...]  the unpacking alone (run calls it with .loan/state and
#                                             the taken parts)
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${LOAN_TMP:-/tmp}  # where `run` stages data, state and packages: a test's own folder (tests/test_loan.py)
part_mib=${LOAN_PART_MIB:-15}
back_mib=${LOAN_BACK_MIB:-60}  # MiB of parts that can come back: 64 MiB in all, less the results and logs archives
max_parts=${LOAN_MAX_PARTS:-16}  # the most parts a state may take: 4 come back with the command, 4 more a send-back
carry_mib=${LOAN_CARRY_MIB:-63}  # what `prepare` lets one call carry, the repository included: 64 MiB, 1 to spare
most_back() { echo $(( back_mib / part_mib < 4 ? back_mib / part_mib : 4 )); }  # 8 files: 4 besides the parts
(( back_mib >= part_mib )) || { echo "error: LOAN_PART_MIB=$part_mib is over LOAN_BACK_MIB=$back_mib: no part could come back"; exit 2; }
pack_state() {  # ROOT OUT: one tar.gz of ROOT's unfinished run folders, cut into parts kept in ROOT/.parts (on this
  # machine, for send-back) with their manifest; the first parts go into OUT. Nothing when none is unfinished.
  local root=$1 out=$2 runs=() d tmp mib total=0 man=$1/.parts/state.manifest changed=0
  rm -rf "$root"/.parts-new.*  # a packing killed part-way
  for d in "$root"/*/; do  # runs are added while, unpacked, they fit the cap: float checkpoints gzip by a tenth at
    # best, so counting on gzip could accept runs whose parts then exceed the cap, and none of them would travel
    [ -f "$d/state.json" ] || continue
    python3 -c "import json, sys; sys.exit(json.load(open(sys.argv[1]))['finished'])" "$d/state.json" || continue
    mib=$(du -sm --exclude=notebook.py "$d" | cut -f1)
    if (( total + mib > max_parts * part_mib )); then
      echo "warning: $(basename "$d"): $mib MiB before packing, beside $total MiB of other runs, more than the $(( max_parts * part_mib )) MiB of parts (LOAN_MAX_PARTS) that travel: this run's state stays on this machine"
      continue
    fi
    total=$(( total + mib )); runs+=("$(basename "$d")")
    [ -f "$man" ] && [ -z "$(find "$d" -newer "$man" -print -quit)" ] || changed=1
  done
  if [ ${#runs[@]} -eq 0 ]; then rm -rf "$out"/state.tgz.part-* "$out/state.manifest" "$root/.parts"; return 0; fi
  if (( !changed )) && [ "$(awk '$1 == "runs" {$1 = ""; print substr($0, 2)}' "$man")" = "${runs[*]}" ]; then
    send_back 0 "$root" "$out"; return  # nothing changed since the last packing: the same parts again
  fi
  tmp=$(mktemp -d "$root/.parts-new.XXXXXX")
  local ok=1
  tar cf - -C "$root" --exclude=notebook.py "${runs[@]}" | gzip -1 | split -b "${part_mib}M" -d -a 2 - "$tmp/state.tgz.part-" \
    || ok=0  # more parts than two-digit names: far too many anyway
  local n; n=$(ls "$tmp"/state.tgz.part-* | wc -l)
  echo "state of ${runs[*]}: $(du -ch "$tmp"/state.tgz.part-* | tail -1 | cut -f1) in $n part(s) of at most $part_mib MiB"
  if (( ok && n <= max_parts )); then
    printf 'parts %d\nsha256 %s\nruns %s\n' "$n" "$(cat "$tmp"/state.tgz.part-* | sha256sum | cut -d' ' -f1)" \
      "${runs[*]}" >"$tmp/state.manifest"
    rm -rf "$root/.parts" && mv "$tmp" "$root/.parts" && send_back 0 "$root" "$out"
  else  # kept out of OUT: too many bytes there could cost the records and logs that must come back
    rm -rf "$tmp"
    echo "warning: $n parts, more than LOAN_MAX_PARTS=$max_parts: the state of ${runs[*]} stays on this machine"
  fi
}
send_back() {  # K ROOT OUT: the manifest and parts K to K+3 of ROOT's last packing into OUT (the manifest last:
  # parts without it are refused by `prepare`, so a command killed while copying cannot pass off a mixed set)
  local first=$1 root=$2 out=$3 k n most; most=$(most_back)
  [ -f "$root/.parts/state.manifest" ] || { echo "error: no packed state in $root/.parts on this machine"; return 1; }
  n=$(awk '$1 == "parts" {print $2}' "$root/.parts/state.manifest")
  rm -f "$out"/state.tgz.part-* "$out/state.manifest"
  for (( k = first; k < first + most && k < n; k++ )); do
    cp "$root/.parts/state.tgz.part-$(printf %02d $k)" "$out/" || return 1
  done
  cp "$root/.parts/state.manifest" "$out/" || return 1
  echo "state parts $first to $(( k - 1 )) of 0 to $(( n - 1 )) in $out"
  if (( k < n )); then
    local calls="" j
    for (( j = k; j < n; j += most )); do calls+=" [bash scripts/loan.sh send-back $j]"; done
    echo "MORE STATE: fetch it now, on this warm machine, one call each, no carry:$calls"
  fi
}
take() {  # DIR: parts carried in DIR (a .loan_in/K of `prepare`), kept on this machine for the next `run`
  ls "$1"/state.tgz.part-* >/dev/null 2>&1 || { echo "error: no state parts in $1"; return 1; }
  mkdir -p "$stage/loan_incoming" && cp "$1"/state.tgz.part-* "$1"/state.manifest "$stage/loan_incoming/" \
    && echo "this machine holds $(ls "$stage/loan_incoming"/state.tgz.part-* | wc -l) taken state part(s): $(cd "$stage/loan_incoming" && ls state.tgz.part-* | tr '\n' ' ')"
}
state_parts() {  # DIR...: print the paths of the parts the manifest in those folders lists, in order; fail, saying
  # which are missing or whether the checksum differs, unless all are there. Nothing when no folder holds a part.
  local man="" d k n sha p name found=() missing=()
  for d in "$@"; do [ -f "$d/state.manifest" ] && { man=$d/state.manifest; break; }; done
  for d in "$@"; do  # every call returns the manifest: one that differs is of another packing
    if [ -f "$d/state.manifest" ] && ! cmp -s "$d/state.manifest" "$man"; then
      echo "error: $d/state.manifest differs from $man: the parts come from two packings (a command killed while packing, or another loan's)" >&2
      return 1
    fi
  done
  if [ -z "$man" ]; then
    for d in "$@"; do ls "$d"/state.tgz.part-* >/dev/null 2>&1 && { echo "error: state parts in $d without their state.manifest" >&2; return 1; }; done
    return 0
  fi
  n=$(awk '$1 == "parts" {print $2}' "$man"); sha=$(awk '$1 == "sha256" {print $2}' "$man")
  for (( k = 0; k < n; k++ )); do
    p="" name=state.tgz.part-$(printf %02d $k)
    for d in "$@"; do [ -f "$d/$name" ] && { p=$d/$name; break; }; done
    if [ -n "$p" ]; then found+=("$p"); else missing+=("${name#state.tgz.part-}"); fi
  done
  if (( ${#missing[@]} )); then echo "error: state parts missing: ${missing[*]} (of $n, manifest $man)" >&2; return 1; fi
  [ "$(cat "${found[@]}" | sha256sum | cut -d' ' -f1)" = "$sha" ] || { echo "error: the state parts differ from their manifest $man" >&2; return 1; }
  printf '%s\n' "${found[@]}"
}
unpack_state() {  # PARTS ROOT [MORE...]: once per machine for the same parts, so a later command keeps the progress
  # made since; fails (nothing unpacked) while a part the manifest lists is missing
  local root=$2 list mark; list=$(state_parts "$1" "${@:3}") || return 1
  [ -n "$list" ] || return 0
  # the parts' checksum, as state_parts just checked it (each folder of parts holds the manifest): not hashed again
  mark="$root/.unpacked-$(awk '$1 == "sha256" {print substr($2, 1, 16)}' "$(dirname "${list%%$'\n'*}")/state.manifest")"
  if [ -e "$mark" ]; then echo "resumable state already unpacked on this machine: $(ls "$root")"; return 0; fi
  mkdir -p "$root" && cat $list | tar xzf - -C "$root" && touch "$mark" && echo "resumable state unpacked: $(ls "$root")"
}
pack_all() {  # OUT: this loan's new records, the slices' logs and the unfinished runs' state, into OUT
  # each archive replaces the last one only once whole: a command killed while packing keeps the earlier one
  find results -newer "$stage/loan_t0" -name '*.json' | tar czf "$1/.results.tgz.tmp" -T - && mv "$1/.results.tgz.tmp" "$1/results.tgz"
  (cd "$stage/loan_state" && tar czf "$1/.logs.tgz.tmp" --exclude=checkpoints --exclude=notebook.py --exclude='./.parts*' .) \
    && mv "$1/.logs.tgz.tmp" "$1/logs.tgz"
  pack_state "$stage/loan_state" "$1"
}
case "${1:-}" in
pack-all) pack_all "${2:?the out folder}" ;;  # what `run` calls after every slice, also from campaign.py next
pack-state) pack_state "${2:?the state root folder}" "${3:?the out folder}" ;;
send-back) send_back "${2:?the number of the first part}" "${3:-$stage/loan_state}" "${4:-${OUT:?the out folder}}" ;;
take) take "${2:?the folder of carried parts}" ;;
unpack-state) unpack_state "${2:?the parts folder}" "${3:?the state root folder}" "${@:4}" ;;
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
  rm -rf .loan_in
  grep -qx '/.loan_in/' .git/info/exclude || echo '/.loan_in/' >>.git/info/exclude
  parts=""
  if [ -n "${LOAN_STATE:-}" ]; then  # parts fetched from an earlier loan's $OUT (and send-backs): its unfinished runs
    IFS=: read -ra state_dirs <<<"$LOAN_STATE"  # one folder, or several (each call's files_at), colon-separated
    parts=$(state_parts "${state_dirs[@]}") || exit 1
    [ -n "$parts" ] || { echo "error: no state parts in $LOAN_STATE"; exit 1; }
    manifest=$(for d in "${state_dirs[@]}"; do [ -f "$d/state.manifest" ] && echo "$d/state.manifest"; done | head -1)
  fi
  git rev-parse HEAD >.loan/commit
  # whether tracked files differ from that commit (what a record's git_dirty means): the records made there say so
  if [ -z "$(git status --porcelain --untracked-files=no)" ]; then echo false; else echo true; fi >.loan/dirty
  [ -z "$(git status --porcelain)" ] || echo "warning: uncommitted changes or untracked files travel, but the records name $(cat .loan/commit): commit first"
  tree=$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1); loan=$(du -sb .loan | cut -f1)  # untracked files travel too
  if (( tree + loan > carry_mib * 1048576 )); then  # the device tool would refuse the call: say what to leave out now
    echo "error: the repository ($(( tree / 1048576 )) MiB) and .loan ($(( loan / 1048576 )) MiB) are over the 64 MiB one call carries: LOAN_FASHION=0 leaves out Fashion-MNIST (30 MB)"
    exit 1
  fi
  # the state's parts: into .loan/state while they fit beside the repository and the data (1 MiB to spare), the rest
  # into .loan_in/1, 2, ..., each carried by a call of its own before `run`
  room=$(( carry_mib * 1048576 - tree - loan )); batch=0
  if [ -n "$parts" ]; then
    mkdir -p .loan/state && cp "$manifest" .loan/state/
    for p in $parts; do
      size=$(stat -c %s "$p")
      if (( size > carry_mib * 1048576 - tree )); then echo "error: $p alone is too big for one call"; exit 1; fi
      if (( size > room )); then
        batch=$(( batch + 1 )) room=$(( carry_mib * 1048576 - tree ))
        mkdir -p .loan_in/$batch && cp "$manifest" .loan_in/$batch/
      fi
      cp "$p" "$( (( batch )) && echo .loan_in/$batch || echo .loan/state)/" && room=$(( room - size ))
    done
  fi
  loan=$(du -sb .loan | cut -f1)
  echo "travels: $(( (tree + loan) / 1048576 )) MiB of at most 64 (the repository $(( tree / 1048576 )), .loan $(( loan / 1048576 )))"
  if (( batch )); then
    echo "the state takes $batch more call(s) before run, on one warm machine (each about 10 s; the machine goes back 30 s after a call):"
    for (( k = 1; k <= batch; k++ )); do
      echo "  carry [\".loan_in/$k\"]; command: bash scripts/loan.sh take .loan_in/$k   ($(du -sm .loan_in/$k | cut -f1) MiB)"
    done
  fi
  echo "carry [\".loan\"]; command: bash scripts/loan.sh run 540 [TASK ...]  (LOAN_CIFAR=1 adds CIFAR-10, 20 MB; LOAN_RL=1 the gymnasium and pygame wheels)"
  ;;
run)
  budget=${2:?seconds}; shift 2
  end=$(( $(date +%s) + budget ))
  device=${LOAN_DEVICE:-cuda} preset=${LOAN_PRESET:-full}  # cpu and smoke: the test of this whole path on a CPU
  export LOAN_TMP=$stage  # for the pack-all that campaign.py calls after each slice
  export DL_GIT_COMMIT=$(cat .loan/commit) DL_GIT_DIRTY=$(cat .loan/dirty 2>/dev/null) PYTHONPATH=$PWD PYTHONUNBUFFERED=1
  if ls .loan/wheels/*.whl >/dev/null 2>&1; then  # one by one: a wheel for another Python must not keep out the rest
    for wheel in .loan/wheels/*.whl; do
      python3 -m pip install -q --no-index --no-deps --no-compile --target "$stage/loan_site" "$wheel" \
        || echo "warning: $(basename "$wheel") does not install here: the tasks that need it are passed over"
    done
    export PYTHONPATH=$PWD:$stage/loan_site
  fi
  out=${OUT:-$stage/loan_out}; mkdir -p "$out" "$stage/loan_state"
  unpack_state .loan/state "$stage/loan_state" "$stage/loan_incoming" \
    || { echo "error: not all state parts are here: carry the missing ones in with take, then run again"; exit 3; }
  data=$stage/loan_data; mkdir -p $data && cp -r .loan/data/. $data/
  if ls .loan/fashion-mnist/*.gz >/dev/null 2>&1; then
    mkdir -p /usr/share/datasets/fashion-mnist && cp .loan/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/
  fi
  [ -f $data/build_cifar10_full.py ] && [ ! -f $data/cifar10.npz ] && (cd $data && python3 build_cifar10_full.py .)  # once a machine
  # gpu.txt travels back inside logs.tgz: beside the two archives, the manifest, 4 parts and an archive's temporary
  # file while it is written, a file of its own would be a ninth
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$stage/loan_state/gpu.txt"
  # the version without importing torch: a cold first import on a fresh machine takes seconds the first task needs
  python3 -c "import importlib.metadata as m; print('torch', m.version('torch'))" | tee -a "$stage/loan_state/gpu.txt"
  touch "$stage/loan_t0"
  if [ $# -eq 0 ]; then  # packed after every slice, so a command killed at its limit still returns what finished
    python3 scripts/campaign.py next --budget $(( end - $(date +%s) )) --root "$stage/loan_state" --data-dir $data \
      --device "$device" --after-slice "bash scripts/loan.sh pack-all $out"
    pack_all "$out"
  fi
  for spec in "$@"; do  # TASK, or TASK@SEED for another seed (DL_SEED; its own state folder and results/TASK/seed_SEED/)
    task=${spec%@*} seed=""
    [[ $spec == *@* ]] && seed=${spec#*@}
    if [ -n "$seed" ]; then  # as campaign.py reads it (int), so both name the same state folder: 02 is 2
      [[ $seed =~ ^[0-9]+$ ]] || { echo "skip $spec: the seed is not a whole number"; continue; }
      seed=$(( 10#$seed ))
    fi
    left=$(( end - $(date +%s) ))
    need=$(DL_SEED=$seed python3 scripts/campaign.py need "$task" --root "$stage/loan_state")  # a tail or a whole run that cannot travel
    [ -n "$need" ] || { echo "skip $spec: campaign.py need failed (see above)"; continue; }
    if (( left < need )); then echo "skip $spec: $left s left, its next slice needs $need s in one command"; continue; fi
    echo "=== $spec with $left s left ($(date -u +%T))"
    DL_SEED=$seed python3 scripts/campaign.py run "$task" --seconds $left --data-dir $data --device "$device" \
      --preset "$preset" --state "$stage/loan_state/${task//\//__}${seed:+__seed_$seed}"
    pack_all "$out"
  done
  (cd "$stage/loan_state" && du -sh ./*/checkpoints 2>/dev/null) || true  # the status says nothing: read the lines
  ;;
*) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 2 ;;
esac
