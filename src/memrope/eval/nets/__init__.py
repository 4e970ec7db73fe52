"""The networks of VBench's dimensions, in plain PyTorch, loading the original checkpoint files.

VBench runs four networks that transformers does not provide and whose upstream code needs
torchvision, timm, easydict or omegaconf: RAFT (dynamic degree), AMT-S (motion smoothness), MUSIQ
(imaging quality) and ViCLIP (overall consistency). Each module here rebuilds one of them from the
upstream code's facts (layer sizes, key names, the order of every operation), so that the original
files load in their own key layouts without conversion, and names the upstream repository and
commit it follows. Only ViCLIP's text tower, which is CLIP's text transformer, runs through
transformers. `loading` validates every checkpoint against the network's shapes on the meta device
before anything is materialised.
"""
