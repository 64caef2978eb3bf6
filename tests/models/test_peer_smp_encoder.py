"""SMP's encoder and model contracts, run against our ``xscale_vit_*`` encoders.

Written from segmentation_models_pytorch's own test suite (``tests/encoders/base.py``
``BaseEncoderTester``, ``tests/models/base.py`` ``BaseModelTester`` with
``test_upernet.py``'s batch size 2, ``tests/base/test_freeze_encoder.py``), adapted
only by parameter: our encoder names, ``encoder_weights=None`` (ours have no
ImageNet weights on the HF hub), a small ViT configuration for every check (SMP's
``get_tiny_encoder``; ``test_smp_encoder_shapes_every_size`` in test_segmentation.py
covers the registered sizes), and the TorchScript check keyed on the encoder's
``_is_torch_scriptable`` (SMP's UPerNet class claims scriptable whatever its
encoder; SMP's DPT, the other ViT model, declares itself not scriptable).
"""

import os
import tempfile

import pytest
import segmentation_models_pytorch as smp
import torch

from torchgeo_xscale.models.segmentation import register_encoder

#: A small configuration for the compile/export checks (SMP's ``get_tiny_encoder``).
TINY = register_encoder(
    'xscale_vit_peer_tiny', 'tiny', embed_dim=32, vit_depth=2, num_heads=2, img_size=64
)
ENCODERS = [TINY]
OUTPUT_STRIDES = [1, 2, 4, 8, 16, 32]


def sample(batch: int = 1, channels: int = 3, height: int = 64, width: int = 64):
    return torch.rand(batch, channels, height, width)


def strides(x: torch.Tensor, features: list[torch.Tensor]) -> tuple[list, list]:
    h, w = x.shape[2:]
    return [h // f.shape[2] for f in features], [w // f.shape[3] for f in features]


# ------------------------------------------------------------ BaseEncoderTester
@pytest.mark.parametrize('name', ENCODERS)
def test_encoder_forward_backward(name: str) -> None:
    encoder = smp.encoders.get_encoder(name, in_channels=3, encoder_weights=None)
    features = encoder.forward(sample())
    assert len(features) == 6
    features[-1].mean().backward()


@pytest.mark.parametrize('in_channels', [1, 3, 4])
@pytest.mark.parametrize('name', ENCODERS)
def test_encoder_in_channels(name: str, in_channels: int) -> None:
    encoder = smp.encoders.get_encoder(
        name, in_channels=in_channels, encoder_weights=None
    ).eval()
    with torch.inference_mode():
        encoder.forward(sample(channels=in_channels))


@pytest.mark.parametrize('depth', [3, 4, 5])
@pytest.mark.parametrize('name', ENCODERS)
def test_encoder_depth(name: str, depth: int) -> None:
    encoder = smp.encoders.get_encoder(
        name, in_channels=3, encoder_weights=None, depth=depth
    ).eval()
    x = sample()
    with torch.inference_mode():
        features = encoder.forward(x)
    assert len(features) == depth + 1
    height_strides, width_strides = strides(x, features)
    assert height_strides == OUTPUT_STRIDES[: depth + 1]
    assert width_strides == OUTPUT_STRIDES[: depth + 1]
    assert encoder.output_stride == OUTPUT_STRIDES[depth]
    assert len(encoder.out_channels) == depth + 1


def test_encoder_invalid_depth() -> None:
    with pytest.raises(ValueError):
        smp.encoders.get_encoder(TINY, depth=6)
    with pytest.raises(ValueError):
        smp.encoders.get_encoder(TINY, depth=0)


def test_encoder_dilated_not_supported() -> None:
    # supports_dilated = False in SMP's terms: a clear ValueError
    for stride in (8, 16):
        with pytest.raises(ValueError, match='output_stride'):
            smp.encoders.get_encoder(
                TINY, in_channels=3, encoder_weights=None, output_stride=stride
            )


def test_encoder_compile() -> None:
    encoder = smp.encoders.get_encoder(TINY, encoder_weights=None).eval()
    torch.compiler.reset()
    compiled = torch.compile(encoder, fullgraph=True, dynamic=True, backend='eager')
    assert encoder._is_torch_compilable
    compiled(sample())


def test_encoder_torch_export() -> None:
    encoder = smp.encoders.get_encoder(TINY, encoder_weights=None).eval()
    x = sample()
    assert encoder._is_torch_exportable
    exported = torch.export.export(encoder, args=(x,), strict=True)
    with torch.inference_mode():
        eager, ours = encoder(x), exported.module().forward(x)
    for a, b in zip(eager, ours, strict=True):
        torch.testing.assert_close(a, b)


def test_encoder_torch_script_refused_clearly() -> None:
    encoder = smp.encoders.get_encoder(TINY, encoder_weights=None).eval()
    assert not encoder._is_torch_scriptable
    with pytest.raises(RuntimeError):
        torch.jit.script(encoder)


# ------------------------------------------------- BaseModelTester (UPerNet)
def upernet(**kwargs):
    return smp.create_model(
        'upernet', encoder_name=TINY, encoder_weights=None, **kwargs
    )


def test_model_forward_backward() -> None:
    output = upernet()(sample(batch=2))
    assert output.shape[1] == 1  # SMP's default: one class
    output.mean().backward()


def test_model_in_channels_depth_and_classes() -> None:
    model = upernet(encoder_depth=3, in_channels=1, classes=7).eval()
    with torch.inference_mode():
        output = model(sample(batch=2, channels=1))
    assert output.shape[1] == 7


def test_model_classification_head() -> None:
    aux = {'pooling': 'avg', 'classes': 10, 'dropout': 0.5, 'activation': 'sigmoid'}
    model = upernet(aux_params=aux).eval()
    head = model.classification_head
    assert isinstance(head[0], torch.nn.AdaptiveAvgPool2d)
    assert isinstance(head[2], torch.nn.Dropout) and head[2].p == 0.5
    assert isinstance(head[4].activation, torch.nn.Sigmoid)
    with torch.inference_mode():
        _, probs = model(sample(batch=2))
    assert probs.shape[1] == 10


def test_model_any_resolution() -> None:
    model = upernet()
    assert model.requires_divisible_input_shape
    with pytest.raises(RuntimeError, match='Wrong input shape'):
        model(sample(batch=2, height=67, width=71))


def test_model_save_load_with_hub_mixin() -> None:
    model = upernet().eval()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(
            folder, dataset='test_dataset', metrics={'my_awesome_metric': 0.99}
        )
        restored = smp.from_pretrained(folder).eval()
        with open(os.path.join(folder, 'README.md')) as f:
            readme = f.read()
    x = sample(batch=2)
    with torch.inference_mode():
        output, again = model(x), restored(x)
    assert output.shape == again.shape and output.shape[1] == 1
    assert 'test_dataset' in readme and 'my_awesome_metric' in readme


@pytest.mark.slow  # ~5 s of tracing
def test_model_compile() -> None:
    model = upernet().eval()
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend='eager')
    with torch.inference_mode():
        compiled(sample(batch=2))


@pytest.mark.slow  # ~5 s of tracing
def test_model_torch_export() -> None:
    torch.manual_seed(42)
    model = upernet().eval()
    x = sample(batch=2)
    exported = torch.export.export(model, args=(x,), strict=True)
    with torch.inference_mode():
        eager, ours = model(x), exported.module().forward(x)
    assert eager.shape == ours.shape
    torch.testing.assert_close(eager, ours, rtol=1e-5, atol=1e-5)


def test_model_torch_script() -> None:
    model = upernet().eval()
    assert not (model._is_torch_scriptable and model.encoder._is_torch_scriptable)
    with pytest.raises(RuntimeError):
        torch.jit.script(model)


# ------------------------------------------------------ test_freeze_encoder.py
def _norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    norms = [
        m
        for m in model.encoder.modules()
        if isinstance(m, torch.nn.modules.batchnorm._NormBase)
    ]
    assert norms  # the Feature2Pyramid neck has BatchNorm
    return norms


def test_freeze_and_unfreeze_encoder() -> None:
    model = upernet()

    def trainable(expected: bool) -> None:
        assert all(p.requires_grad == expected for p in model.encoder.parameters())

    def training(expected: bool) -> None:
        assert all(m.training == expected for m in _norms(model))

    model.train()
    trainable(True)
    model.freeze_encoder()
    trainable(False)
    training(False)
    model.train()
    training(False)
    model.unfreeze_encoder()
    trainable(True)
    training(True)
    model.train()
    training(True)
    model.eval()
    model.freeze_encoder()
    trainable(False)
    training(False)
    model.unfreeze_encoder()
    trainable(True)
    training(True)


def test_freeze_encoder_stops_running_stats() -> None:
    model = upernet()
    model.freeze_encoder()
    model.train()  # SMP's train() keeps the frozen encoder's norms in eval mode
    norm = _norms(model)[0]
    mean, var = norm.running_mean.clone(), norm.running_var.clone()
    model(sample(batch=2))
    torch.testing.assert_close(mean, norm.running_mean)
    torch.testing.assert_close(var, norm.running_var)
