"""`specblock bench`: a Spec-Bench style evaluation harness (prompts, interleaved runs, summary, plots)."""
