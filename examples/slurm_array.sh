#!/usr/bin/env bash
# A heldout experiment as a Slurm job array: 20 tasks share 1000 runs of CIFAR-10
# SmallInception, all writing into one shared directory (gs:// or a network mount).
#
#   sbatch examples/slurm_array.sh
#
# Each task trains the run ids of its shard (ids i, i+20, i+40, ...): train.py reads
# SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT itself. A preempted or failed task
# can simply be resubmitted: complete runs are skipped, claims of dead workers expire
# (--lease_seconds), and a run is complete only once its aux_arrays.npz is in place.
#SBATCH --job-name=heldout
#SBATCH --array=0-19
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=logs/heldout-%A_%a.out
set -euo pipefail

EXPERIMENT_DIR="${EXPERIMENT_DIR:-gs://my-bucket/heldout/cifar10-inception}"

python train.py \
  --experiment_dir="$EXPERIMENT_DIR" \
  --dataset=tfds:cifar10:3.0.2 \
  --model=small_inception --augment=crop_flip \
  --epochs=60 --batch_size=128 --learning_rate=0.1 --weight_decay=5e-4 \
  --subset_ratio=0.7 --num_runs=1000 \
  --save_checkpoints \
  --progress=false

# When every task has finished (e.g. a dependent job: sbatch --dependency=afterok:<id>):
#   python estimate.py --experiment_dir="$EXPERIMENT_DIR" --estimator=all \
#       --influence_output=topk --plot_dir=plots
