"""The pipeline both doors feed: the exchange and its stages, one module per stage."""
