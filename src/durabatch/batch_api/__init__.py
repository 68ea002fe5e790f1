"""Jobs through a provider's Batch API (half price, results within 24 h), crash-safe: `runner.py` (plan, record,
upload, create or adopt, poll, download, commit), `provider.py` (the Provider protocol; OpenAI), `lines.py` (the
JSON lines both ways, the cost estimate)."""
