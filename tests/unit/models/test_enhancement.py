"""Tests of the enhancement head: size, STFT, frame alignment, mask range and padding."""

import pytest
import torch

from robustdistiller.models.enhancement import EnhancementHead, num_stft_frames, stft_magnitude


def tiny_head(seed=0, **kwargs):
    torch.manual_seed(seed)
    return EnhancementHead(input_size=16, hidden_size=8, **kwargs)


def cnn_frames(num_samples):
    return (num_samples - 400) // 320 + 1


def test_default_parameter_count():
    head = EnhancementHead()
    assert sum(p.numel() for p in head.parameters()) == 4_862_721
    assert head.lstm.bidirectional and head.lstm.num_layers == 3 and head.lstm.hidden_size == 256
    assert head.output_layer.out_features == 257


@pytest.mark.parametrize("num_samples", [400, 1599, 16000, 16080, 25000])
def test_stft_magnitude_matches_torch_stft(num_samples):
    wavs = torch.randn(2, num_samples)
    magnitude = stft_magnitude(wavs)
    assert magnitude.shape == (2, num_stft_frames(num_samples), 257)
    window = torch.hann_window(400)
    expected = torch.stft(wavs, 512, 160, 400, window, center=True, return_complex=True).abs()
    assert torch.allclose(magnitude, expected.transpose(1, 2))


def test_output_shapes_and_mask_range():
    head = tiny_head().eval()
    wavs = torch.randn(3, 16000)
    features = 10 * torch.randn(3, cnn_frames(16000), 16)  # large inputs push the sigmoid to its ends
    output = head(features, wavs)
    assert output.mask.shape == output.enhanced_magnitude.shape == output.noisy_magnitude.shape == (3, 98, 257)
    assert float(output.mask.min().detach()) >= 0.0 and float(output.mask.max().detach()) <= 1.0
    assert torch.allclose(output.enhanced_magnitude, output.mask * output.noisy_magnitude)
    assert torch.equal(output.noisy_magnitude, stft_magnitude(wavs)[:, :98])


def test_alignment_when_stft_has_one_more_frame():
    num_samples = 16080
    assert num_stft_frames(num_samples) == 2 * cnn_frames(num_samples) + 1 == 101
    head = tiny_head().eval()
    wavs = torch.randn(2, num_samples)
    output = head(torch.randn(2, cnn_frames(num_samples), 16), wavs)
    assert output.mask.shape[1] == 100
    assert torch.equal(output.noisy_magnitude, stft_magnitude(wavs)[:, :100])


def test_alignment_when_features_are_longer():
    head = tiny_head().eval()
    output = head(torch.randn(1, 60, 16), torch.randn(1, 16000))
    assert output.mask.shape[1] == num_stft_frames(16000) == 101


def test_features_are_repeated_in_time():
    head = tiny_head().eval()
    features = torch.randn(1, 5, 16)
    seen = []
    handle = head.lstm.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    head(features, torch.randn(1, 1600))
    handle.remove()
    assert torch.equal(seen[0], features.repeat_interleave(2, dim=1)[:, :10])


def test_identity_and_half_masks():
    head = tiny_head().eval()
    wavs = torch.randn(2, 8000)
    features = torch.randn(2, cnn_frames(8000), 16)
    with torch.no_grad():
        head.output_layer.weight.zero_()
        head.output_layer.bias.fill_(30.0)  # sigmoid(30) == 1 in float32
    output = head(features, wavs)
    assert torch.equal(output.mask, torch.ones_like(output.mask))
    assert torch.equal(output.enhanced_magnitude, output.noisy_magnitude)
    with torch.no_grad():
        head.output_layer.bias.zero_()
    half = head(features, wavs)
    assert torch.equal(half.enhanced_magnitude, 0.5 * half.noisy_magnitude)


def test_padded_batch_matches_single_items_with_wav_lens():
    head = tiny_head(num_layers=2).eval()
    lengths = [16000, 9600, 4800]
    wavs = torch.zeros(3, 16000)
    features = torch.zeros(3, cnn_frames(16000), 16)
    for index, length in enumerate(lengths):
        wavs[index, :length] = torch.randn(length)
        features[index, : cnn_frames(length)] = torch.randn(cnn_frames(length), 16)
    wav_lens = torch.tensor(lengths, dtype=torch.float) / 16000
    feature_mask = torch.arange(features.shape[1])[None] < torch.tensor([[cnn_frames(n)] for n in lengths])
    batch = head(features, wavs, wav_lens, feature_mask=feature_mask)
    assert head.valid_frames(wavs, wav_lens, feature_mask).tolist() == [98, 58, 28]
    for index, length in enumerate(lengths):
        single = head(features[index : index + 1, : cnn_frames(length)], wavs[index : index + 1, :length])
        frames = single.mask.shape[1]
        assert frames == 2 * cnn_frames(length)
        assert torch.allclose(batch.mask[index, :frames], single.mask[0], atol=1e-6)


def test_gradient_reaches_features():
    head = tiny_head().train()
    features = torch.randn(2, cnn_frames(8000), 16, requires_grad=True)
    head(features, torch.randn(2, 8000)).enhanced_magnitude.mean().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
