"""The offline demo corpus: real text from the gensim wheel, speech synthesised with espeak-ng,
units from a log-mel front end (or a user's HuBERT), word alignments exact by construction.

Modules, in the order data flows: ``normalise`` and ``text_source`` (documents of plain
sentences), ``espeak`` (waveform + word timings), ``units`` / ``hubert_units`` (audio -> unit ids
at 25 Hz), ``corpus`` (orchestration, caching, jsonl output).
"""
