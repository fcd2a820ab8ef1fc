"""What users would run instead (Hugging Face `generate`, llama.cpp), each served from its own
process so that it runs with its own default thread settings, untouched by specblock's.

Protocol: the parent writes one JSON request per line ({"ids": [...], "max_new": N}); the
child answers {"new_tokens": n, "wall_s": s}, timing only the generation itself.
It runs as a script in a child process and imports nothing from specblock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


class HFGenerate:
    """Hugging Face transformers `generate`, greedy, in the bench's dtype, on specblock's converted weights."""

    def __init__(self, model_dir: str, eos_id: int, dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        self.eos_id = eos_id

    def run(self, ids: list[int], max_new: int) -> dict:
        x = self.torch.tensor([ids])
        t = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(x, attention_mask=self.torch.ones_like(x), max_new_tokens=max_new,
                                      do_sample=False, eos_token_id=self.eos_id, pad_token_id=self.eos_id)  # fmt: skip
        return {"new_tokens": out.shape[1] - len(ids), "wall_s": time.perf_counter() - t}


class LlamaCpp:
    """llama.cpp through llama-cpp-python on the original GGUF file, 2 threads, greedy."""

    def __init__(self, gguf_path: str) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=gguf_path, n_ctx=4096, n_threads=2, n_threads_batch=2, verbose=False)

    def run(self, ids: list[int], max_new: int) -> dict:
        self.llm.reset()
        t = time.perf_counter()
        out = self.llm.create_completion(prompt=ids, max_tokens=max_new, temperature=0.0, top_k=1)
        return {"new_tokens": out["usage"]["completion_tokens"], "wall_s": time.perf_counter() - t}


class ReferenceProcess:
    """Parent side: starts `python reference_engines.py KIND ARGS...` (a file run as a script, so
    the child never imports specblock) and sends it requests."""

    def __init__(self, name: str, kind: str, *args: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, kind, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        status = self.proc.stdout.readline().strip()
        if status != "ready":
            self.proc.wait()
            raise RuntimeError(f"{name} unavailable: {status or 'the process exited'}")

    def run(self, ids: list[int], max_new: int) -> dict:
        self.proc.stdin.write(json.dumps({"ids": ids, "max_new": max_new}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def serve(kind: str, args: list[str]) -> None:
    if kind == "llama.cpp" and not (args[0] and os.path.isfile(args[0])):
        print("no GGUF file for this target (only registry models keep theirs)", flush=True)
        return
    try:
        engine = HFGenerate(args[0], int(args[1]), *args[2:]) if kind == "hf" else LlamaCpp(args[0])
    except ImportError as exc:
        print(f"not installed ({exc})", flush=True)
        return
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(engine.run(req["ids"], req["max_new"])), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
