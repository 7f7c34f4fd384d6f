"""Models: bundles, one preprocessing for training and scoring, backbones, trainers, runners."""
