"""The compute-node runtime: job start, the stop protocol, the ranks' agreement."""
