"""Agents: their declarations (registry), prompts, tools, guardrails and the checks on a run."""
