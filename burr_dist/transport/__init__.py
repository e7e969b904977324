"""Commands reaching Redis: URLs, connections, batches with retries and WAIT; knows nothing of Burr."""
