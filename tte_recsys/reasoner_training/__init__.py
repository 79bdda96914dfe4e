"""Reasoner training: make the traces carry what the embedder needs (docs/design.md, "Reasoner training").

``tasks`` (the (query, positive) pairs, items with their partners), ``rewards`` (the catalog
reward with its no-trace floor, group advantages), ``methods`` (one class per method, its settings,
the run context), ``policy`` (decoding, loading, LoRA, progress, export), ``grpo`` (EG-RL on TRL's
``GRPOTrainer``), ``restrain`` (label-free RESTRAIN), ``sft`` (TTE_s on teacher or best-of-N
traces, TRL's ``SFTTrainer``), ``expert_iteration`` (sample, keep above the floor, SFT, repeat),
``unified`` (TTE_u's head), ``toy`` (the tiny task of tests and ``debug=tiny``).
"""
