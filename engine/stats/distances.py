"""Distances between VDNAs with vdna 0.1.1's definitions and arguments: EMD, NFD, FD.

Differences from vdna, none of which changes a definition:
- Everything is computed in float64 (vdna computes NFD in the stored float32 and averages FD layers
  in float32); vectorised over neurons instead of vdna's per-neuron Python loops.
- FD's trace term uses a symmetric eigendecomposition: tr sqrt(S1 S2) = sum sqrt(eig(L^T S2 L)), S1 = L L^T,
  which equals scipy's sqrtm-based value for covariance matrices and is much faster.
- Bad arguments and incompatible VDNAs raise `IncompatibleVDNAError`/`ValueError` with a one-line
  reason (vdna asserts); VDNAs on different devices are compared on the first one's device.
"""

from __future__ import annotations

import torch

from .._errors import IncompatibleVDNAError
from .vdna import VDNA, check_compatible

__all__ = ["EMD", "FD", "NFD", "earth_movers_distance", "frechet_distance", "frechet_distance_1d"]


def earth_movers_distance(hist1: torch.Tensor, hist2: torch.Tensor) -> torch.Tensor:
    """Row-wise EMD between histograms [R, N] (each row normalised to sum 1), in bin units."""
    if hist1.shape != hist2.shape:
        raise IncompatibleVDNAError(
            f"histograms differ in shape: {tuple(hist1.shape)} vs {tuple(hist2.shape)}"
        )
    h1 = hist1 / torch.sum(hist1, dim=1, dtype=torch.float64, keepdim=True)
    h2 = hist2.to(hist1.device) / torch.sum(hist2.to(hist1.device), dim=1, dtype=torch.float64, keepdim=True)
    return torch.sum(torch.abs(torch.cumsum(h1 - h2, dim=1)), dim=1)


def frechet_distance_1d(mu1, var1, mu2, var2) -> torch.Tensor:
    """Element-wise Frechet distance between 1-d Gaussians."""
    mu1, var1, mu2, var2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, var1, mu2, var2))
    return torch.square(mu1 - mu2) + var1 + var2 - 2 * torch.sqrt(var1 * var2)


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> torch.Tensor:
    """Frechet distance between two multivariate Gaussians (FID's formula), in float64.

    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), with tr sqrt(S1 S2) computed from the
    eigenvalues of the symmetric PSD matrix L^T S2 L (S1 = L L^T; or sqrt(S1) S2 sqrt(S1) when S1 is
    singular), which has the same spectrum as S1 S2.
    """
    mu1 = torch.atleast_1d(torch.as_tensor(mu1, dtype=torch.float64))
    mu2 = torch.atleast_1d(torch.as_tensor(mu2, dtype=torch.float64)).to(mu1.device)
    s1 = torch.atleast_2d(torch.as_tensor(sigma1, dtype=torch.float64)).to(mu1.device)
    s2 = torch.atleast_2d(torch.as_tensor(sigma2, dtype=torch.float64)).to(mu1.device)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise IncompatibleVDNAError(
            f"Gaussians differ in shape: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
            f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}"
        )
    # Symmetrise: covariances read from files may carry rounding asymmetry.
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    # S1 = L L^T makes L^T S2 L similar to S1 S2: one Cholesky instead of a second eigendecomposition.
    # A singular S1 (fewer samples than dimensions) has no Cholesky factor; its PSD square root serves.
    chol, info = torch.linalg.cholesky_ex(s1)
    if int(info) == 0:
        m = chol.T @ s2 @ chol
    else:
        r1 = _sqrt_psd(s1)
        m = r1 @ s2 @ r1
    eig = torch.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = eig.clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return diff.dot(diff) + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean


def _check_args(
    vdna1: VDNA, vdna2: VDNA, kinds: tuple[str, ...], metric: str, layer, neuron, neuron_wise: bool
) -> None:
    for i, v in enumerate((vdna1, vdna2), 1):
        if not isinstance(v, VDNA):
            raise TypeError(f"{metric}: argument {i} is a {type(v).__name__}, not a VDNA")
        if v.type not in kinds:
            raise IncompatibleVDNAError(f"{metric} needs {' or '.join(kinds)} VDNAs; VDNA {i} is {v.name}")
    if vdna1.type != vdna2.type and metric != "NFD":
        raise IncompatibleVDNAError(f"cannot compare a {vdna1.name} VDNA with a {vdna2.name} VDNA")
    if vdna1.type == vdna2.type:
        check_compatible(vdna1, vdna2)
    else:
        # NFD between a gaussian and a layer-gaussian: same network and neurons suffice.
        if (
            vdna1.feature_extractor_name != vdna2.feature_extractor_name
            or vdna1.neurons_list != vdna2.neurons_list
        ):
            raise IncompatibleVDNAError("cannot compare VDNAs of different extractors or neurons")
    if neuron is not None and layer is None:
        raise ValueError("use_neuron_index needs use_neurons_from_layer")
    if layer is not None and layer not in vdna1.neurons_list:
        raise ValueError(f"layer {layer!r} not in the VDNA; layers: {', '.join(vdna1.neurons_list)}")
    if neuron is not None:
        n = vdna1.neurons_list[layer]
        if not isinstance(neuron, int) or isinstance(neuron, bool) or not 0 <= neuron < n:
            raise ValueError(f"use_neuron_index={neuron!r} out of range: layer {layer!r} has {n} neurons")
    if neuron_wise and neuron is not None:
        raise ValueError("cannot return neuron-wise distances when use_neuron_index selects one neuron")


def _layers(vdna: VDNA, layer: str | None) -> list[str]:
    return [layer] if layer is not None else list(vdna.neurons_list)


def EMD(
    vdna1: VDNA,
    vdna2: VDNA,
    use_neurons_from_layer: str | None = None,
    use_neuron_index: int | None = None,
    return_neuron_wise: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Earth mover's distance between histogram VDNAs, in bins, averaged over the selected neurons.

    With ``return_neuron_wise`` returns ``{layer: [neurons]}`` for the selected layer (or all layers).
    """
    _check_args(
        vdna1, vdna2, ("histogram",), "EMD", use_neurons_from_layer, use_neuron_index, return_neuron_wise
    )
    if vdna1.hist_nb_bins != vdna2.hist_nb_bins:
        raise IncompatibleVDNAError(f"histograms have {vdna1.hist_nb_bins} vs {vdna2.hist_nb_bins} bins")
    if return_neuron_wise:
        return {
            layer: earth_movers_distance(vdna1.data[layer], vdna2.data[layer])
            for layer in _layers(vdna1, use_neurons_from_layer)
        }
    if use_neuron_index is not None:
        h1 = vdna1.get_neuron_dist(use_neurons_from_layer, use_neuron_index)
        h2 = vdna2.get_neuron_dist(use_neurons_from_layer, use_neuron_index)
    elif use_neurons_from_layer is not None:
        h1 = vdna1.get_all_neurons_in_layer_dist(use_neurons_from_layer)
        h2 = vdna2.get_all_neurons_in_layer_dist(use_neurons_from_layer)
    else:
        h1, h2 = vdna1.get_all_neurons_dists(), vdna2.get_all_neurons_dists()
    return torch.mean(earth_movers_distance(h1, h2))


def _neuron_gauss(vdna: VDNA, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = vdna.data[layer]
    if vdna.type == "layer-gaussian":
        return d["mu"].double(), torch.diagonal(d["sigma"]).double()
    return d["mu"].double(), d["var"].double()


def NFD(
    vdna1: VDNA,
    vdna2: VDNA,
    use_neurons_from_layer: str | None = None,
    use_neuron_index: int | None = None,
    return_neuron_wise: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Neuron-wise Frechet distance between per-neuron Gaussians, averaged over the selected neurons.

    Works on gaussian and layer-gaussian VDNAs (a layer-gaussian uses the diagonal of its covariance).
    """
    kinds = ("gaussian", "layer-gaussian")
    _check_args(vdna1, vdna2, kinds, "NFD", use_neurons_from_layer, use_neuron_index, return_neuron_wise)
    layers = _layers(vdna1, use_neurons_from_layer)
    per_layer = {}
    for layer in layers:
        m1, v1 = _neuron_gauss(vdna1, layer)
        m2, v2 = _neuron_gauss(vdna2, layer)
        per_layer[layer] = frechet_distance_1d(m1, v1, m2.to(m1.device), v2.to(m1.device))
    if return_neuron_wise:
        return per_layer
    if use_neuron_index is not None:
        return per_layer[use_neurons_from_layer][use_neuron_index]
    return torch.mean(torch.cat([per_layer[layer] for layer in layers]))


def FD(
    vdna1: VDNA,
    vdna2: VDNA,
    use_neurons_from_layer: str | None = None,
    use_neuron_index: int | None = None,
    return_neuron_wise: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Frechet distance between layer-gaussian VDNAs.

    One layer: that layer's FD (FID when the layer is Inception's pool3). No layer: the mean of the
    per-layer FDs. One neuron, or ``return_neuron_wise``: the 1-d FD of each neuron's marginal.
    """
    _check_args(
        vdna1, vdna2, ("layer-gaussian",), "FD", use_neurons_from_layer, use_neuron_index, return_neuron_wise
    )
    if return_neuron_wise or use_neuron_index is not None:
        out = {}
        for layer in _layers(vdna1, use_neurons_from_layer):
            m1, v1 = _neuron_gauss(vdna1, layer)
            m2, v2 = _neuron_gauss(vdna2, layer)
            out[layer] = frechet_distance_1d(m1, v1, m2.to(m1.device), v2.to(m1.device))
        if return_neuron_wise:
            return out
        return out[use_neurons_from_layer][use_neuron_index]
    fds = []
    for layer in _layers(vdna1, use_neurons_from_layer):
        d1, d2 = vdna1.data[layer], vdna2.data[layer]
        fds.append(frechet_distance(d1["mu"], d1["sigma"], d2["mu"], d2["sigma"]))
    return torch.mean(torch.stack(fds))
