"""The model registry drives the pipelines and the MLflow hook; CT never reaches X-ray models."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from kedro.config import OmegaConfigLoader  # noqa: E402
from kedro.io import CatalogConfigResolver  # noqa: E402
from kedro.pipeline import node, pipeline  # noqa: E402

from covid_imaging import registry  # noqa: E402
from covid_imaging.hooks import TRACKED_NAMESPACE_ROOTS, model_namespace  # noqa: E402
from covid_imaging.pipelines.classification import pipeline as classification_pipeline  # noqa: E402
from covid_imaging.pipelines.classification.nodes import (  # noqa: E402
    ModalityGuarded,
    select_classification_images,
    train_classification_model,
)
from covid_imaging.pipelines.segmentation.pipeline import SEGMENTATION_MODELS  # noqa: E402
from covid_imaging.registry import (  # noqa: E402
    FAMILIES,
    ModalityError,
    RegistryError,
    check_modality,
    load_registry,
    modality_of_task,
    registry_from_parameters,
    with_modality,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REGISTRY = load_registry()

CT_STUDY = {  # issue 10: the nine CT models and their reference input sizes
    "basic_cnn": 32, "alexnet": 227, "vgg16": 224, "vgg19": 224, "mobilenet": 224,
    "resnet101": 224, "resnet152": 224, "densenet201": 224, "inceptionv3": 224,
}


# ------------------------------------------------------------------ what it holds


def test_registry_holds_the_three_families():
    assert set(REGISTRY.names("segmentation")) == {"unet", "fcn", "deeplabv3"}
    assert set(REGISTRY.names("cxr_classification")) == {
        "simple_cnn_pneumonia", "simple_cnn_scratch", "simple_cnn_transfer", "simple_cnn_unmasked",
        "lungless_audit", "simple_cnn_mixed", "lungless_audit_mixed", "simple_cnn_four_class", "resnet50", "hrnet",
    }
    ct = REGISTRY.models("ct_classification")
    assert {spec.name: spec.input_size for spec in ct} == CT_STUDY
    assert all(spec.classes == ("non_covid", "covid") and spec.image_variant == "whole" for spec in ct)
    assert {spec.name: spec.builder for spec in ct} == {name: name for name in CT_STUDY}


def test_every_registered_model_points_at_an_existing_builder():
    from covid_imaging.classification.models import CLASSIFIER_BUILDERS  # noqa: PLC0415
    from covid_imaging.segmentation.models import MODEL_BUILDERS  # noqa: PLC0415

    for spec in REGISTRY:
        builders = MODEL_BUILDERS if spec.purpose == "segmentation" else CLASSIFIER_BUILDERS
        assert spec.builder in builders, spec.namespace


def test_transfer_source_audit_pair_and_lung_model_come_from_the_parameters():
    transfer = REGISTRY.get("cxr_classification", "simple_cnn_transfer")
    assert transfer.transfer_from == "simple_cnn_pneumonia"
    (audited, audit), (mixed, mixed_audit) = REGISTRY.shortcut_audits("cxr_classification")
    assert (audited.name, audit.name, audit.image_variant) == ("simple_cnn_scratch", "lungless_audit", "lungless")
    assert (mixed.name, mixed_audit.name, mixed_audit.classes) == (
        "simple_cnn_mixed", "lungless_audit_mixed", ("normal", "pneumonia", "covid"),
    )
    assert REGISTRY.lung_segmentation_model == "unet"
    assert REGISTRY.get("cxr_classification", "simple_cnn_unmasked").image_variant == "whole"


def test_namespaces_modalities_and_lookup():
    spec = REGISTRY.get("ct_classification", "vgg19")
    assert (spec.namespace, spec.modality, spec.purpose) == ("ct_classification.vgg19", "ct", "classification")
    assert REGISTRY.by_namespace("classification.resnet50").family == "cxr_classification"
    assert REGISTRY.by_namespace("classification.nope") is None
    with pytest.raises(RegistryError, match="registered"):
        REGISTRY.get("cxr_classification", "vgg19")  # a CT model is not an X-ray model


# ------------------------------------------------------------ what derives from it


def test_classification_pipeline_namespaces_are_the_registry_cxr_classifiers():
    nodes = classification_pipeline.create_pipeline().nodes
    namespaces = {n.namespace for n in nodes if n.namespace}
    assert namespaces == {spec.namespace for spec in REGISTRY.models("cxr_classification")}
    assert set(classification_pipeline.CLASSIFICATION_MODELS) == set(REGISTRY.names("cxr_classification"))


def test_classification_pipeline_wires_transfer_audit_and_lung_model_from_the_registry():
    nodes = {n.name: n for n in classification_pipeline.create_pipeline().nodes}
    transfer = nodes["classification.simple_cnn_transfer.transfer_and_fine_tune"]
    assert "classification.simple_cnn_pneumonia.model" in transfer.inputs
    audit = nodes["audit_shortcuts"]
    assert audit.inputs[:2] == [
        "classification.simple_cnn_scratch.test_metrics", "classification.lungless_audit.test_metrics",
    ]
    assert "classification.simple_cnn_scratch.data" in audit.inputs  # the checked block, not the raw parameters
    assert nodes["audit_shortcuts_simple_cnn_mixed"].outputs == ["shortcut_audit_simple_cnn_mixed"]
    assert f"segmentation.{REGISTRY.lung_segmentation_model}.model" in nodes["mask_lungs"].inputs
    # model.compare_with: model_2 against model_1, ResNet50 and HRNet against the four-class CNN
    pairs = {(spec.name, baseline.name) for spec, baseline in REGISTRY.paired_comparisons("cxr_classification")}
    assert pairs == {("simple_cnn_transfer", "simple_cnn_scratch"), ("resnet50", "simple_cnn_four_class"),
                     ("hrnet", "simple_cnn_four_class")}
    paired = nodes["compare_paired_simple_cnn_transfer"]
    assert paired.inputs[:4] == [
        "classification.simple_cnn_transfer.predictions", "classification.simple_cnn_scratch.predictions",
        "classification.simple_cnn_transfer.seed_predictions", "classification.simple_cnn_scratch.seed_predictions",
    ]
    assert paired.outputs == ["paired_comparison_simple_cnn_transfer"]


def test_every_per_model_classification_node_is_guarded_by_its_modality():
    # Every node that reads images (the classification_inputs table); the learning-curve
    # plot and the seed summary read only the training's outputs.
    per_model = [n for n in classification_pipeline.create_pipeline().nodes
                 if n.namespace and "classification_inputs" in n.inputs]
    assert len(per_model) == 3 * len(REGISTRY.names("cxr_classification"))  # train, evaluate, Grad-CAM
    for n in per_model:
        assert isinstance(n.func, ModalityGuarded), n.name
        assert n.func.modality == REGISTRY.by_namespace(n.namespace).modality == "cxr"


def test_a_subset_of_models_can_be_selected_but_only_registered_ones():
    nodes = classification_pipeline.create_pipeline(models=["resnet50"]).nodes
    assert {n.namespace for n in nodes if n.namespace} == {"classification.resnet50"}
    assert "audit_shortcuts" not in {n.name for n in nodes}
    with pytest.raises(RegistryError, match="not registered"):
        classification_pipeline.create_pipeline(models=["vgg19"])
    with pytest.raises(RegistryError, match="not selected"):
        classification_pipeline.create_pipeline(models=["simple_cnn_transfer"])


def test_segmentation_model_list_is_the_registry_segmentation_family():
    assert tuple(SEGMENTATION_MODELS) == REGISTRY.names("segmentation")


def test_hook_tracks_every_family_namespace_root_and_the_cross_source_and_ct_fold_runs():
    assert set(TRACKED_NAMESPACE_ROOTS) == {family.namespace_root for family in FAMILIES.values()} | {
        "segmentation_cross_source", "ct_classification_cv"
    }
    template = pipeline([node(lambda x: x, "a", "b", name="train")])
    for spec in REGISTRY:
        namespaced = next(iter(pipeline(template, namespace=spec.namespace).nodes))
        assert model_namespace(namespaced) == spec.namespace


def test_catalog_patterns_cover_every_cxr_classifier_output():
    from covid_imaging.settings import CONFIG_LOADER_ARGS  # the project's resolvers

    loader = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "base"})
    catalog = loader["catalog"]
    resolver = CatalogConfigResolver(config=catalog)
    outputs = classification_pipeline.create_pipeline().all_outputs()
    for spec in REGISTRY.models("cxr_classification"):
        for name in (n for n in outputs if n.startswith(f"{spec.namespace}.")):
            assert name in catalog or resolver.match_dataset_pattern(name), name
    for spec, _ in REGISTRY.paired_comparisons("cxr_classification"):  # a report each, not kept in memory
        assert f"paired_comparison_{spec.name}" in outputs
        assert resolver.match_dataset_pattern(f"paired_comparison_{spec.name}")


# ------------------------------------------------------------------- validation


def _params(**blocks):
    base = {
        "lung_masking": {"segmentation_model": "unet"},
        "segmentation": {"unet": {"model": {"builder": "unet"}, "data": {"image_size": 64}}},
        "classification": {
            "a": {"model": {"builder": "simple_cnn"}, "data": {"image_size": 32, "classes": ["x", "y"]}},
        },
    }
    for key, value in blocks.items():
        base[key] = {**base.get(key, {}), **value}
    return base


def _block(builder="simple_cnn", classes=("x", "y"), **model):
    variant = model.pop("image_variant", None)
    data = {"image_size": 32, "classes": list(classes)} | ({"image_variant": variant} if variant else {})
    return {"model": {"builder": builder, **model}, "data": data}


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ({"classification": {"b": _block(strategy="transfer", transfer_from="zzz")}}, "not another model"),
        ({"classification": {"b": _block(strategy="transfer")}}, "go together"),
        ({"classification": {"b": _block(transfer_from="a")}}, "go together"),
        ({"classification": {"b": _block(audit_of="a")}}, "lungless"),
        ({"classification": {"b": _block(audit_of="a", image_variant="lungless", classes=("x", "z"))}}, "classes"),
        ({"classification": {"b": _block(compare_with="zzz")}}, "compare_with = 'zzz' is not another model"),
        ({"classification": {"b": _block(compare_with="a", classes=("x", "z"))}}, "is compared with a and must have"),
        ({"classification": {"b": _block(classes=("x",))}}, "distinct"),
        ({"classification": {"b": {"model": {"strategy": "scratch"}, "data": {"image_size": 32}}}}, "builder"),
        ({"classification": {"b": {"model": {"builder": "x"}, "data": {"classes": ["x", "y"]}}}}, "image_size"),
        ({"classification": {"b": _block(builder="${globals:x}")}}, "literal"),
        ({"ct_classification": {"b": _block(image_variant="lungs")}}, "image_variant"),
        ({"lung_masking": {"segmentation_model": "fcn"}}, "not a registered segmentation model"),
    ],
)
def test_invalid_declarations_fail_with_the_key(blocks, message):
    with pytest.raises(RegistryError, match=message):
        registry_from_parameters(_params(**blocks))


def test_blocks_without_a_model_section_are_not_models():
    reg = registry_from_parameters(_params(segmentation={"ensemble": {"data": {"image_size": 64}}}))
    assert reg.names("segmentation") == ("unet",)


def test_adding_a_model_is_one_parameters_block(tmp_path):
    folder = tmp_path / "parameters"
    folder.mkdir()
    params = _params(ct_classification={"tiny": _block(builder="basic_cnn", classes=("non_covid", "covid"))})
    (folder / "all.yml").write_text(yaml.safe_dump(params))
    reg = load_registry(folder)
    assert reg.get("ct_classification", "tiny").namespace == "ct_classification.tiny"
    (folder / "again.yml").write_text(yaml.safe_dump({"classification": {}}))
    with pytest.raises(RegistryError, match="two files"):
        registry.registry_from_parameters(registry._read_parameters(folder))


# --------------------------------------------------------------------- modality


def _manifest() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ["x_covid", "x_normal", "ct_covid", "seg_1", "cls_1"],
            "task": ["cxr", "cxr", "ct", "segmentation", "classification"],
            "label": ["covid", "normal", "covid", "normal", "covid"],
        }
    )


def test_every_known_task_has_a_modality_and_unknown_tasks_fail():
    assert {task: modality_of_task(task) for task in ("cxr", "segmentation", "classification", "ct")} == {
        "cxr": "cxr", "segmentation": "cxr", "classification": "cxr", "ct": "ct",
    }
    with pytest.raises(ModalityError, match="not declared"):
        modality_of_task("mri")
    assert list(with_modality(_manifest())["modality"]) == ["cxr", "cxr", "ct", "cxr", "cxr"]


def test_a_modality_column_that_contradicts_the_task_is_an_error():
    table = _manifest().assign(modality=["cxr", "cxr", "cxr", "cxr", "cxr"])
    with pytest.raises(ModalityError, match="contradicts"):
        with_modality(table)


def test_selecting_a_ct_task_for_the_xray_classifiers_fails():
    with pytest.raises(ModalityError, match="ct"):
        select_classification_images(_manifest(), {"tasks": ["cxr", "ct"]})


def test_xray_selection_keeps_xray_rows_only_and_labels_their_modality():
    selected = select_classification_images(_manifest(), {"tasks": ["cxr", "classification"]})
    assert list(selected["image_id"]) == ["x_covid", "x_normal", "cls_1"]
    assert set(selected["modality"]) == {"cxr"}
    assert "ct_covid" not in set(selected["image_id"])


def test_a_ct_slice_never_reaches_an_xray_model():
    calls = []

    def train(inputs, model_params, training, data):
        calls.append(len(inputs))
        return "model", {}

    guarded = ModalityGuarded(train, "cxr")
    mixed = with_modality(_manifest())  # CT covid next to X-ray covid
    with pytest.raises(ModalityError, match="ct"):
        guarded(mixed, {}, {}, {"classes": ["normal", "covid"]})
    with pytest.raises(ModalityError, match="ct"):
        guarded(inputs=_manifest(), model_params={}, training={}, data={})  # no modality column: from task
    assert calls == []
    xray_only = mixed[mixed["modality"] == "cxr"]
    assert guarded(xray_only, {}, {}, {}) == ("model", {}) and calls == [4]
    # ... and an X-ray image never reaches a CT model
    with pytest.raises(ModalityError, match="cxr"):
        ModalityGuarded(train, "ct")(mixed, {}, {}, {})


def test_guarded_node_functions_keep_name_signature_and_pickle():
    guarded = ModalityGuarded(train_classification_model, "cxr")
    assert guarded.__name__ == "train_classification_model"
    n = node(guarded, ["inputs_table", "params:model", "params:training", "params:data"], ["m", "h"], name="train")
    with pytest.raises(ModalityError):
        n.run({"inputs_table": _manifest(), "params:model": {}, "params:training": {}, "params:data": {}})
    clone = pickle.loads(pickle.dumps(guarded))
    assert clone.func is train_classification_model and clone.modality == "cxr"
    with pytest.raises(TypeError, match="no argument"):
        ModalityGuarded(train_classification_model, "cxr", argument="table")
    with pytest.raises(ModalityError, match="Unknown modality"):
        check_modality(_manifest(), "mri", "test")
