"""Masks from photos with onnxruntime: the predictor, which model a photo needs, how sure it is,
and the predict job (submissions and mask files). Never imports torch: the torch backend and
the GPU fast path plug in from `carmask.training.torch_backend`."""
