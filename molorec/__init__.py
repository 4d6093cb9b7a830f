"""MoLoRec: a domain-general and a domain-specific LoRA on one frozen LLM, mixed per layer.

Modules: template (prompt text), instructions (examples), backbone, lora, mixture,
ranking, systems (the table rows), train (multi-GPU adapter training), profiles.
"""
