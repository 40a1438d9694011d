"""Kubernetes and KEDA manifests generated from the agent registry (``agentq manifests``).

Pure functions build each object as a dict (``objects``: shared parts; ``services``:
configuration, the run API, exporter, Flower; ``workers``: per agent type; ``triton``: the
GPU side); ``manifests`` lays them out in files under ``keda/``, renders them and reports drift;
``autoscale`` models the decisions KEDA and the HPA take on those objects.
"""
