"""Tabular models for the demo: scikit-learn, XGBoost and LightGBM, each trained in well under a
second on a dataset scikit-learn ships (no download), deterministically (fixed seed, one thread)."""
from __future__ import annotations

SEED = 0


def iris_classifier():
    """Iris species from 4 measurements (cm): RandomForest, 3 classes."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    features, species = load_iris(return_X_y=True)
    return RandomForestClassifier(n_estimators=50, max_depth=5, random_state=SEED, n_jobs=1).fit(features, species)


def diabetes_xgboost():
    """Diabetes progression after one year from 10 standardized baseline variables: XGBoost regression."""
    from sklearn.datasets import load_diabetes
    from xgboost import XGBRegressor

    features, progression = load_diabetes(return_X_y=True)
    model = XGBRegressor(n_estimators=50, max_depth=3, learning_rate=0.1, tree_method="hist",
                         random_state=SEED, n_jobs=1)
    return model.fit(features, progression)


def wine_lightgbm():
    """Wine cultivar from 13 chemical measurements: LightGBM, 3 classes."""
    from lightgbm import LGBMClassifier
    from sklearn.datasets import load_wine

    features, cultivar = load_wine(return_X_y=True)
    model = LGBMClassifier(n_estimators=30, num_leaves=8, learning_rate=0.1, random_state=SEED, n_jobs=1,
                           deterministic=True, force_row_wise=True, verbose=-1)
    return model.fit(features, cultivar)
