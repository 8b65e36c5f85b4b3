"""What runs on a compute node: the job environment, the preemption protocol, the jobs submitit runs."""
