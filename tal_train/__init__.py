"""tal_train: training side of tal-reid (datasets, synthetic generator, TAL model, training engine)."""
