"""What a fleet reports: Prometheus metrics, JSON logs, Burr tracking records, history sinks."""
