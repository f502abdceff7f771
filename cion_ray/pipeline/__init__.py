"""The whole pipeline as one job: track -> curate -> pretrain -> evaluate from one config."""
