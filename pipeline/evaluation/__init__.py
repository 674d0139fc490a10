"""Scoring captions: the COCO metrics, attention correctness, diversity, trivial baselines and figures."""
