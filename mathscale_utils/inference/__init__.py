"""Everything that asks a model: what a request is, the reply cache, the spend ledger with its usage files, the
client that sends requests (OpenAI-compatible endpoints, the Batch API), and the embedded weights and llama-server."""
