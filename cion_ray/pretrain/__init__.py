"""Identity-guided self-distillation pre-training (CION), as plain torch: views, the P x K identity
sampler with gradual K, the DINO head, the identity-guided loss, schedules, the student/teacher
task and the training loop. Distribution is injected through a small context object
(pretrain/loop.py); the Ray Train launcher lives in cion_ray/runtime/pretrain.py."""
