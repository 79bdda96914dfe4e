"""The MTMH item-to-item model (TorchRec id/categorical features + TTE content tower)."""
