"""Reasoner training: make the traces carry what the embedder needs (docs/design.md, "Reasoner training").

``tasks`` (the (query, positive) pairs), ``rewards`` (EG-RL's embedder-guided reward and group
advantages), ``restrain`` (label-free RESTRAIN weights and advantages), ``policy`` (loading,
LoRA, progress, export), ``grpo`` (EG-RL and RESTRAIN on TRL's ``GRPOTrainer``), ``sft`` (TTE_s
on teacher or best-of-N traces, TRL's ``SFTTrainer``), ``toy`` (the tiny task of tests and
``debug=tiny``).
"""
