"""Scoring what a model generated: metrics, stop rules, and the sandbox that runs generated code.

Imports only hizfo's root modules; the tasks and the loop build on it. ``sandbox_runner.py`` is run by path by
``sandbox.py`` and stays standard-library only.
"""
