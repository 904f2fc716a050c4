"""The cost chapter's verdict sentences flip when their numbers cross the paper's bounds and the LiteRT/Keras target."""
from dpact_tf.repro import studies

DEPLOYED = "parallel strips"


def _res(forward=0.3, memory=300.0, ratio=0.5, paper=True):
    lite = {"forward_s": forward, "memory_mb": memory, "forward_cpu_s": 0.7, "forward_iqr_s": [0.25, 0.35],
            "workers": 2, "threads_per_worker": 1}
    ratios = {"reference kernels, whole batch": {"forward_s": 1.5}, DEPLOYED: {"forward_s": ratio}}
    configs = [{"label": "small", "activation_shape": [64, 64, 8], "ratio_litert_over_keras": ratios,
                "variants": {DEPLOYED: lite}}]
    if paper:
        configs.append({"label": "paper", "activation_shape": [224, 224, 64], "ratio_litert_over_keras": ratios,
                        "variants": {DEPLOYED: lite}})
    return {"paper_nexus6p": {"forward_s": 0.6, "memory_mb": 500.0}, "batch": 8, "configs": configs}


def test_budget_and_target_flip_at_their_bounds():
    assert "**within**" in studies.mobile_summary(_res(), deployed=DEPLOYED)
    assert "**outside**" in studies.mobile_summary(_res(forward=0.6), deployed=DEPLOYED)  # strict: < 0.6 s
    assert "**outside**" in studies.mobile_summary(_res(memory=500.1), deployed=DEPLOYED)
    assert "**met**" in studies.mobile_summary(_res(ratio=1.0), deployed=DEPLOYED)  # the reference may be slower
    text = studies.mobile_summary(_res(ratio=1.01), deployed=DEPLOYED)
    assert "**not met** for small parallel strips (1.01), paper parallel strips (1.01)." in text
    assert "224×224 image it looks up 3,211,264" in text


def test_without_the_paper_size_head_the_bounds_are_not_checked():
    text = studies.mobile_summary(_res(paper=False), deployed=DEPLOYED)
    assert "not checked here" in text and "64×64 image" in text
