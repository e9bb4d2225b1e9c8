"""Evaluations. bpb.py: validation bits per byte, the tokenizer-independent loss every stage reports.
core.py (`picochat eval base`) and chat.py (`picochat eval chat`) write evals/<stage>_<kind>.json, which
records what it was made from, so `--if-needed` (rerun.py) can skip an eval whose checkpoint and settings
are unchanged.
"""
