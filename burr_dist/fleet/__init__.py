"""The fleet: its sans-IO calls, the client that enqueues and inspects apps, the registry, key migration."""
