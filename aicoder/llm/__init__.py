"""Talking to LLM APIs: the retry policy, the adapter, the SDK bridge, the providers and the client."""
