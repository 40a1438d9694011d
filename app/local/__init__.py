"""The embedded stack for the demo, tests and benchmarks: Redis, a CPU Triton server and worker
processes, each started and stopped by PID."""
