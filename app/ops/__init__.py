"""Operations: health endpoints, metrics and the exporter, Flower, logs, tracing, masking, and
the factory of every Redis client."""
