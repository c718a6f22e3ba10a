"""Prefect flows: thin wiring of the stages in ldm_batch."""
