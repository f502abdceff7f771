"""Supervised fine-tuning of a ReID backbone (the downstream protocol): BNNeck baseline, ID loss
with label smoothing + batch-hard triplet, P x K batches, evaluation, and the data-efficiency
protocol. Pure torch: cion_ray/runtime/finetune.py runs it on Ray Train."""
