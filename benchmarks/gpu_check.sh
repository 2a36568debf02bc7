#!/bin/bash
# GPU measurements on a machine with a CUDA GPU, in stages (about 13 minutes for stages 1-4):
#   1. bench_ckd at Baby shape, every backbone, plain / teacher / student (median of 3 epochs),
#   2. bench_ckd at Clothing shape, every backbone, one timed epoch each (peak GPU memory),
#   3. bench_ckd at Elec shape, VBPR and FREEDOM students (do they train and evaluate),
#   4. the whole LATTICE_CKD pipeline at Baby shape (two teachers, the student, early stopping),
#   5. (only when asked: STAGES=5) bench_reference's side-by-side at the devset shape on the GPU
#      (ours, plain and student; add --mmrec / --ckd_reference where such a checkout is on the machine).
#   6. (only when asked: STAGES=6) a modality-balancing study's missing cells on the GPU, one after
#      another (STUDY_MODELS, default EgoGCN; STUDY_DATASET, default ml-100k-mm; STUDY_SECONDS,
#      default 480; for a generated dataset run --generate=<name> first, e.g. STUDY_DATASET=synth-baby
#      STUDY_MODELS=VBPR,LATTICE,EgoGCN): the cells already in results/ are reused, each cell that
#      finishes in time is packed into $OUT/gpu_check-6-cells.tar; unpack it with
#      tar -xf gpu_check-6-cells.tar -C results.
# Run it in the repository root, e.g. STAGES='1 2 4' bash benchmarks/gpu_check.sh (stages 1, 2 and 4
# take under 10 minutes). Where the GPU machine's Python lacks RecBole, fetch the wheels first with
# bash benchmarks/device_wheels.sh and copy .whl/ along with the checkout: they are installed into
# benchmarks/.data/site. Each stage has its own time limit (generating the data included), so the
# ones before it always report; a stopped stage 4 resumes from its checkpoints (in benchmarks/.data)
# when run again. Results (JSON, markdown, logs) go to $OUT, else benchmarks/results.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
STAGES=${STAGES:-1 2 3 4}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target benchmarks/.data/site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD/benchmarks/.data/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_check-machine.txt"
bench() { timeout "$1" python3 benchmarks/bench_ckd.py --device cuda --output "$OUT" "${@:2}"; }
for stage in $STAGES; do
    case $stage in
        1) bench 180 --shape baby --repeats 3 2>&1 | grep -v Warning > "$OUT/gpu_check-1-baby.log" ;;
        2) bench 150 --shape clothing --repeats 1 2>&1 | grep -v Warning > "$OUT/gpu_check-2-clothing.log" ;;
        3) bench 200 --shape elec --repeats 1 --models VBPR,FREEDOM --parts student 2>&1 | grep -v Warning > "$OUT/gpu_check-3-elec.log" ;;
        4) python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import bench_ckd; bench_ckd.dataset_for('baby', 1.0, 'benchmarks/.data', 2024)"
           { time timeout 240 python3 run_recbole_ckd.py --model=LATTICE_CKD --dataset=baby-x1-s2024 \
                 --data_path=benchmarks/.data --checkpoint_dir=benchmarks/.data/saved --show_progress=False ; } \
               > "$OUT/gpu_check-4-lattice-pipeline.log" 2>&1 ;;
        5) timeout 150 python3 benchmarks/bench_reference.py --device cuda --shape devset --repeats 5 --evals 3 \
               --output "$OUT" 2>&1 | grep -v Warning > "$OUT/gpu_check-5-side-by-side.log" ;;
        6) study_dataset=${STUDY_DATASET:-ml-100k-mm}
           study=benchmarks/.data/study
           rm -rf "$study" && mkdir -p "$study" && cp -r "results/$study_dataset" "$study/" && touch "$study.started"
           timeout "${STUDY_SECONDS:-480}" python3 run_recbole_ckd.py --leaderboard --study=balancing \
                 --dataset="$study_dataset" --models="${STUDY_MODELS:-EgoGCN}" --output="$study" \
                 --checkpoint_dir=benchmarks/.data/saved --show_progress=False 2>&1 | grep -v Warning > "$OUT/gpu_check-6-study.log"
           (cd "$study" && find "$study_dataset/cells" -name '*.json' -newer ../study.started -print0) \
               | tar -C "$study" -cf "$OUT/gpu_check-6-cells.tar" --null -T - ;;
    esac
    echo "stage $stage: exit $?"; tail -25 "$OUT"/gpu_check-"$stage"-*.log
done
