"""`make demo` and the local harness the tests and benchmarks share: local S3 servers on
127.0.0.1 (stores.py), systemd's notify socket (systemd.py), a batch job's output at scale
(batch.py). Not shipped: the wheel holds only `agent` and `issuer`."""
