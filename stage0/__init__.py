"""Stage 0: what the paper is given, made offline. The synthetic image and video world
(synthetic.py, drawn by world.py and described by captions.py; its scene labels in scenes.py) and
the pretraining of the stand-in ViT, tiny LM and large LM (pretrain.py), beside the shipped
weights they produce (*.safetensors).
"""
