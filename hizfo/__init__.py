"""Hi-ZFO: hierarchical zeroth-/first-order fine-tuning (Jin & Tan, Findings of ACL 2026), reproduced."""
__version__ = "0.1.0"
