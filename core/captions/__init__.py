"""Captions made by local models, kept in a caption layer outside the dataset.

Torch-free: ``layer`` (the store), ``captioners`` (the choice of captioner), ``stats`` (what the
wizard shows), ``job`` (the work of ``sdtui caption``); ``runtime`` loads and runs a captioner and
is imported only in the captioning process.
"""
