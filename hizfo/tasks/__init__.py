"""Tasks: data loading, the paper's prompt templates (A.3), batching and scoring (hizfo/tasks/base.py), and the
torch-free task catalogue (hizfo/tasks/catalogue.py). Importing the package loads neither torch nor a task."""
