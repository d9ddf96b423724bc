"""The failure taxonomy now lives in pipelines/routing.py; this name stays for config.py."""

from pipelines.routing import BEHAVIOUR_LABELS, HALLUCINATION, KNOWLEDGE_LABELS, TAXONOMY_LABELS, WEAK_REASONING

__all__ = ["BEHAVIOUR_LABELS", "HALLUCINATION", "KNOWLEDGE_LABELS", "TAXONOMY_LABELS", "WEAK_REASONING"]
