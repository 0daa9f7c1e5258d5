"""Tasks: data loading, the paper's prompt templates (A.3), batching and scoring."""
from hizfo.tasks.base import Example, Task, collate_train, encode_train, encode_prompts

__all__ = ["Example", "Task", "collate_train", "encode_train", "encode_prompts"]
