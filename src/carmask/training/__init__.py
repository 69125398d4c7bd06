"""Everything that needs torch (`pip install carmask[train]`): the model registry, training
loops, augmentation, the outline refiner, ONNX export and the torch inference backend."""
