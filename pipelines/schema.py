"""Shared vocabulary of the data contracts: the failure taxonomy of DESIGN.md.

| label                                                 | fix                | becomes                          |
| missing_knowledge, stale_knowledge, wrong_retrieval    | retrieval / KB     | a RAG backlog entry, never data  |
| bad_format, wrong_tone, policy_violation,              | behaviour          | a training example (needs an     |
| missing_citation                                      |                    | ideal answer)                    |
| hallucination, answer in the context                  | grounding          | a training example               |
| hallucination, answer not in the context              | both               | "I don't know" example + backlog |
| weak_reasoning                                        | stronger model     | reported, not trained on         |
"""

KNOWLEDGE_LABELS = ("missing_knowledge", "stale_knowledge", "wrong_retrieval")
BEHAVIOUR_LABELS = ("bad_format", "wrong_tone", "policy_violation", "missing_citation")
HALLUCINATION = "hallucination"
WEAK_REASONING = "weak_reasoning"
TAXONOMY_LABELS = frozenset(KNOWLEDGE_LABELS + BEHAVIOUR_LABELS + (HALLUCINATION, WEAK_REASONING))
