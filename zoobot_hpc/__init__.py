"""zoobot-hpc: finetune Zoobot-style galaxy-morphology models at scale on SLURM."""

__version__ = "0.1.0"
