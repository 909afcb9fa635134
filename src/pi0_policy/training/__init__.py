"""
Fine-tune or train π0 on LeRobot datasets (no rclpy).

Modules: ``config`` (the run's frozen settings and architecture presets), ``samples`` (dataset
frames to model batches through the inference pipeline, norm statistics), ``optim`` (AdamW,
warmup + cosine schedule, EMA), ``checkpoints`` (openpi PyTorch layout plus resumable training
state), ``tokenizer`` (a SentencePiece model for checkpoints trained from scratch) and ``train``
(the loop, DDP through torchrun, ``pi0-policy train``).
"""
