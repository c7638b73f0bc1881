"""Where a request's model comes from and what the real libraries say about it, outside the pure core: the
Hugging Face Hub (network, cache), the generic meta-device builder for architectures the hand-written rules do
not cover (torch, transformers, PEFT; imported lazily, run in a worker), and the one resolver every entry point
calls before the core (:func:`app.models.resolve.resolve_request`)."""
