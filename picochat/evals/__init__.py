"""Evaluations. bpb.py: validation bits per byte, the tokenizer-independent loss every stage reports."""
