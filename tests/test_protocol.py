"""The protocol card: what each figure was measured with, and what two cards disagree on."""

from capo.eval import protocol as P


def test_geneval_card_names_detector_colour_model_and_exactness():
    m2f = P.geneval_part("mask2former", device="cpu")
    assert m2f["exact"] is False and m2f["status"].startswith("variant")
    c = m2f["color_classifier"]
    assert (c["arch"], c["weights"], c["activation"], c["precision"]) == ("ViT-L-14", "openai", "quick_gelu", "fp32")
    assert P.geneval_part("mask2former", device="cuda")["color_classifier"]["precision"] == "amp"
    assert P.geneval_part("mmdet", device="cpu")["exact"] is True
    shapes = P.geneval_part("shapes")
    assert shapes["exact"] is False and "not a GenEval number" in shapes["status"]
    assert m2f["thresholds"]["compared_in"] == "float32"


def test_differences_name_what_differs():
    a = {"seed": 0, "images_per_prompt": 4, "geneval": P.geneval_part("mmdet", device="cpu"),
         "prompt_sets": {"geneval": {"sha256": "x", "prompts": 553}}}
    b = {**a, "geneval": P.geneval_part("mask2former", device="cpu")}
    assert P.differences(a, dict(a)) == []
    d = P.differences(a, b)
    assert any(line.startswith("geneval.detector:") for line in d) and any("geneval.exact" in line for line in d)
    c = {**a, "images_per_prompt": 1, "prompt_sets": {"geneval": {"sha256": "y", "prompts": 10}}}
    assert sorted(line.split(":")[0] for line in P.differences(a, c)) == ["images_per_prompt", "prompt_sets.geneval"]


def test_eval_results_carry_the_card_and_compare_prints_it(tiny_chain, tmp_path):
    from capo.report.compare import compare_table
    from capo.stages import evaluate

    base = str(tiny_chain / "base")
    res = evaluate.run(evaluate.EvalConfig(models=[f"a={base}", f"b={base}"], out=str(tmp_path / "e"), limit=2, n=1,
                                           benchmarks=["winrate", "geneval"], rewards=["toy-bright"]))
    card = res["protocol"]
    assert card["images_per_prompt"] == 1 and card["seed"] == 0 and card["source"] == "models"
    ps = card["prompt_sets"]["shapes:geneval"]
    assert ps["prompts"] == 2 and ps["subset"] == {"limit": 2, "stratified": True, "subset_seed": 0}
    assert card["geneval"]["detector"]["name"] == "shapes"
    text = compare_table(res, "b")
    assert "Protocol:" in text and "shapes-world analogue" in text and "reward toy-bright" in text


def test_tables_print_cards_and_say_when_bases_differ(tmp_path):
    import json

    from capo.report.tables import protocol_markdown

    card = {"seed": 0, "images_per_prompt": 4, "prompt_sets": {}, "geneval": P.geneval_part("shapes")}
    for b, n in (("sdxl", 4), ("sd3", 2)):
        (tmp_path / b / "eval").mkdir(parents=True)
        (tmp_path / b / "eval" / "results.json").write_text(json.dumps({"protocol": {**card, "images_per_prompt": n}}))
    text = protocol_markdown(tmp_path, ["sdxl", "sd3"])
    assert "### base: sdxl, eval" in text and "Protocol:" in text
    assert "**The eval figures of sdxl and sd3 were measured differently:** images_per_prompt: 4 vs 2." in text
    (tmp_path / "sd3" / "eval" / "results.json").write_text(json.dumps({"protocol": card}))
    assert "measured differently" not in protocol_markdown(tmp_path, ["sdxl", "sd3"])
