"""Real-library model builders (torch, transformers, PEFT, bitsandbytes; imported lazily, run in workers)."""
