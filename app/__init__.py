"""peft-planner: parameter counts and GPU memory of LLM fine-tuning runs."""
