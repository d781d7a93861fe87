"""Fine-tuning: ``train.py`` is the one training script (launched by ``accelerate launch``); ``config``,
``data``, ``loss`` and ``checkpoint`` are its parts. Nothing here imports Prefect."""
