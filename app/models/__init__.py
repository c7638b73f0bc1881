"""Where a request's model comes from beyond the shipped catalog: the Hugging Face Hub (network, cache) and the
one resolver every entry point calls before the core (:func:`app.models.resolve.resolve_request`)."""
