import numpy as np
import pandas as pd
import pytest

from sae1n.cli import main
from sae1n.datasets.bags import make_bags
from sae1n.errors import ConfigError
from sae1n.neurons.stability import best_matches, decoder_cosines, seed_stability


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    rng = np.random.default_rng(0)
    cls = np.repeat(["TUM", "STR", "LYM", "ADI"], 40)
    centres = rng.normal(size=(4, 32)) * 2.0
    x = centres[np.repeat(np.arange(4), 40)] + 0.5 * rng.normal(size=(160, 32))
    return make_bags(x, cls, tmp_path_factory.mktemp("stab") / "bags", positive_class="TUM",
                     bag_size=8, witness_rate=0.25, n_bags=30, seed=0)


def _overrides(b):
    return [f"data.feature_dir={b.feature_dir}", f"data.split_csv_path={b.split_csv}", "sae.dict_size_ratio=2", "sae.b_dec_init=zeros",
            "sae.top_k=3", "sae.top_k_aux=8", "sae.device=cpu", "training.num_epochs=30", "training.batch_size=32",
            "training.validation_freq=20", "training.tensorboard=false"]


def _run(b, out, seeds):
    return seed_stability("demo", seeds=seeds, overrides=_overrides(b), dataset_csv=b.dataset_csv,
                          patch_label_dir=b.patch_label_dir, output_dir=out, input_feature_dir=b.feature_dir,
                          baselines=("raw_dim", "random_sae"))


def test_stability_across_seeds_and_same_seed_identical(bags, tmp_path):
    res = _run(bags, tmp_path / "a", 2)
    root = tmp_path / "a" / "demo" / "stability"
    runs = pd.read_csv(root / "stability_runs.csv")
    assert sorted(runs["seed"].unique()) == res["seeds"] == [42, 43]
    neuron = runs[runs["method"] == "sae_neuron"]
    assert (neuron["patch_auroc"] > 0.9).all()  # every seed finds the class
    summ = pd.read_csv(root / "stability_summary.csv").set_index("method")
    assert summ.loc["sae_neuron", "patch_auroc_mean"] == pytest.approx(neuron["patch_auroc"].mean())
    assert summ.loc["sae_neuron", "patch_auroc_std"] == pytest.approx(neuron["patch_auroc"].std(ddof=1))
    assert set(summ.index) == {"sae_neuron", "raw_dim", "random_sae"}
    cos = pd.read_csv(root / "decoder_cosine.csv", index_col=0).to_numpy()
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-6)
    # the seeds' chosen neurons point far more alike than two neurons at random
    from sae1n.sae import load_sae

    w = [load_sae(root / "runs" / f"seed_{s}").W_dec.detach().numpy() for s in res["seeds"]]
    chance = np.mean([np.abs(decoder_cosines(np.vstack([a, b]))[: len(a), len(a):]).mean() for a, b in zip(w, w[1:])])
    assert res["pairwise_cosine_mean"] > max(0.5, 2 * chance)
    assert (root / "stability_strip.png").read_bytes()[:4] == b"\x89PNG"
    # the same seed gives the same SAE and the same choice
    from sae1n.neurons.ranking import analyze_sae
    from sae1n.sae import load_sae_config, save_sae_features, train_sae

    cfg = load_sae_config("demo", _overrides(bags) + ["seed=43", f"output_dir={tmp_path / 'b'}"])
    exp_dir = train_sae(cfg)
    np.testing.assert_array_equal(load_sae(exp_dir).W_dec.detach().numpy(), w[1])
    rank = analyze_sae("demo", bags.split_csv, save_sae_features(exp_dir).out_dir, bags.dataset_csv, tmp_path / "b")
    assert int(rank["unit_id"].iloc[0]) == res["chosen_units"]["43"]


def test_matching_helpers_and_errors(bags, tmp_path):
    d = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0]])
    cos = decoder_cosines(d)
    assert cos[0, 1] > 0.99 and abs(cos[0, 2]) < 1e-12
    m = best_matches([d[0], d[2]], [d, d[::-1]])
    assert m[0]["best_unit"] == 2 and m[1]["best_unit"] == 2  # d[::-1][2] == d[0]; d[2] in d
    assert m[0]["best_cosine"] == pytest.approx(1.0) and m[0]["mean_abs_cosine"] < 1.0
    with pytest.raises(ConfigError, match="2 distinct"):
        _run(bags, tmp_path, [1, 1])
    assert main(["stability", "demo", *_overrides(bags), "--seeds", "1", "--dataset_csv", str(bags.dataset_csv),
                 "--patch_label_dir", str(bags.patch_label_dir)]) == 1
