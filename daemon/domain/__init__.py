"""Domain: the daemon's data types and ids (results, specimens, model manifests); no I/O but files, no Redis."""
