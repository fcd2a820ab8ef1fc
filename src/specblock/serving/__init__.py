"""`specblock serve`: an OpenAI-compatible server with batched speculative decoding."""
