"""Support the stage scripts share: file readers, checkpoints and run folders, command-line
flags, the frozen-feature cache, and reading Hugging Face folders.
"""
