"""A simulated vLLM cluster: engines whose prefix caches publish the KV events vLLM publishes."""
