"""Benchmarks as MGM's own evaluation scripts run them: `python -m mgm_mlx.eval`.

tasks.py (data, prompts, max tokens), data.py (the Hugging Face cache, parquet), runner.py
(the model call, answers file, resume), scoring.py (the reference scorers), judge.py (LLM
grader for MM-Vet and MathVista), report.py (paper numbers, JSON and Markdown).
"""
