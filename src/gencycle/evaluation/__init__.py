"""Evaluation: metrics (ROUGE, BLEU, chrF, perplexity) and comparison reports."""

from gencycle.evaluation.metrics import bleu, chrf, perplexity, rouge, split_sentences, text_scores
from gencycle.evaluation.report import (
    Section, Table, VariantResult, plot_scores, scores_section, scores_table, side_by_side_section,
    write_comparison, write_report,
)

__all__ = ["bleu", "chrf", "perplexity", "rouge", "split_sentences", "text_scores",
           "Section", "Table", "VariantResult", "plot_scores", "scores_section", "scores_table",
           "side_by_side_section", "write_comparison", "write_report"]
