"""What users would run instead (Hugging Face `generate`, llama.cpp), each served from its own
process so that it runs with its own default thread settings, untouched by specblock's.

llama.cpp comes two ways: `llama.cpp` through the llama-cpp-python binding, and
`llama.cpp-server`, the `llama-server` binary that scripts/build_llama_cpp.sh builds from the
binding's vendored sources, timed end to end over HTTP on loopback like a client would.

Protocol: the parent writes one JSON request per line ({"ids": [...], "max_new": N}); the
child answers {"new_tokens": n, "wall_s": s}, timing only the generation itself, or {"error": why}.
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


class LlamaServer:
    """llama.cpp's own `llama-server` on the GGUF file, 2 threads, one slot, greedy, on a free
    loopback port; each request is timed from sending the prompt to the last token. `extra`:
    more server flags (its speculative modes: `--spec-type ngram-simple`, or `-md DRAFT.gguf
    --spec-type draft-eagle3`)."""

    def __init__(self, gguf_path: str, binary: str, *extra: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        import tempfile

        self.log = tempfile.NamedTemporaryFile("w", prefix="llama-server-", suffix=".log", delete=False)
        cmd = [binary, "-m", gguf_path, "-t", "2", "-tb", "2", "-np", "1", "-c", "4096", "--host", "127.0.0.1",
               "--port", str(self.port), *extra]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with code {self.proc.returncode} at start ({self.log.name})")
            try:
                if self._get("/health").get("status") == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.close()
        raise RuntimeError(f"llama-server did not become healthy within 120 s ({self.log.name})")

    def _get(self, path: str) -> dict:
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def run(self, ids: list[int], max_new: int) -> dict:
        from urllib.request import Request, urlopen

        body = json.dumps({"prompt": ids, "n_predict": max_new, "temperature": 0.0, "top_k": 1,
                           "cache_prompt": False}).encode()  # fmt: skip
        req = Request(f"http://127.0.0.1:{self.port}/completion", data=body, headers={"Content-Type": "application/json"})
        t = time.perf_counter()
        try:
            with urlopen(req, timeout=600) as r:
                out = json.loads(r.read())
        except OSError as exc:
            code = self.proc.poll()
            if code is not None and code < 0:  # killed by a signal: SIGILL / SIGSEGV
                raise RuntimeError(
                    f"llama-server crashed (signal {-code}) during evaluation; on Sapphire Rapids a native (AMX) build "
                    "dies in batched evaluation: rebuild with scripts/build_llama_cpp.sh (GGML_NATIVE=OFF)"
                ) from None
            raise RuntimeError(f"llama-server request failed: {exc}") from None
        return {"new_tokens": int(out["tokens_predicted"]), "wall_s": time.perf_counter() - t} | server_timings(out)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def server_timings(out: dict) -> dict:
    """llama-server's own figures for one request: the prompt time, and with a speculative mode
    the draft tokens it proposed and accepted (absent when it drafted nothing)."""
    timings = out.get("timings") or {}
    return {
        "prefill_s": float(timings.get("prompt_ms", 0.0)) / 1000,
        "draft_tokens": int(timings.get("draft_n", 0)),
        "draft_accepted": int(timings.get("draft_n_accepted", 0)),
    }


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
        try:
            self.proc.stdin.write(json.dumps({"ids": ids, "max_new": max_new}) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:  # the child is gone (a broken pipe)
            raise RuntimeError(f"{self.name}: the reference process exited") from exc
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the reference process exited")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:  # the child already died with input unread
            pass
        self.proc.wait()


def serve(kind: str, args: list[str]) -> None:
    if kind in ("llama.cpp", "llama-server") and not (args[0] and os.path.isfile(args[0])):
        print("no GGUF file for this target (only registry models keep theirs)", flush=True)
        return
    if kind == "llama-server" and not os.access(args[1], os.X_OK):
        print(f"no llama-server binary at {args[1]} (build it with scripts/build_llama_cpp.sh)", flush=True)
        return
    try:
        if kind == "hf":
            engine = HFGenerate(args[0], int(args[1]), *args[2:])
        elif kind == "llama-server":
            engine = LlamaServer(*args)
        else:
            engine = LlamaCpp(args[0])
    except ImportError as exc:
        print(f"not installed ({exc})", flush=True)
        return
    except RuntimeError as exc:
        print(str(exc), flush=True)
        return
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            req = json.loads(line)
            try:
                reply = engine.run(req["ids"], req["max_new"])
            except RuntimeError as exc:  # e.g. llama-server crashed: say why instead of dying
                reply = {"error": str(exc)}
            print(json.dumps(reply), flush=True)
    finally:
        if hasattr(engine, "close"):
            engine.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
