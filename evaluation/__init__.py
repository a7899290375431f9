"""Evaluation parts behind evaluate.py: decoding, the metrics (CIDEr-D, BLEU-4, VQA accuracy)
and the diagnostics that check each box of Figure 2 has the ability the method relies on.
"""
