"""`jaxnas metapruning decode` and MetaPruning's input checks through the CLI (one line, exit 2, before
any training)."""
import json
from pathlib import Path

import pytest

from jaxnas import cli
from jaxnas import spec as S

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = "14,12,11,11,8,8,8,7,7,7,7,8,8,8,14,14,14,8,6,5,2,15,7,17,14,5,11,12,12,11,6,16,14,13,14"


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_decode_writes_the_spec_and_reports_macs_flops_channels(capsys, tmp_path):
    out = tmp_path / "arch.json"
    code, stdout, _ = run_cli(capsys, "metapruning", "decode", "mobilenet_v2", "--genes", FIXTURE, "--out", str(out),
                              "--json")
    assert code == 0
    d = json.loads(stdout)
    assert d["macs"] == 104_870_557 and d["flops_original"] == 108_404_800
    assert d["channels"]["overall"][:3] == [22, 10, 14] and d["channels"]["mid"][-1] == 698
    assert d["genes"] == [14, 12, 11, 8, 7, 8, 14, 8, 6, 5, 2, 15, 7, 17, 14, 5, 11, 12, 12, 11, 6, 16, 14, 13, 14]
    spec = S.ArchSpec.load(out)
    assert S.macs(spec) == d["macs"]
    # `jaxnas info` reads it and counts the same MACs.
    code, stdout, _ = run_cli(capsys, "info", str(out), "--json")
    assert code == 0 and json.loads(stdout)["macs"] == d["macs"]
    # Human line without --json; the compact form and a small-input variant decode too.
    code, stdout, _ = run_cli(capsys, "metapruning", "decode", "mobilenet_v2", "--genes", "14 12 11 8 7 8 14 8 "
                              + " ".join(FIXTURE.split(",")[18:]), "--resolution", "28", "--num-classes", "10",
                              "--small-input", "--out", str(tmp_path / "small.json"))
    assert code == 0 and "M MACs" in stdout and "FLOPs (original counter)" in stdout
    small = S.ArchSpec.load(tmp_path / "small.json")
    assert small.input_size == (28, 28) and small.head.num_classes == 10 and small.blocks[0].layers[0].stride == 1


def test_decode_mobilenet_v1_and_resnet50(capsys, tmp_path):
    code, stdout, _ = run_cli(capsys, "metapruning", "decode", "mobilenet_v1", "--genes", ",".join(["30"] * 13),
                              "--out", str(tmp_path / "v1.json"), "--json")
    assert code == 0 and json.loads(stdout)["macs"] == 568_740_352
    code, stdout, _ = run_cli(capsys, "metapruning", "decode", "resnet50", "--genes", ",".join(["30"] * 20),
                              "--out", str(tmp_path / "r50.json"), "--json")
    assert code == 0 and json.loads(stdout)["params"] == 25_557_032


@pytest.mark.parametrize("genes,needle", [
    (",".join(["14"] * 30), "takes 25 (compact) or 35"),
    (",".join(["31"] * 25), "scale ids are 0..30"),
    ("14,12,abc", "not a number"),
])
def test_bad_gene_vectors_exit_2_with_one_line(capsys, tmp_path, genes, needle):
    code, _, err = run_cli(capsys, "metapruning", "decode", "mobilenet_v2", "--genes", genes,
                           "--out", str(tmp_path / "a.json"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and needle in err
    assert not (tmp_path / "a.json").exists()


def test_decode_bad_sizes_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "metapruning", "decode", "resnet50", "--genes", ",".join(["20"] * 20),
                           "--resolution", "0", "--out", str(tmp_path / "a.json"))
    assert code == 2 and err.count("\n") == 1 and "--resolution must be >= 1" in err
    code, _, err = run_cli(capsys, "metapruning", "decode", "resnet50", "--genes", ",".join(["20"] * 20),
                           "--small-input", "--out", str(tmp_path / "a.json"))
    assert code == 2 and err.count("\n") == 1 and "no small-input variant" in err


def test_methods_lists_metapruning(capsys):
    code, stdout, _ = run_cli(capsys, "methods", "--json")
    assert code == 0 and "metapruning" in stdout


def _search(capsys, tmp_path, *sets):
    return run_cli(capsys, "search", str(ROOT / "configs/metapruning/quick.yaml"), "--workdir", str(tmp_path / "w"),
                   *[x for s in sets for x in ("--set", s)])


@pytest.mark.parametrize("sets,needle", [
    (("search.target_latency_ms=null", "search.target_macs=1e5"), "below the narrowest network"),
    (("search.target_latency_ms=null", "search.target_macs=1e12"), "above the widest network"),
    (("search.target_latency_ms=null", "search.target_macs=20e6", "search.args.min_macs=30e6"), "window"),
    (("search.target_latency_ms=null", "search.target_macs=20e6", "search.args.space=vgg19"), "search.args.space"),
    (("search.target_latency_ms=null", "search.target_macs=20e6", "model.name=resnet18"), "no search space"),
    (("search.target_latency_ms=null", "search.target_macs=20e6", "data.holdout=0"), "held-out split"),
    (("search.target_latency_ms=null",), "needs a target"),
    (("search.args.populaton=5",), "did you mean 'search.args.population'"),
    (("search.args.seed=-1",), "search.args.seed: must be >= 0"),
    (("search.target_latency_ms=null", "search.target_macs=1e9", "search.args.space=resnet50"),
     "set model.small_input=false"),   # quick.yaml sets it; a config that leaves it at its default is searched
    (("train.seed=-1",), "train.seed"),
    (("search.args.top_k=30", "search.args.select_num=20"), "top_k (30) must not exceed select_num (20)"),
])
def test_bad_search_inputs_are_refused_before_any_training(capsys, tmp_path, sets, needle):
    code, _, err = _search(capsys, tmp_path, *sets)
    assert code == 2 and needle in err and err.startswith("error: ")
    assert not (tmp_path / "w" / "pruningnet").exists()


def test_full_size_configs_validate_and_their_budgets_are_reachable():
    from jaxnas.config import load_config
    from jaxnas.methods.metapruning.constraint import CostFunction, check_reachable
    from jaxnas.methods.metapruning.pipeline import make_budget, space_for
    from jaxnas.schema import validate
    from jaxnas.methods.metapruning.args import MetaPruningArgs

    class ImageNetShape:
        image_shape, num_classes = (224, 224, 3), 1000

    for path in sorted((ROOT / "configs/metapruning").glob("*.yaml")):
        cfg = load_config(path)
        args = validate(cfg.search.args, MetaPruningArgs, "search.args")
        if cfg.data.source == "embedded":
            continue
        space = space_for(cfg, ImageNetShape, args)
        budget = make_budget(cfg, args)
        lo, hi = check_reachable(space, budget, CostFunction(space, budget.kind))
        assert lo < budget.max < hi, path.name


@pytest.mark.parametrize("sets,needle", [
    (("search.target_macs=15e6", "search.args.min_latency_ms=0.3"),
     "search.args.min_latency_ms bounds a search.target_latency_ms window"),
    (("search.target_macs=15e6", "search.args.min_macs=20e6"),
     "search.args.min_macs (2e+07) is above search.target_macs (1.5e+07)"),
    (("search.target_macs=15e6", "search.args.min_macs=14.9999e6"),   # 100 MACs wide: no network of the space
     "M MACs] (search.args.min_macs, search.target_macs) in 100000 random draws of ids in [0, 31); widen the "
     "window (lower search.args.min_macs)"),
    (("search.target_macs=5e6", "search.args.random_range=[20,31]"),
     "no network of the space falls in the budget 5.000 M MACs (search.target_macs) in 100000 random draws of ids "
     "in [20, 31); raise search.target_macs or widen search.args.random_range"),
    (("search.target_macs=15e6", "search.args.calib_batch_size=20000"), "search.args.calib_batch_size"),
])
def test_a_macs_budget_refuses_what_the_search_would_fail_on_after_training(capsys, tmp_path, sets, needle):
    code, _, err = _search(capsys, tmp_path, "search.target_latency_ms=null", *sets)
    assert code == 2 and needle in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "w" / "pruningnet").exists()


def test_pruningnet_from_is_checked_before_the_latency_grid(capsys, tmp_path):
    (tmp_path / "empty" / "pruningnet").mkdir(parents=True)
    for source, needle in (("missing", "does not exist"), ("empty", "holds no PruningNet checkpoint")):
        code, _, err = _search(capsys, tmp_path, f"search.args.pruningnet_from={tmp_path / source}",
                               f"latency.table={tmp_path / 'grid.json'}")
        assert code == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "grid.json").exists()   # the grid was not measured first


def test_a_resnet50_config_that_leaves_small_input_at_its_default_is_searched(tmp_path):
    """model.small_input defaults to true (the zoo's small-input stem): only a resnet50 config that sets it is
    refused (tests above), one that leaves it out gets the 224-px space."""
    from types import SimpleNamespace

    from jaxnas.config import load_config
    from jaxnas.methods.metapruning.args import MetaPruningArgs
    from jaxnas.methods.metapruning.pipeline import space_for
    from jaxnas.schema import validate

    text = (ROOT / "configs/metapruning/r50_1.0g.yaml").read_text()
    assert "  small_input: false\n" in text
    (tmp_path / "r50.yaml").write_text(text.replace("  small_input: false\n", ""))
    cfg = load_config(str(tmp_path / "r50.yaml"))
    data = SimpleNamespace(image_shape=(224, 224, 3), num_classes=1000)
    space = space_for(cfg, data, validate(cfg.search.args, MetaPruningArgs, "search.args"))
    assert space.family == "resnet50" and not space.small_input
