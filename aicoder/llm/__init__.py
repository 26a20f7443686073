"""Talking to LLM APIs: the providers, the client that picks one, and its errors. The retrying they rely
on lives below, in :mod:`aicoder.http`."""
