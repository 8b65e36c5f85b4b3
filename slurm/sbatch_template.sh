#!/bin/bash
# Plain sbatch script for zoobot-hpc, for users who do not want submitit (`zoobot-hpc submit` does all this for you).
#
#   sbatch slurm/sbatch_template.sh configs/my_run.yaml [dotted.overrides=...]
#
# Edit the #SBATCH lines for your cluster. Rules that must hold:
#   * one SLURM task per GPU: --ntasks-per-node == --gpus-per-node == the config's resources.gpus_per_node,
#     and --nodes == resources.nodes (Lightning reads the world size from SLURM and never spawns processes);
#   * --signal=USR2@120 (no "B:"): SLURM sends USR2 to every task of the srun step 120-150 s before the time
#     limit (slurmctld checks limits every 30 s); `zoobot-hpc train` then checkpoints on all ranks and requeues the
#     job itself (`scontrol requeue`), and the requeued job resumes from that checkpoint. Keep the margin larger
#     than the time one checkpoint takes to write;
#   * --requeue allows the requeue; --open-mode=append keeps the log of every restart in one file.
#
#SBATCH --job-name=zoobot-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# Site-specific: uncomment and fill in as your cluster requires.
##SBATCH --partition=gpu
##SBATCH --account=my-account
##SBATCH --qos=normal
##SBATCH --constraint=a100
set -euo pipefail

CONFIG=${1:?usage: sbatch slurm/sbatch_template.sh CONFIG.yaml [overrides...]}
shift

# Environment set-up: edit to activate your environment (module load ..., source venv/bin/activate, ...).
# Compute nodes are often offline: encoder weights were cached on the login node by `zoobot-hpc submit --dry-run`
# or a first `huggingface-cli download`, and W&B logs offline (upload later with `zoobot-hpc sync`).
export HF_HUB_OFFLINE=1
export WANDB_MODE=${WANDB_MODE:-offline}

echo "job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST}: zoobot-hpc train ${CONFIG} $*"

# --kill-on-bad-exit=1: a rank that crashes ends the whole step at once instead of leaving the others in a hang.
srun --kill-on-bad-exit=1 zoobot-hpc train "$CONFIG" "$@"
