"""VA regressors on cached features: a registry of scikit-learn estimators and the runner around it."""

from evoked import lazy_exports

# scikit-learn, torch and the store load when a name is first used, not with the package.
__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "evoked.regress.knn": ("FaissKNNRegressor",),
        "evoked.regress.mlp": ("TorchMLPRegressor",),
        "evoked.regress.registry": (
            "REGRESSORS",
            "build_pipeline",
            "list_regressors",
            "make_regressor",
            "register_regressor",
        ),
        "evoked.regress.svr": ("RBFSVRRegressor",),
        "evoked.regress.targets": ("Targets", "make_targets"),
        "evoked.regress.two_stage": ("TwoStageRegressor",),
        "evoked.regress.runner": ("run_regress",),
        "evoked.regress.predict": ("predict_images",),
        "evoked.regress.rundir": ("load_run_model",),
    },
)
