#!/usr/bin/env bash
# sftune on several machines: run this on every node (here: a SLURM batch script, one task per node).
#   sbatch examples/accelerate/multinode.sh CONFIG.yaml
#SBATCH --job-name=sftune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
set -euo pipefail
CONFIG="${1:?give the sftune config, e.g. examples/lora.yaml}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-examples/accelerate/fsdp2_full.yaml}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT="${MASTER_PORT:-29500}"
# One launcher per node; each starts GPUS_PER_NODE processes. The encoded-data cache ($SFTUNE_HOME) may be on
# a shared disk: the first process of each node takes its lock, one encodes, the others read it.
srun --ntasks-per-node=1 bash -c "accelerate launch --config_file $ACCELERATE_CONFIG \
    --num_machines $SLURM_NNODES --machine_rank \$SLURM_NODEID --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
    -m sftune train $CONFIG"
# The same with torchrun (DDP, or FSDP/DeepSpeed through sftune's own accelerate config in the environment):
#   torchrun --nnodes 2 --node_rank \$SLURM_NODEID --nproc_per_node 8 --master_addr $MASTER_ADDR \
#            --master_port $MASTER_PORT -m sftune train CONFIG.yaml
