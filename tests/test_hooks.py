"""The MLflow hook tracks model namespaces only, and logs what the pipeline tests expect."""

from kedro.pipeline import node, pipeline

from covid_imaging.hooks import _flatten, model_namespace


def _identity(x):
    return x


def test_model_namespace_of_nodes():
    template = pipeline([node(_identity, "a", "b", name="train")])
    assert model_namespace(next(iter(pipeline(template, namespace="segmentation.unet").nodes))) == "segmentation.unet"
    assert model_namespace(next(iter(pipeline(template, namespace="classification.hrnet").nodes))) == "classification.hrnet"
    assert model_namespace(next(iter(template.nodes))) is None
    assert model_namespace(next(iter(pipeline(template, namespace="ingestion").nodes))) is None


def test_nested_parameters_are_flattened_with_dots():
    flat: dict[str, str] = {}
    _flatten("", {"model": {"builder": "unet", "base_filters": 16}, "training": {"epochs": 2}}, flat)
    assert flat == {"model.builder": "unet", "model.base_filters": "16", "training.epochs": "2"}
