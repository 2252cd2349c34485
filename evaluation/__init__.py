"""Sample quality: statistics of samples against data, the networks whose features they use, and
evaluation results kept on disk with the settings that produced them.

The public face is :mod:`evaluation.statistics` (two-sample tests, FID, KID, IS, reference
statistics), re-exported here. The modules:

* ``statistics``: energy distance and MMD on raw samples; Frechet distance, KID and Inception
  Score on classifier features; reference statistics of a data set, computed and stored;
* ``inception``: the FID Inception network in Flax and pytorch-fid's weights;
* ``mnist_classifier``: the MNIST classifier whose feature space scores MNIST samples; its cache;
* ``scorers``: ``config.eval.sample_metrics`` -> how an evaluation scores samples, and where the
  reference statistics and weights it needs come from;
* ``eval_cache``: evaluation pieces on disk, each with the settings that produced it.
"""

from evaluation.statistics import (FID_REFERENCE_SAMPLES, STATISTICS_KEYS, energy_distance,
                                   feature_statistics, fid_sample_warning, frechet_distance,
                                   frechet_distance_of_features, inception_metrics,
                                   inception_score, kernel_inception_distance, load_statistics,
                                   mmd_rbf, reference_statistics, save_statistics,
                                   two_sample_statistics)

__all__ = ["FID_REFERENCE_SAMPLES", "STATISTICS_KEYS", "energy_distance", "feature_statistics",
           "fid_sample_warning", "frechet_distance", "frechet_distance_of_features",
           "inception_metrics", "inception_score", "kernel_inception_distance", "load_statistics",
           "mmd_rbf", "reference_statistics", "save_statistics", "two_sample_statistics"]
