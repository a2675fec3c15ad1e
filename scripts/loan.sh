#!/usr/bin/env bash
# The `full` campaign on a GPU machine lent for minutes (CONTRIBUTING.md, "The `full` campaign"), in two halves:
#
#   bash scripts/loan.sh prepare [DATASETS]   here, before the loan: fills the git-ignored folder .loan/ (listed in
#                                             .git/info/exclude) with the offline data and this commit's id;
#                                             DATASETS defaults to ../shared/datasets
#   bash scripts/loan.sh run SECONDS [TASK...] there, in one command that carries .loan/: stages the data, then
#                                             spends SECONDS on the named tasks in order (each `campaign.py run`
#                                             with the seconds left, skipping a task whose shortest useful slice
#                                             no longer fits), or on `campaign.py next` when no task is named
#
# After each task the new records (results/), the slices' logs and state.json (no checkpoints) are packed into
# $OUT/results.tgz and $OUT/logs.tgz, so a command stopped at its limit still returns what finished. Unpack
# results.tgz in the repository root, commit the records unedited, run scripts/update_readme.py.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  src=${2:-../shared/datasets}
  grep -qx '/.loan/' .git/info/exclude 2>/dev/null || echo '/.loan/' >>.git/info/exclude
  rm -rf .loan && mkdir -p .loan/data .loan/fashion-mnist
  for f in mnist.npz tinyshakespeare.txt; do cp "$src/$f" .loan/data/; done
  [ -d "$src/planetoid" ] && cp -r "$src/planetoid" .loan/data/
  cp /usr/share/datasets/fashion-mnist/*.gz .loan/fashion-mnist/ 2>/dev/null \
    || echo "no Fashion-MNIST (apt-get install dataset-fashion-mnist): the MLP, VAE and training-deep-nets runs need it"
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
  git rev-parse HEAD >.loan/commit
  [ -z "$(git status --porcelain --untracked-files=no)" ] || echo "warning: uncommitted changes travel but the records name $(cat .loan/commit)"
  du -sh .loan; echo "carry [\".loan\"]; command: bash scripts/loan.sh run 540 [TASK ...]  (LOAN_CIFAR=1 adds CIFAR-10, 20 MB; LOAN_RL=1 the gymnasium and pygame wheels)"
  ;;
run)
  budget=${2:?seconds}; shift 2
  end=$(( $(date +%s) + budget ))
  export DL_GIT_COMMIT=$(cat .loan/commit) PYTHONPATH=$PWD PYTHONUNBUFFERED=1
  if ls .loan/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/loan_site .loan/wheels/*.whl \
      && export PYTHONPATH=$PWD:/tmp/loan_site
  fi
  out=${OUT:-/tmp/loan_out}; mkdir -p "$out" /tmp/loan_state
  data=/tmp/loan_data; mkdir -p $data && cp -r .loan/data/. $data/
  if ls .loan/fashion-mnist/*.gz >/dev/null 2>&1; then
    mkdir -p /usr/share/datasets/fashion-mnist && cp .loan/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/
  fi
  [ -f $data/build_cifar10_full.py ] && (cd $data && python3 build_cifar10_full.py .)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
  touch /tmp/loan_t0
  pack() {
    find results -newer /tmp/loan_t0 -name '*.json' | tar czf "$out/results.tgz" -T -
    (cd /tmp/loan_state && tar czf "$out/logs.tgz" --exclude=checkpoints --exclude=notebook.py .)
  }
  if [ $# -eq 0 ]; then
    python3 scripts/campaign.py next --budget $(( end - $(date +%s) )) --root /tmp/loan_state --data-dir $data
    pack
  fi
  for task in "$@"; do
    left=$(( end - $(date +%s) ))
    need=$(python3 -c "import sys, tomllib; print(int(60 * tomllib.load(open('scripts/campaign.toml', 'rb'))['task'][sys.argv[1]]['min_slice_minutes']))" "$task")
    if (( left < need )); then echo "skip $task: $left s left, its shortest useful slice is $need s"; continue; fi
    echo "=== $task with $left s left ($(date -u +%T))"
    python3 scripts/campaign.py run "$task" --seconds $left --state "/tmp/loan_state/${task//\//__}" --data-dir $data
    pack
  done
  (cd /tmp/loan_state && du -sh ./*/checkpoints 2>/dev/null)
  ;;
*) sed -n 2,16p "$0"; exit 2 ;;
esac
