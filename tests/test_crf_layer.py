"""The CRF as a trainable layer (CRF-as-RNN): its forward is DeepLab's CRF at Potts
initialisation, its gradients match finite differences, the lattice's gradients match the exact
filter's, and training it lowers a loss."""

from __future__ import annotations

import pytest
import torch

from deeplab_edu.crf import CRFParams, MeanFieldCRF, dense_crf, simulate_unaries


def scene(height: int = 14, width: int = 17, classes: int = 3, seed: int = 0):
    """A two-colour image with noise and scores that are right in most places."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask = ((y - height / 2) ** 2 + (x - width / 3) ** 2 < (height / 3) ** 2).long()
    mask[: height // 4, width // 2 :] = classes - 1
    colours = torch.tensor([[40.0, 90.0, 160.0], [200.0, 60.0, 40.0], [90.0, 200.0, 70.0]])
    image = (colours[mask] + 10.0 * torch.randn(height, width, 3, generator=g)).clamp(0, 255)
    logits = 1.5 * torch.nn.functional.one_hot(mask, classes).permute(2, 0, 1).float()
    logits = logits + torch.randn(classes, height, width, generator=g)
    return image.to(torch.uint8)[None], logits[None], mask[None]


@pytest.mark.parametrize("normalization", ["after", "symmetric"])
def test_forward_at_potts_initialisation_is_dense_crf(normalization):
    image, logits, _ = scene(20, 23)
    for method in ("naive", "permutohedral"):
        layer = MeanFieldCRF(
            3,
            CRFParams(theta_alpha=10.0, theta_beta=13.0, normalization=normalization),
            method=method,
        )
        probs = torch.softmax(logits[0], dim=0)
        expected = dense_crf(image[0], probs, layer.params, method=method)
        with torch.no_grad():
            got = layer(image, logits)[0]
        assert torch.allclose(got, expected, atol=1e-5), method


def test_the_layer_starts_at_the_crf_of_its_parameters():
    params = CRFParams(
        w1=7.0,
        theta_alpha=9.0,
        theta_beta=11.0,
        w2=2.0,
        theta_gamma=2.0,
        iterations=3,
        normalization="symmetric",
    )
    layer = MeanFieldCRF(3, params)
    assert layer.params == params and layer.method == "permutohedral"
    torch.testing.assert_close(layer.weights, torch.tensor([7.0, 2.0]))
    image, logits, _ = scene(20, 23)
    expected = dense_crf(image[0], torch.softmax(logits[0], dim=0), params)
    with torch.no_grad():
        assert torch.allclose(layer(image, logits)[0], expected, atol=1e-5)


def test_gradients_match_finite_differences_in_float64():
    image, logits, mask = scene(6, 7)
    layer = MeanFieldCRF(
        3, CRFParams(theta_alpha=4.0, theta_beta=20.0, iterations=3), method="naive"
    )
    layer = layer.double()
    target = torch.nn.functional.one_hot(mask[0], 3).permute(2, 0, 1).double()

    def loss(z, log_weights, compatibility):
        parameters = {"log_weights": log_weights, "compatibility": compatibility}
        q = torch.func.functional_call(layer, parameters, (image, z))
        return ((q[0] - target) ** 2).sum()

    inputs = (
        logits.double().requires_grad_(),
        layer.log_weights.detach().clone().requires_grad_(),
        layer.compatibility.detach().clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6)


def test_lattice_gradients_match_the_exact_filters():
    image, logits, mask = scene(18, 21)
    grads = {}
    for method in ("naive", "permutohedral"):
        layer = MeanFieldCRF(
            3, CRFParams(theta_alpha=6.0, theta_beta=20.0, iterations=5), method=method
        )
        z = logits.clone().requires_grad_()
        loss = torch.nn.functional.nll_loss(torch.log(layer(image, z)), mask)
        loss.backward()
        grads[method] = (z.grad, layer.log_weights.grad, layer.compatibility.grad)
    for exact, lattice in zip(grads["naive"], grads["permutohedral"], strict=True):
        scale = exact.abs().max()
        # the lattice approximates the Gaussian to a few per cent (test_crf's bounds)
        assert (lattice - exact).abs().max() <= 0.1 * scale
        cosine = torch.nn.functional.cosine_similarity(lattice.flatten(), exact.flatten(), dim=0)
        assert cosine > 0.99


def test_one_optimiser_step_lowers_the_loss():
    image, logits, mask = scene(16, 19)
    layer = MeanFieldCRF(3, CRFParams(theta_alpha=6.0, theta_beta=20.0, iterations=5))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)

    def loss():
        return torch.nn.functional.nll_loss(torch.log(layer(image, logits).clamp_min(1e-8)), mask)

    before = loss()
    optimizer.zero_grad()
    before.backward()
    assert layer.log_weights.grad.abs().sum() > 0 and layer.compatibility.grad.abs().sum() > 0
    optimizer.step()
    assert loss().item() < before.item()
    assert (layer.weights > 0).all()  # learned as logarithms: always positive


def test_scores_are_q_before_its_softmax_and_keep_the_gradient_where_q_underflows():
    image, logits, mask = scene(16, 19)
    layer = MeanFieldCRF(3, CRFParams(w1=200.0, theta_alpha=6.0, theta_beta=20.0, iterations=5))
    scores = layer.scores(image, logits)
    torch.testing.assert_close(torch.softmax(scores, dim=1), layer(image, logits))
    wrong = (mask + 1) % 3  # every pixel's label is wrong: Q of it underflows somewhere
    q = layer(image, logits).gather(1, wrong[:, None])
    assert (q < 1e-30).any()
    loss = torch.nn.functional.cross_entropy(scores, wrong)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.log_weights.grad).all() and layer.log_weights.grad.abs().sum() > 0


def test_gradients_reach_the_network_scores_on_simulated_unaries():
    image, _, mask = scene(16, 19)
    probs = simulate_unaries(mask[0].numpy(), num_classes=3, stride=4, seed=2)
    z = torch.log(probs)[None].requires_grad_()
    MeanFieldCRF(3, CRFParams(theta_alpha=6.0, theta_beta=20.0))(image, z).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_bad_inputs_say_what_was_expected():
    image, logits, _ = scene()
    with pytest.raises(ValueError, match="above 0"):
        MeanFieldCRF(3, CRFParams(w1=0.0))
    with pytest.raises(ValueError, match="method"):
        MeanFieldCRF(3, method="pydensecrf")
    with pytest.raises(TypeError, match="params must be a CRFParams, got dict"):
        MeanFieldCRF(3, {"w1": 4.0})
    layer = MeanFieldCRF(3)
    with pytest.raises(ValueError, match="4 classes, the layer was built for 3"):
        layer(image, torch.zeros(1, 4, 14, 17))
    with pytest.raises(ValueError, match="uint8"):
        layer(image.float(), logits)
    with pytest.raises(ValueError, match="float"):
        layer(image, logits[0])


def test_the_layer_runs_mean_fields_own_loop_with_its_compatibility(monkeypatch):
    """No second copy of the loop: the layer calls meanfield.iterate (T - 1 updates) and
    meanfield.update (the last one, before its softmax) with its compatibility matrix."""
    from deeplab_edu.crf import meanfield, rnn

    calls = []

    def counted(unary, message_fn, iterations, track=False, compatibility=None):
        calls.append((iterations, compatibility))
        return meanfield.iterate(unary, message_fn, iterations, track, compatibility)

    monkeypatch.setattr(rnn, "iterate", counted)
    layer = MeanFieldCRF(3, CRFParams(iterations=4))
    image, logits, _ = scene()
    layer(image, logits)
    assert [(n, c.shape) for n, c in calls] == [(3, (3, 3))]
    # Potts as a matrix gives the Potts update up to a per-pixel constant
    unary, message = torch.rand(5, 3), torch.rand(5, 3)
    potts = meanfield.update(unary, message.clone(), 1.0 - torch.eye(3))
    torch.testing.assert_close(
        torch.softmax(potts, 1), torch.softmax(meanfield.update(unary, message, None), 1)
    )
    with pytest.raises(ValueError, match="Potts compatibility only"):
        meanfield.iterate(unary, lambda q: q, 2, track=True, compatibility=torch.eye(3))
