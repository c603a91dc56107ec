"""Models: the LST (patch encoder, global transformer, patch decoder) and the interleaved baseline."""
