"""Everything that asks a model: what a request is, what each model accepts (requests shaped to it), the reply
cache, the spend ledger with its usage files, the client that sends requests (OpenAI-compatible endpoints, the Batch
API within its limits), and the embedded weights and llama-server."""
