"""The data: rows to token ids and batches, the task registry, a task's splits (hub, local copies, BIG-bench), the metrics."""
