"""Training and evaluation: the engine (loop, checkpoints, DDP, logging) and the task scripts.

Run the scripts as modules from the repository root:

    python -m train.train_seg --config train/configs/tiny_synthetic.yaml --work-dir work_dirs/tiny
    torchrun --nproc_per_node 8 -m train.train_seg --config train/configs/denseclip_rn50_ade20k.yaml
    python -m train.eval_seg --checkpoint work_dirs/tiny/final --config train/configs/tiny_synthetic.yaml
    python -m train.train_det --config train/configs/det_tiny_synthetic.yaml
"""
