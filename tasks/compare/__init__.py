"""`ragtune compare`: RAG, fine-tuning or both, measured side by side on the user's own questions (issue 20).

``qa`` (the QA file and its split), ``metrics`` (pure scoring and the paired bootstrap), ``recipes``
(the arms' training sets), ``arms`` (training with reuse, answering, label scoring), ``report`` (the
table, the chart, the winner). ``tasks.evaluation.compare`` wraps them as Prefect tasks.
"""
