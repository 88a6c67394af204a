"""One small Caffe net per supported layer type (and per interesting parameter), for the fidelity tests.

Each net reads ``data`` (an odd-sized N x C x H x W, so that Caffe's rounding shows) and writes ``out``.  The
weights come from Caffe's own fillers (random, non-trivial), made and saved by genuine Caffe in the worker image
(``make_caffe_references.py``), so no layer is only tested through SSNet.  Python 3.9 and numpy only: this
module also runs inside the worker image.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

CONV_FILLERS = 'weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "gaussian" std: 0.3 }'
SCALE_FILLERS = 'filler { type: "gaussian" mean: 1.0 std: 0.3 } bias_filler { type: "gaussian" std: 0.3 }'


def _net(name: str, shape: Tuple[int, int, int, int], layers: str) -> str:
    dims = "\n".join(f"input_dim: {d}" for d in shape)
    return f'name: "{name}"\ninput: "data"\n{dims}\n{layers}'


def _conv(name: str, bottom: str, top: str, params: str, kind: str = "Convolution") -> str:
    return (f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top}"\n'
            f'  convolution_param {{ {params} }} }}\n')


# name -> (input shape, layers); the output blob is "out".
NETS: Dict[str, Tuple[Tuple[int, int, int, int], str]] = {
    "convolution": ((1, 4, 13, 11),
                    _conv("conv_a", "data", "a", f"num_output: 6 kernel_size: 3 pad: 2 stride: 2 dilation: 2 "
                                                 f"group: 2 {CONV_FILLERS}")
                    + _conv("out", "a", "out", f"num_output: 3 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 "
                                               f"stride_h: 1 stride_w: 2 bias_term: false {CONV_FILLERS}")),
    "deconvolution": ((1, 4, 7, 9),
                      _conv("up", "data", "up", f"num_output: 4 kernel_size: 4 pad: 1 stride: 2 group: 4 "
                                                f"{CONV_FILLERS}", "Deconvolution")
                      + _conv("out", "up", "out", f"num_output: 2 kernel_size: 3 stride: 1 bias_term: false "
                                                  f"{CONV_FILLERS}", "Deconvolution")),
    "batchnorm_per_image": ((1, 3, 9, 11),
                            'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" '
                            'batch_norm_param { use_global_stats: false } }\n'
                            f'layer {{ name: "scale" type: "Scale" bottom: "data" top: "data" '
                            f'scale_param {{ bias_term: true {SCALE_FILLERS} }} }}\n'
                            'layer { name: "bn2" type: "BatchNorm" bottom: "data" top: "out" '
                            'batch_norm_param { use_global_stats: false eps: 0.01 } }\n'),
    "batchnorm_global_stats": ((1, 3, 9, 11),
                               'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
                               'batch_norm_param { use_global_stats: true eps: 0.001 } }\n'
                               f'layer {{ name: "out" type: "Scale" bottom: "bn" top: "out" '
                               f'scale_param {{ bias_term: true {SCALE_FILLERS} }} }}\n'),
    "scale": ((1, 3, 6, 7),
              f'layer {{ name: "s1" type: "Scale" bottom: "data" top: "s1" scale_param {{ {SCALE_FILLERS} }} }}\n'
              f'layer {{ name: "out" type: "Scale" bottom: "s1" top: "out" '
              f'scale_param {{ axis: 1 num_axes: 2 bias_term: true {SCALE_FILLERS} }} }}\n'),
    "relu": ((1, 2, 5, 6),
             'layer { name: "leaky" type: "ReLU" bottom: "data" top: "leaky" relu_param { negative_slope: 0.1 } }\n'
             f'{_conv("mix", "leaky", "mix", f"num_output: 2 kernel_size: 1 {CONV_FILLERS}")}'
             'layer { name: "out" type: "ReLU" bottom: "mix" top: "out" }\n'),
    "pooling_max": ((1, 2, 13, 10),
                    'layer { name: "p1" type: "Pooling" bottom: "data" top: "p1" '
                    'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }\n'
                    'layer { name: "out" type: "Pooling" bottom: "p1" top: "out" '
                    'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'),
    "pooling_ave": ((1, 2, 13, 10),
                    'layer { name: "p1" type: "Pooling" bottom: "data" top: "p1" '
                    'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n'
                    'layer { name: "out" type: "Pooling" bottom: "p1" top: "out" '
                    'pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 2 } }\n'),
    "pooling_global": ((1, 3, 7, 5),
                       'layer { name: "out" type: "Pooling" bottom: "data" top: "out" '
                       'pooling_param { pool: AVE global_pooling: true } }\n'),
    "eltwise": ((1, 3, 6, 5),
                _conv("c1", "data", "c1", f"num_output: 3 kernel_size: 3 pad: 1 {CONV_FILLERS}")
                + 'layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "c1" top: "sum" '
                  'eltwise_param { operation: SUM coeff: 0.5 coeff: -2.0 } }\n'
                + 'layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "c1" bottom: "data" top: "prod" '
                  'eltwise_param { operation: PROD } }\n'
                + 'layer { name: "out" type: "Eltwise" bottom: "prod" bottom: "c1" top: "out" '
                  'eltwise_param { operation: MAX } }\n'),
    "concat": ((1, 2, 5, 7),
               _conv("c1", "data", "c1", f"num_output: 3 kernel_size: 3 pad: 1 {CONV_FILLERS}")
               + 'layer { name: "out" type: "Concat" bottom: "c1" bottom: "data" top: "out" '
                 'concat_param { axis: 1 } }\n'),
    "crop": ((1, 2, 12, 11),
             _conv("small", "data", "small", f"num_output: 2 kernel_size: 5 {CONV_FILLERS}")
             + 'layer { name: "out" type: "Crop" bottom: "data" bottom: "small" top: "out" '
               'crop_param { axis: 2 offset: 1 offset: 3 } }\n'),
    "dropout_softmax": ((1, 3, 6, 6),
                        _conv("c1", "data", "c1", f"num_output: 4 kernel_size: 3 pad: 1 {CONV_FILLERS}")
                        + 'layer { name: "drop" type: "Dropout" bottom: "c1" top: "c1" '
                          'dropout_param { dropout_ratio: 0.5 } }\n'
                        + 'layer { name: "out" type: "Softmax" bottom: "c1" top: "out" '
                          'softmax_param { axis: 1 } }\n'),
}

#: Images per net; each runs alone through genuine Caffe (batch 1, the reference).
IMAGES = 4
SEED = 20181


def sparse_adc_image(rng: np.random.RandomState, height: int = 512, width: int = 512) -> np.ndarray:
    """Like a LArTPC wire plane: mostly zeros, a few tracks and shower blobs of 10-500 ADC."""
    image = np.zeros((height, width), np.float32)
    for _ in range(rng.randint(3, 7)):
        y0, x0 = rng.uniform(0, height), rng.uniform(0, width)
        angle, length = rng.uniform(0, np.pi), rng.uniform(40, 300)
        steps = np.linspace(0, length, int(length) * 2)
        ys = np.clip((y0 + steps * np.sin(angle)).astype(int), 0, height - 1)
        xs = np.clip((x0 + steps * np.cos(angle)).astype(int), 0, width - 1)
        image[ys, xs] = rng.uniform(20, 120, ys.size)
    for _ in range(rng.randint(1, 4)):
        cy, cx, spread = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 25)
        n = rng.randint(100, 600)
        ys = np.clip(rng.normal(cy, spread, n).astype(int), 0, height - 1)
        xs = np.clip(rng.normal(cx, spread, n).astype(int), 0, width - 1)
        image[ys, xs] = rng.uniform(10, 500, n)
    return image
