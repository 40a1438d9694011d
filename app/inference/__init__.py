"""Inference: the backend protocol, Triton and OpenAI-compatible clients, the replica pool with
its strategies, queue-depth parsing and circuit breakers, and the pools built from settings."""
