"""Scoring segmentations: the DAVIS-2017 measures, folders of masks, and running a model over a split."""
