"""Evaluation of a model on simulated frames: matching, metrics, Cramer-Rao bound, report."""

from engines.evaluate.matching import Matching, jaccard, match_localizations

__all__ = ["Matching", "jaccard", "match_localizations"]
