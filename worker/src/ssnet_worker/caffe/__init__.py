"""The Caffe importer: a Caffe network (prototxt + caffemodel) read with protobuf and rebuilt for other runtimes.

* :mod:`~ssnet_worker.caffe.proto`: Caffe's message classes, from ``caffe.proto`` (the subset of Caffe's format
  that is read) compiled into ``caffe.desc``;
* :mod:`~ssnet_worker.caffe.model`: the prototxt and caffemodel read and checked against each other, shapes
  propagated by Caffe's rules (every problem a ConfigError naming the file and layer);
* :mod:`~ssnet_worker.caffe.graph`: the net lowered to a short list of operations (BatchNorm + Scale fused,
  per-image statistics where Caffe uses the batch's);
* :mod:`~ssnet_worker.caffe.torchnet` (needs torch) and :mod:`~ssnet_worker.caffe.onnxnet` (needs onnx): that list
  as a ``torch.nn.Module`` and as an ONNX graph.

Layers: Input, Convolution, Deconvolution, BatchNorm, Scale, ReLU, Pooling (MAX, AVE), Eltwise, Concat, Crop,
Dropout, Split, Softmax.  Any other type is an :class:`~ssnet_worker.caffe.model.UnsupportedLayer` error naming it.
"""
