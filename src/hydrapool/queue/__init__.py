"""The durable queue: jobs, tasks, workers and the coordinator over a Backend."""
