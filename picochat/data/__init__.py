"""Pretraining data: the shard format (shards.py), FineWeb download (download.py), the offline corpus
(offline.py), `picochat data prepare` (prepare.py) and the tokenizing loader (loader.py)."""
