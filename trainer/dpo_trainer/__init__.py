"""DPO + LoRA trainer for vision-language models, spawned by the dpo-gpu Temporal worker.

Commands (see trainer/README.md and trainer/CONTRACT.md):
    python -m dpo_trainer.train --config CONFIG.json
    python -m dpo_trainer.evaluate --config CONFIG.json
    python -m dpo_trainer.build_tiny_model --arch llava --out DIR [--seed 0]
"""
